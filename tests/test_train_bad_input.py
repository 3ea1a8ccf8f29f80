"""Bad input to `macllm train`: one line, exit 2, nothing lost."""

from __future__ import annotations

import errno

import pytest

from macllm.lora import formats
from macllm.tuner import checkpoint
from tests.read_only_folder import read_only
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


# --- issue #13: hostile input (items 5 and 9) -------------------------------------------------------------

def refused_before_training(code, events, err, *words):
    """One line, exit 2, and the run never started: no model step was spent on a run that could not end well."""
    line = one_line_error(code, events, err, *words)
    assert not any(e["event"] == "start" for e in events), events
    return line


def test_out_dir_under_a_file_is_refused_before_the_first_step(tiny_llama_folder, tmp_path, capsys):
    notes = write_notes(tmp_path / "notes")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    refused_before_training(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "x",
                                   "--out-dir", blocker / "adapters", "--iters", 2, "--batch", 2),
                            str(blocker), "not a folder")
    assert blocker.read_text() == "keep me"


def test_read_only_adapter_store_is_refused_before_the_first_step(tiny_llama_folder, tmp_path, home, capsys,
                                                                  monkeypatch):
    notes = write_notes(tmp_path / "notes")
    (home / "adapters").mkdir(parents=True)
    read_only(monkeypatch, home / "adapters")
    # No checkpoint on the way: today the whole run is spent and the final write fails (exit 1).
    refused_before_training(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "x",
                                   "--iters", 2, "--batch", 2, "--save-every", 1000, "--val-fraction", 0),
                            str(home / "adapters"), "not writable")
    assert list((home / "adapters").iterdir()) == []


def test_read_only_work_folder_of_a_resumed_run_is_refused_before_the_first_step(tiny_llama_folder, tmp_path,
                                                                                  home, capsys, monkeypatch):
    import mlx.core as mx

    notes = write_notes(tmp_path / "notes")
    args = ("--model", tiny_llama_folder, "--notes", notes, "--name", "r", "--iters", 6, "--batch", 2,
            "--save-every", 2, "--val-fraction", 0)
    real_save = mx.save_safetensors

    def stop_at_the_second_checkpoint(path, *a, **kw):
        if "ckpt-000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *a, **kw)

    monkeypatch.setattr(mx, "save_safetensors", stop_at_the_second_checkpoint)
    assert train(capsys, *args)[0] == 2  # an unfinished run with a good checkpoint at step 2
    monkeypatch.setattr(mx, "save_safetensors", real_save)
    work = checkpoint.work_dir(home / "adapters" / "r")
    assert checkpoint.latest(work).name == "ckpt-000002"
    read_only(monkeypatch, work)
    refused_before_training(*train(capsys, *args, "--resume"), str(work), "not writable")


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root ignores file modes")
def test_chmod_read_only_out_dir_is_refused(tiny_llama_folder, tmp_path, capsys):
    notes = write_notes(tmp_path / "notes")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        refused_before_training(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "x",
                                       "--out-dir", locked, "--iters", 2, "--batch", 2), "not writable")
    finally:
        locked.chmod(0o755)


def test_more_layers_than_the_model_has_is_refused_with_the_count(tiny_llama_folder, tmp_path, capsys):
    from macllm.loader import load_model

    layers = load_model(str(tiny_llama_folder), progress=False).config.num_hidden_layers
    notes = write_notes(tmp_path / "notes")
    args = ("--model", tiny_llama_folder, "--notes", notes, "--name", "x", "--iters", 2, "--batch", 2)
    refused_before_training(*train(capsys, *args, "--layers", 999), "--layers 999", f"{layers} layers", "all")
    code, events, err = train(capsys, *args, "--layers", layers)
    assert code == 0, err


def test_name_of_a_bundled_example_is_refused_unless_force(tiny_llama_folder, tmp_path, home, capsys):
    from macllm.lora.store import BUNDLED

    assert (BUNDLED / "pirate").is_dir()
    notes = write_notes(tmp_path / "notes")
    args = ("--model", tiny_llama_folder, "--notes", notes, "--name", "pirate", "--iters", 2, "--batch", 2)
    refused_before_training(*train(capsys, *args), "bundled", "--force")
    assert not (home / "adapters" / "pirate").exists()
    code, events, err = train(capsys, *args, "--force")
    assert code == 0, err
    assert (home / "adapters" / "pirate" / "adapters.safetensors").exists()
    # Elsewhere than the store the name hides nothing.
    code, events, err = train(capsys, *args, "--out-dir", tmp_path / "elsewhere")
    assert code == 0, err


MLX_WRITE_ERROR = RuntimeError("[write] Unable to write 395996 bytes to file.")  # what MLX raises on a full disk


def test_mlx_write_error_during_checkpoint_keeps_the_previous_one(tiny_llama_folder, tmp_path, home, capsys,
                                                                  monkeypatch):
    import mlx.core as mx

    notes = write_notes(tmp_path / "notes")
    real_save = mx.save_safetensors

    def filling_disk(path, *args, **kwargs):
        if "ckpt-000004" in str(path):
            raise MLX_WRITE_ERROR
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", filling_disk)
    one_line_error(*train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "full", "--iters", 6,
                          "--batch", 2, "--save-every", 2, "--val-fraction", 0), "previous checkpoint is kept")
    work = checkpoint.work_dir(home / "adapters" / "full")
    assert checkpoint.latest(work).name == "ckpt-000002"
    assert not list(work.glob(".partial-*"))


def test_failed_final_write_keeps_the_checkpoints_and_says_resume(tiny_llama_folder, tmp_path, home, capsys,
                                                                   monkeypatch):
    import mlx.core as mx

    notes = write_notes(tmp_path / "notes")
    args = ("--model", tiny_llama_folder, "--notes", notes, "--name", "last", "--iters", 4, "--batch", 2,
            "--save-every", 2, "--val-fraction", 0)
    real_save = mx.save_safetensors

    def full_at_the_end(path, *a, **kw):
        if ".training" not in str(path):
            raise MLX_WRITE_ERROR
        return real_save(path, *a, **kw)

    monkeypatch.setattr(mx, "save_safetensors", full_at_the_end)
    line = one_line_error(*train(capsys, *args), "--resume")
    work = checkpoint.work_dir(home / "adapters" / "last")
    assert str(work) in line
    assert checkpoint.latest(work) is not None
    assert not (home / "adapters" / "last").exists()
    assert not [p for p in (home / "adapters").iterdir() if "partial" in p.name]
    monkeypatch.setattr(mx, "save_safetensors", real_save)
    code, events, err = train(capsys, *args, "--resume")
    assert code == 0, err
    formats.read_adapter(home / "adapters" / "last")
