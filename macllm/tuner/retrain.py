"""Retraining an adapter on its notes folder as the folder is now: what the adapter's training record says
to train with (base model, folder, every option), and the command that does it.

A finished adapter keeps its LoRA weights but not the optimizer's moments (the run's work folder with
its checkpoints is removed once the adapter is written), so a retrain starts from the adapter's weights
with a fresh AdamW and its warmup, on the folder's current notes, and replaces the adapter when it
finishes. An interrupted retrain resumes from its own checkpoint (weights, optimizer and all) like any
run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from pathlib import Path

from macllm.errors import MacllmError
from macllm.lora import formats
from macllm.paths import adapters_dir
from macllm.tuner.train import TrainConfig

DEFAULT_VAL_FRACTION = 0.1  # what `macllm train` uses; adapters recorded before `run` was kept


@dataclass(frozen=True)
class RetrainPlan:
    folder: Path  # the adapter being retrained, in the store
    model: str
    notes: Path
    config: dict  # TrainConfig fields as recorded
    val_fraction: float
    keep_quantized: bool


def retrain_command(name: str) -> str:
    """What `macllm adapters list` prints for an adapter whose notes changed."""
    return f"macllm train --retrain {shlex.quote(name)}"


def plan_retrain(name: str) -> RetrainPlan:
    """Refuses (one line) an adapter that is not in the store or was not trained here on a notes folder."""
    folder = adapters_dir() / name
    if not name or "/" in name or name.startswith(".") or not (folder / formats.CONFIG).is_file():
        raise MacllmError(f"--retrain {name!r}: no adapter of that name in {adapters_dir()} "
                          f"(see `macllm adapters list`)")
    training = formats.read_adapter(folder).training or {}
    data: dict = training["data"] if isinstance(training.get("data"), dict) else {}
    params = training.get("params")
    if data.get("kind") != "notes" or not data.get("source") or not isinstance(params, dict) \
            or not training.get("base_model"):
        raise MacllmError(f"--retrain {name!r}: it was not trained with `macllm train` on a notes folder, so "
                          f"there is no folder or options to retrain with; train a new one with --notes")
    notes = Path(data["source"]).expanduser()
    if not notes.is_dir():
        raise MacllmError(f"--retrain {name!r}: its notes folder {notes} is gone; train a new adapter with "
                          f"--notes and --name (add --force to replace this one)")
    known = {f.name for f in fields(TrainConfig)}
    config = {k: v for k, v in params.items() if k in known}
    run: dict = training["run"] if isinstance(training.get("run"), dict) else {}
    val_fraction = run.get("val_fraction")
    if val_fraction is None:  # older records: no held-out notes means --val-fraction 0
        val_fraction = DEFAULT_VAL_FRACTION if data.get("valid_files") else 0.0
    return RetrainPlan(folder=folder, model=str(training["base_model"]), notes=notes, config=config,
                       val_fraction=float(val_fraction), keep_quantized=bool(run.get("keep_quantized")))
