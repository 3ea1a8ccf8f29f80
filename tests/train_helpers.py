"""Shared bits of the training tests: small notes folders and running `macllm train` in-process."""

from __future__ import annotations

import json
from pathlib import Path

from macllm.cli import main


def write_notes(folder: Path, count: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"note{i}.md").write_text(
            f"# Note {i}\n\nhello world {i} from the user.\n\n## Details\n\nthe assistant says hello {i}.\n\n"
            f"```\ncode line {i}\n```\n", encoding="utf-8")
    return folder


def write_repeated(folder: Path, text: str = "hello world hello world user assistant", copies: int = 8) -> Path:
    """An mlx-lm text data folder with one example repeated."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for _ in range(copies)))
    return folder


def train(capsys, *args) -> tuple[int, list[dict], str]:
    """(exit code, JSON events, stderr)."""
    code = main(["train", "--json", *map(str, args)])
    out = capsys.readouterr()
    events = [json.loads(line) for line in out.out.splitlines() if line.strip()]
    return code, events, out.err
