"""Folders written atomically: readers see the old folder or the finished new one, never half."""

import pytest

from macllm.errors import MacllmError
from macllm.storage.atomic import atomic_folder


def test_new_folder_appears_whole(tmp_path):
    out = tmp_path / "thing"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("new")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "thing"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(MacllmError, match="already exists"):
        with atomic_folder(out):
            pass
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


def test_failure_while_writing_keeps_the_old_folder(tmp_path):
    out = tmp_path / "thing"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("disk full")
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


def test_os_errors_become_one_line(tmp_path):
    out = tmp_path / "thing"
    with pytest.raises(MacllmError, match="could not write"):
        with atomic_folder(out):
            raise OSError(28, "No space left on device")
    assert not out.exists()
