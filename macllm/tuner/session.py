"""One training run from start to finish: checks, model, data, resume, Ctrl-C, checkpoints, the result.

Everything that can be refused is refused before the model is loaded. The finished adapter is written
to the store only at the end (atomically), so a failed or interrupted run never replaces a good
adapter; its checkpoints live in a hidden work folder next to it until the run finishes.
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from macllm.errors import MacllmError
from macllm.loader import load_model
from macllm.lora import formats, store
from macllm.lora.writable import check_writable
from macllm.paths import adapters_dir
from macllm.tuner import checkpoint
from macllm.tuner.data import load_data
from macllm.tuner.distributed import Group
from macllm.tuner.train import TrainConfig, Trainer, check_layers

EXIT_INTERRUPTED = 130


@dataclass
class RunOptions:
    model: str
    data: Path
    name: str
    keep_quantized: bool = False
    resume: bool = False
    force: bool = False
    mask_prompt: bool = False
    val_fraction: float = 0.1
    out_dir: Path | None = None  # default: the adapter store
    init_from: Path | None = None  # --retrain: the adapter whose weights start the run (and which it replaces)


def adapter_folder(name: str, out_dir: Path | None) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.strip() != name:
        raise MacllmError(f"--name {name!r}: use a plain name (letters, digits, - and _), not a path")
    if out_dir is None:
        out_dir = adapters_dir()
    return Path(out_dir) / name


def refuse_hiding_a_bundled_example(opts: RunOptions, final: Path) -> None:
    """A store adapter named like a bundled example hides it from every lookup by name (store first)."""
    in_store = final.parent.resolve() == adapters_dir().resolve()
    if in_store and (store.BUNDLED / opts.name).is_dir() and not opts.force:
        raise MacllmError(f"--name {opts.name!r} is a bundled example adapter, which yours would hide; choose "
                          f"another --name, or add --force to hide it")


def check_writable_before_training(final: Path, work: Path) -> None:
    """Checkpoints go to the work folder and the adapter next to it: a run that could not write them would
    be lost at its first checkpoint or its very end, so find out before the model is loaded."""
    hint = "choose another --out-dir, or make that folder writable"
    check_writable(final.parent, hint)
    if work.is_dir():
        check_writable(work, hint)


def preflight(opts: RunOptions) -> tuple[Path, Path, Path | None]:
    """(final folder, work folder, checkpoint to resume from); refuses what would lose something."""
    data = Path(opts.data).expanduser()
    if not data.is_dir():
        raise MacllmError(f"notes folder {data} does not exist or is not a folder")
    final = adapter_folder(opts.name, opts.out_dir)
    work = checkpoint.work_dir(final)
    refuse_hiding_a_bundled_example(opts, final)
    check_writable_before_training(final, work)
    latest = checkpoint.latest(work) if work.is_dir() else None
    if opts.resume:
        if latest is None:
            raise MacllmError(f"nothing to resume: no checkpoint of {opts.name!r} in {work}")
        return final, work, latest
    if final.exists() and not opts.force and opts.init_from is None:
        raise MacllmError(f"an adapter named {opts.name!r} exists ({final}); choose another --name or add --force")
    if latest is not None and not opts.force:
        raise MacllmError(f"an unfinished training of {opts.name!r} exists ({latest.name}); add --resume to "
                          f"continue it or --force to start over")
    return final, work, None


def run_training(opts: RunOptions, cfg: TrainConfig, emit) -> int:
    group = Group()
    report = emit if group.is_main else (lambda event: None)
    try:
        return _run(opts, cfg, report, group)
    except MacllmError as e:
        report({"event": "error", "message": str(e)})
        raise
    except Exception as e:  # reported too, so a reader of the event stream always sees an ending
        report({"event": "error", "message": f"internal error: {type(e).__name__}: {e}"})
        raise


def _run(opts: RunOptions, cfg: TrainConfig, emit, group: Group) -> int:
    final, work, resume_from = preflight(opts)
    # Float32 base unless --keep-quantized (QLoRA): see build_model on cpu_kernel.
    loaded = load_model(opts.model, keep_quantized=opts.keep_quantized, progress=False, cpu_kernel=opts.keep_quantized)
    check_layers(cfg, loaded.config.num_hidden_layers)  # before the notes are read and tokenized
    data = load_data(opts.data, loaded.tokenizer, cfg.max_seq, opts.val_fraction, cfg.seed, opts.mask_prompt)
    trainer = Trainer(loaded, data, cfg, group, emit, base_model=opts.model, name=opts.name)
    run_info = {**trainer.run_signature(), "name": opts.name, "model": opts.model, "data_dir": str(opts.data),
                "force": opts.force or opts.init_from is not None,  # a retrain replaces its adapter
                "init_from": str(opts.init_from) if opts.init_from else None}
    if resume_from is not None:
        saved = checkpoint.read_run(work) or {}
        if final.exists() and not saved.get("force"):
            raise MacllmError(f"an adapter named {opts.name!r} exists ({final}); the interrupted run did not "
                              f"have --force")
        for key in ("config", "base_fingerprint", "data", "ranks"):
            if saved.get(key) != run_info[key]:
                raise MacllmError(f"cannot resume {opts.name!r}: the {key.replace('_', ' ')} differs from the "
                                  f"interrupted run's (rerun with the same options, or --force to start over)")
        trainer.restore(*checkpoint.load(resume_from))
    else:
        if opts.init_from is not None:  # weights only: a finished adapter keeps no optimizer state
            trainer.warm_start(formats.read_adapter(opts.init_from))
        if group.is_main and work.exists():
            shutil.rmtree(work)  # --force: an earlier unfinished run's checkpoints
    emit({"event": "start", "model": opts.model, "adapter": opts.name, "path": str(final),
          "compute": loaded.info.compute, "total_iters": trainer.total,
          "steps_per_epoch": trainer.per_epoch, "resumed_from": trainer.progress.step or None,
          "warm_start": run_info["init_from"] if resume_from is None else None,
          "ranks": group.size, "config": run_info["config"],
          "data": {k: v for k, v in data.stats.items() if k != "file_hashes"}})  # hashes: in the adapter only

    def save(t: Trainer) -> Path | None:
        if not group.is_main:
            return None
        opt_state, extra, best = t.state_for_checkpoint()
        path = checkpoint.save(work, t.progress.step, t.adapter(), loaded.config.num_hidden_layers,
                               opt_state, extra, run_info, best)
        emit({"event": "checkpoint", "iteration": t.progress.step, "path": str(path)})
        return path

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: trainer.stop.set())
    try:
        outcome = trainer.run(on_checkpoint=save)
    finally:
        signal.signal(signal.SIGINT, previous)
    if outcome == "interrupted":
        path = save(trainer) if trainer.progress.step else None
        emit({"event": "stopped", "reason": "interrupted", "iteration": trainer.progress.step,
              "checkpoint": str(path) if path else None})
        return EXIT_INTERRUPTED
    adapter = trainer.final_adapter(outcome, data.stats)
    adapter.training = {**(adapter.training or {}), "retrained_from": run_info["init_from"],
                        "run": {"val_fraction": opts.val_fraction, "keep_quantized": opts.keep_quantized,
                                "mask_prompt": opts.mask_prompt}}  # what --retrain repeats
    if group.is_main:
        try:
            formats.write_adapter(adapter, final, loaded.config.num_hidden_layers, overwrite=True)
        except MacllmError as e:  # the run is not lost: its checkpoints stay until the adapter is written
            raise MacllmError(f"{e}; the run's checkpoints are kept in {work}: make room and rerun the same "
                              f"command with --resume") from None
        shutil.rmtree(work, ignore_errors=True)
    group.barrier()
    emit({"event": "done", "adapter": str(final), "name": opts.name, "summary": adapter.training})
    return 0
