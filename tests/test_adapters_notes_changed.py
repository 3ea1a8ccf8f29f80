"""An adapter trained on a notes folder remembers its notes (hashes); the listings say how many changed since."""

from __future__ import annotations

import json

import pytest

from macllm.cli import main
from tests.train_helpers import train, write_notes


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def listing(capsys) -> tuple[str, dict]:
    assert main(["adapters", "list"]) == 0
    table = capsys.readouterr().out
    assert main(["adapters", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    return table, rows


def test_adapters_list_counts_notes_changed_since_training(tiny_llama_folder, tmp_path, capsys):
    from tui.screens.adapters import training_line

    notes = write_notes(tmp_path / "notes", count=6)
    code, events, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "mine",
                              "--iters", 2, "--batch", 2, "--val-fraction", 0)
    assert code == 0, err
    assert "file_hashes" not in events[0]["data"]  # the start event stays small; the adapter keeps them
    table, rows = listing(capsys)
    assert rows["mine"]["notes_changed"] == 0 and "changed since training" not in table
    assert len(rows["mine"]["training"]["data"]["file_hashes"]) == 6

    (notes / "note0.md").write_text("# Note 0\n\nrewritten.\n")  # edited
    (notes / "note1.md").unlink()  # deleted
    (notes / "new.md").write_text("# New\n\nwritten after training.\n")  # added
    (notes / "note2.md").touch()  # touched, same text: not a change
    table, rows = listing(capsys)
    assert rows["mine"]["notes_changed"] == 3
    assert "; 3 notes changed since training" in table
    assert "3 notes changed since training" in training_line(rows["mine"])

    for path in notes.iterdir():
        path.unlink()
    notes.rmdir()
    table, rows = listing(capsys)
    assert rows["mine"]["notes_changed"] is None and "changed since training" not in table
