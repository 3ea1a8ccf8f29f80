"""Bad input to `macllm train`: one line, exit 2, nothing lost."""

from __future__ import annotations

import errno

import pytest

from macllm.lora import formats
from macllm.tuner import checkpoint
from tests.train_helpers import train, write_notes


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def one_line_error(code, events, err, *words):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("macllm: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    assert events and events[-1]["event"] == "error"
    return lines[0]


def test_empty_folder(tiny_llama_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", tmp_path / "empty", "--name", "x"),
                   "no notes")


def test_folder_without_text(tiny_llama_folder, tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\x00\x00\x01")
    (folder / "b.md").write_bytes(b"\x00\x01\x02binary")
    one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", folder, "--name", "x"),
                   "no notes", "2 binary")


def test_missing_folder(tiny_llama_folder, tmp_path, capsys):
    one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", tmp_path / "nope", "--name", "x"),
                   "does not exist")


def test_notes_shorter_than_one_batch(tiny_llama_folder, tmp_path, capsys):
    notes = write_notes(tmp_path / "notes", count=1)
    one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "x", "--batch", 16),
                   "fewer than one batch", "--batch")


def test_model_not_found(tmp_path, capsys):
    notes = write_notes(tmp_path / "notes")
    one_line_error(*train(capsys, "--model", tmp_path / "no-such-model.gguf", "--notes", notes, "--name", "x"))


def test_existing_name_is_refused_unless_force(tiny_llama_folder, tmp_path, home, capsys):
    notes = write_notes(tmp_path / "notes")
    args = ("--model", tiny_llama_folder, "--notes", notes, "--name", "keep", "--iters", 2, "--batch", 2)
    assert train(capsys, *args)[0] == 0
    before = (home / "adapters" / "keep" / "adapters.safetensors").read_bytes()
    one_line_error(*train(capsys, *args), "exists", "--force")
    assert (home / "adapters" / "keep" / "adapters.safetensors").read_bytes() == before
    # A forced run that fails leaves the good adapter in place.
    one_line_error(*train(capsys, *args, "--force", "--batch", 64), "batch")
    assert (home / "adapters" / "keep" / "adapters.safetensors").read_bytes() == before
    assert train(capsys, *args, "--force", "--seed", 1)[0] == 0
    assert (home / "adapters" / "keep" / "adapters.safetensors").read_bytes() != before


def test_bad_options_name_the_flag(tiny_llama_folder, tmp_path, capsys):
    notes = write_notes(tmp_path / "notes")
    for flag, value, word in (("--rank", 0, "--rank"), ("--targets", "q,zz", "zz"), ("--layers", "x", "--layers"),
                              ("--lr", -1, "--lr"), ("--name", "../up", "--name")):
        one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "ok", flag, value),
                       word)


def test_full_disk_during_checkpoint_keeps_the_previous_one(tiny_llama_folder, tmp_path, home, capsys,
                                                           monkeypatch):
    import mlx.core as mx

    notes = write_notes(tmp_path / "notes")
    real_save = mx.save_safetensors
    calls = {"n": 0}

    def filling_disk(path, *args, **kwargs):
        if "optimizer" in str(path):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", filling_disk)
    code, events, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "full",
                              "--iters", 10, "--batch", 2, "--save-every", 2, "--val-fraction", 0)
    line = one_line_error(code, events, err, "No space left", "previous checkpoint is kept")
    assert "\n" not in line
    work = checkpoint.work_dir(home / "adapters" / "full")
    latest = checkpoint.latest(work)
    assert latest.name == "ckpt-000002"
    formats.read_adapter(latest)
    assert not list(work.glob(".partial-*"))
    assert not (home / "adapters" / "full").exists()
    # ... and training continues from it.
    monkeypatch.setattr(mx, "save_safetensors", real_save)
    code, events, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "full",
                              "--iters", 10, "--batch", 2, "--save-every", 2, "--val-fraction", 0, "--resume")
    assert code == 0, err
    assert events[0]["resumed_from"] == 2


def test_unfinished_run_needs_resume_or_force(tiny_llama_folder, tmp_path, home, capsys):
    notes = write_notes(tmp_path / "notes")
    work = checkpoint.work_dir(home / "adapters" / "half")
    (work / "ckpt-000002").mkdir(parents=True)
    (work / "ckpt-000002" / "state.json").write_text("{}")
    one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "half"),
                   "--resume", "--force")
    one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "other", "--resume"),
                   "nothing to resume")
