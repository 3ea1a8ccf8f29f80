"""What a model folder stands for: itself (config.json) or its one .gguf file."""

from __future__ import annotations

from pathlib import Path

from macllm.errors import MacllmError


def model_in_folder(folder: Path) -> Path:
    """An HF-style folder (config.json) is the model; a folder with one .gguf stands for that file."""
    if (folder / "config.json").is_file():
        return folder
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        raise MacllmError(f"{folder} holds {len(ggufs)} .gguf files; pass the one you want")
    raise MacllmError(f"{folder} is not a model folder (it has no config.json and no .gguf file)")
