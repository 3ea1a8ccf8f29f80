"""An adapter whose notes changed is offered a retrain (`macllm adapters list` prints the command), and
`macllm train --retrain NAME` trains it again on the folder as it is now, from its own weights, replacing it:
its record then holds the new notes' hashes and nothing counts as changed."""

from __future__ import annotations

import json

import pytest

from macllm.cli import main
from macllm.tuner.data import note_hash
from tests.train_helpers import train, write_notes


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def rows(capsys) -> dict:
    assert main(["adapters", "list", "--json"]) == 0
    return {r["name"]: r for r in json.loads(capsys.readouterr().out)}


def table(capsys) -> str:
    assert main(["adapters", "list"]) == 0
    return capsys.readouterr().out


def test_retrain_starts_from_the_adapter_and_records_the_new_notes(tiny_llama_folder, tmp_path, capsys):
    notes = write_notes(tmp_path / "notes", count=10)
    code, first, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "mine",
                             "--iters", 3, "--batch", 2, "--lr", 1e-2, "--seed", 3)
    assert code == 0, err
    before = rows(capsys)["mine"]
    assert "retrain_command" not in before and "--retrain" not in table(capsys)

    held_out = set(first[0]["data"]["valid_file_names"])
    edited = next(f"note{i}.md" for i in range(10) if f"note{i}.md" not in held_out)  # validation unchanged
    (notes / edited).write_text("# Edited\n\nthe user rewrote this note after training.\n")
    listed = table(capsys)
    assert "1 note changed since training" in listed
    assert "macllm train --retrain mine" in listed
    assert rows(capsys)["mine"]["retrain_command"] == "macllm train --retrain mine"

    code, events, err = train(capsys, "--retrain", "mine")
    assert code == 0, err
    start = events[0]
    assert start["warm_start"].endswith("/mine") and start["model"] == str(tiny_llama_folder)
    assert start["config"] == first[0]["config"]  # the recorded options, seed and lr included
    # The run starts where the adapter ended: its first validation loss is the adapter's own (same held-out
    # notes), not the base model's.
    first_val = next(e for e in events if e["event"] == "eval" and e["iteration"] == 0)["val_loss"]
    assert first_val == pytest.approx(before["training"]["val_loss"], abs=1e-3)
    base_val = next(e for e in first if e["event"] == "eval" and e["iteration"] == 0)["val_loss"]
    assert abs(first_val - base_val) > 1e-3
    assert events[-1]["event"] == "done"

    after = rows(capsys)["mine"]
    hashes = after["training"]["data"]["file_hashes"]
    assert hashes[edited] == note_hash((notes / edited).read_text())
    assert len(hashes) == 10 and hashes != before["training"]["data"]["file_hashes"]
    assert after["notes_changed"] == 0 and "retrain_command" not in after
    assert after["training"]["retrained_from"].endswith("/mine")
    assert "changed since training" not in table(capsys)


def test_retrain_refuses_what_it_cannot_retrain(tiny_llama_folder, tmp_path, capsys):
    def refused(*args) -> str:
        code, events, err = train(capsys, *args)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert events[-1]["event"] == "error"
        return err

    assert "no adapter of that name" in refused("--retrain", "nope")
    assert "--notes DIR and --name NAME" in refused("--model", tiny_llama_folder)
    notes = write_notes(tmp_path / "notes", count=6)
    code, _, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "mine",
                         "--iters", 1, "--batch", 2, "--val-fraction", 0)
    assert code == 0, err
    assert "leave out --notes" in refused("--retrain", "mine", "--notes", notes)
    for path in notes.iterdir():
        path.unlink()
    notes.rmdir()
    assert "is gone" in refused("--retrain", "mine")


def test_an_interrupted_retrain_resumes_and_replaces_the_adapter(tiny_llama_folder, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from macllm.tuner import progress

    notes = write_notes(tmp_path / "notes", count=8)
    code, _, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "mine", "--iters", 4,
                         "--batch", 2, "--val-fraction", 0)
    assert code == 0, err
    old = rows(capsys)["mine"]["created"]
    (notes / "note5.md").write_text("# Five\n\nchanged.\n")

    class StopAtStepTwo(progress.JsonEvents):
        def __call__(self, event):
            super().__call__(event)
            if event["event"] == "step" and event["iteration"] == 2:
                os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler: checkpoint, then exit 130

    with monkeypatch.context() as patch:
        patch.setattr(progress, "JsonEvents", StopAtStepTwo)
        code, events, err = train(capsys, "--retrain", "mine")
    assert code == 130 and events[-1]["event"] == "stopped", err
    assert rows(capsys)["mine"]["notes_changed"] == 1  # the adapter is untouched until a retrain finishes
    code, events, err = train(capsys, "--retrain", "mine")
    assert code == 2 and "--resume" in err  # not silently restarted over the checkpoint
    code, events, err = train(capsys, "--retrain", "mine", "--resume")
    assert code == 0, err
    assert events[0]["resumed_from"] == 2 and events[0]["warm_start"] is None
    after = rows(capsys)["mine"]
    assert after["notes_changed"] == 0 and after["created"] >= old and after["training"]["steps"] == 4
