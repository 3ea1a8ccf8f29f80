"""Training checkpoints: a folder per checkpoint inside the run's work folder, written atomically.

    <store>/.<name>.training/
        run.json              what is being trained (for --resume to check) and the latest checkpoint
        ckpt-000120/          an mlx-lm adapter folder (loadable as is) plus
            optimizer.safetensors   AdamW moments and step
            best.safetensors        the LoRA weights at the best validation loss so far
            state.json              step, losses so far, best validation, random state
A new checkpoint is written into a hidden temporary folder and renamed into place; only then does
run.json point at it (replaced atomically) and older ones go. A failed write (a full disk) leaves the
previous checkpoint and run.json untouched.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from macllm.errors import MacllmError
from macllm.formats.arrays import load_arrays, save_arrays
from macllm.lora import formats
from macllm.lora.adapter import Adapter
from macllm.storage.atomic import atomic_write

RUN_FILE = "run.json"
KEEP = 2


def work_dir(final: Path) -> Path:
    """Hidden, so the adapter listing skips it."""
    return final.parent / f".{final.name}.training"


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2))


def read_run(work: Path) -> dict | None:
    try:
        return json.loads((work / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save(work: Path, step: int, adapter: Adapter, num_model_layers: int, optimizer_state: dict,
         state: dict, run: dict, best: dict[str, mx.array] | None = None) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    final = work / f"ckpt-{step:06d}"
    tmp = work / f".partial-ckpt-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        formats.write_adapter(adapter, tmp, num_model_layers)
        flat = dict(tree_flatten(optimizer_state))
        save_arrays(tmp / "optimizer.safetensors", flat)
        if best:
            save_arrays(tmp / "best.safetensors", best)
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_json_atomic(work / RUN_FILE, {**run, "latest": final.name, "step": step})
    except (OSError, MacllmError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(e, "strerror", None) or str(e)
        raise MacllmError(f"could not write a checkpoint in {work} ({reason}); the previous checkpoint "
                          f"is kept") from None
    for old in sorted(work.glob("ckpt-*"))[:-KEEP]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(work: Path) -> Path | None:
    run = read_run(work)
    if run and (work / run.get("latest", "")).is_dir() and run.get("latest"):
        return work / run["latest"]
    done = sorted(p for p in work.glob("ckpt-*") if (p / "state.json").exists())
    return done[-1] if done else None


def load(folder: Path) -> tuple[Adapter, dict, dict, dict | None]:
    """(adapter, optimizer state tree, trainer state, best weights or None)."""
    adapter = formats.read_adapter(folder)
    try:
        opt = tree_unflatten(list(load_arrays(folder / "optimizer.safetensors").items()))
        state = json.loads((folder / "state.json").read_text())
        best = load_arrays(folder / "best.safetensors") if (folder / "best.safetensors").exists() else None
    except (OSError, ValueError, RuntimeError) as e:
        raise MacllmError(f"checkpoint {folder} is damaged ({e}); start again with --force") from None
    return adapter, opt, state, best
