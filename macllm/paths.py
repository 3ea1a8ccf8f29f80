"""Where macllm keeps its files: one home folder, overridable with $MACLLM_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def macllm_home() -> Path:
    override = os.environ.get("MACLLM_HOME")
    home = Path(override).expanduser() if override else Path(platformdirs.user_data_dir("macllm"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    return _subdir("models")


def adapters_dir() -> Path:
    return _subdir("adapters")


def _subdir(name: str) -> Path:
    path = macllm_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
