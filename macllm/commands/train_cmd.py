"""`macllm train`: fine-tune a LoRA adapter on a folder of notes (or an mlx-lm data folder)."""

from __future__ import annotations

import argparse
import math
from functools import partial
from pathlib import Path

from macllm.commands.options import add_model_option, parse_seed
from macllm.errors import MacllmError

TARGET_CHOICES = "q,k,v,o,gate,up,down"

EPILOG = """\
Defaults suit a small notes folder (tens of notes, 10-100k tokens) on a small model: rank 8, scale 20,
every layer, all seven projections, 2 epochs of batches of 4 chunks up to 512 tokens, learning rate
2e-4 with 10% warmup and cosine decay, 10% of the notes (whole files) held out for validation; an
evaluation and a checkpoint about every eighth of the run; stops early when validation loss has not
improved for 3 evaluations, and keeps the weights with the best validation loss.
The adapter lands in the adapter store (see `macllm adapters list`); load it with --adapter NAME.
Ctrl-C saves a checkpoint; continue with the same command plus --resume.
`--retrain NAME` trains an adapter of the store again on its notes folder as it is now (after edits), with
the model and options it was trained with (options given here override them), starting from its weights;
it replaces NAME when it finishes. `macllm adapters list` prints it for adapters whose notes changed.
Across machines: start the same command with `mlx.launch` (see docs/training.md)."""


# The trainer derives each step's dropout seed as seed * 1_000_003 + step, which must stay below 2**64.
MAX_TRAIN_SEED = 2**32 - 1

def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a LoRA adapter on your notes",
                       description="Fine-tune a LoRA adapter on a notes folder (Markdown/text, recursive) or "
                                   "an mlx-lm data folder (train.jsonl, valid.jsonl).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(p)
    p.add_argument("--notes", "--data", dest="notes", metavar="DIR",
                   help="notes folder; hidden folders, binary files and .macllmignore entries are skipped")
    p.add_argument("--name", help="the new adapter's name in the store")
    p.add_argument("--retrain", metavar="NAME", help="train the store's adapter NAME again on its notes folder "
                                                     "(as it is now), from its weights, and replace it")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--scale", type=float, default=20.0, help="LoRA scale, multiplies A·B (default 20)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on the LoRA input (default 0)")
    p.add_argument("--layers", default="all", metavar="N|all", help="train the last N layers (default all)")
    p.add_argument("--targets", default=TARGET_CHOICES, help=f"projections to adapt (default {TARGET_CHOICES})")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the notes (default 2)")
    p.add_argument("--iters", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch", type=int, default=4, help="chunks per step (per machine; default 4)")
    p.add_argument("--max-seq", type=int, default=512, help="longest chunk in tokens (default 512)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--warmup", type=float, default=0.1, help="warmup, as a fraction of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (default 1.0)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the notes (whole files) held out for validation (default 0.1; 0 = none)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: total/8)")
    p.add_argument("--save-every", type=int, default=None, help="steps between checkpoints (default: with evals)")
    p.add_argument("--patience", type=int, default=3, help="evaluations without improvement before an early "
                                                           "stop (default 3)")
    p.add_argument("--seed", type=partial(parse_seed, maximum=MAX_TRAIN_SEED), default=0,
                   help=f"random seed: split, order, initial weights (0 to {MAX_TRAIN_SEED}; default 0)")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute activations in the backward pass: less memory, ~30%% slower")
    p.add_argument("--mask-prompt", action="store_true",
                   help="chat/completions data: train only on the answers")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run of this --name")
    p.add_argument("--force", action="store_true", help="replace an adapter (or unfinished run) of this --name")
    p.add_argument("--out-dir", default=None, help="write the adapter here instead of the store")
    p.add_argument("--json", action="store_true",
                   help="one JSON event per line on stdout instead of a progress bar (see docs/training.md)")
    p.set_defaults(run=run, train_parser=p)


def train_config(args):
    from macllm.tuner.train import TARGETS, TrainConfig

    checks = [(args.rank >= 1, f"--rank must be at least 1, got {args.rank}"),
              (math.isfinite(args.scale) and args.scale > 0, f"--scale must be a positive number, got {args.scale}"),
              (0 <= args.dropout < 1, f"--dropout must be in [0, 1), got {args.dropout}"),
              (args.epochs > 0 and math.isfinite(args.epochs), f"--epochs must be positive, got {args.epochs}"),
              (args.iters is None or args.iters >= 1, f"--iters must be at least 1, got {args.iters}"),
              (args.batch >= 1, f"--batch must be at least 1, got {args.batch}"),
              (args.max_seq >= 32, f"--max-seq must be at least 32, got {args.max_seq}"),
              (0 < args.lr < 1, f"--lr must be between 0 and 1, got {args.lr}"),
              (0 <= args.warmup < 1, f"--warmup must be in [0, 1), got {args.warmup}"),
              (0 <= args.val_fraction < 1, f"--val-fraction must be in [0, 1), got {args.val_fraction}"),
              (args.patience >= 1, f"--patience must be at least 1, got {args.patience}")]
    for ok, message in checks:
        if not ok:
            raise MacllmError(message)
    layers = None
    if args.layers != "all":
        if not args.layers.isdigit() or int(args.layers) < 1:
            raise MacllmError(f"--layers must be a positive number or 'all', got {args.layers!r}")
        layers = int(args.layers)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise MacllmError(f"--targets: unknown {', '.join(unknown) or '(none)'}; choose from {TARGET_CHOICES}")
    return TrainConfig(rank=args.rank, scale=args.scale, dropout=args.dropout, layers=layers, targets=targets,
                       epochs=args.epochs, iters=args.iters, batch=args.batch, max_seq=args.max_seq, lr=args.lr,
                       warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, seed=args.seed,
                       grad_checkpoint=args.grad_checkpoint, eval_every=args.eval_every,
                       save_every=args.save_every, patience=args.patience)


def apply_retrain(args) -> tuple[argparse.Namespace, Path | None]:
    """`--retrain NAME`: the adapter's recorded model, folder and options, under any given explicitly (those
    that differ from their defaults). Returns the arguments to train with and the adapter to start from."""
    if args.retrain is None:
        if not args.notes or not args.name:
            raise MacllmError("macllm train needs --notes DIR and --name NAME (or --retrain NAME to train an "
                              "adapter again on its notes)")
        return args, None
    from macllm.tuner.retrain import plan_retrain

    if args.notes or args.name or args.out_dir:
        raise MacllmError("--retrain NAME takes the notes folder and the name from the adapter: leave out "
                          "--notes, --name and --out-dir")
    plan = plan_retrain(args.retrain)
    parser: argparse.ArgumentParser = args.train_parser
    recorded = dict(plan.config, model=plan.model, val_fraction=plan.val_fraction,
                    keep_quantized=plan.keep_quantized or args.keep_quantized)
    if "layers" in recorded:
        recorded["layers"] = "all" if recorded["layers"] is None else str(recorded["layers"])
    if isinstance(recorded.get("targets"), (list, tuple)):
        recorded["targets"] = ",".join(recorded["targets"])
    merged = argparse.Namespace(**vars(args))
    for key, value in recorded.items():
        if hasattr(merged, key) and getattr(args, key) == parser.get_default(key):
            setattr(merged, key, value)
    merged.notes, merged.name = str(plan.notes), args.retrain
    return merged, plan.folder


def run(args) -> int:
    from macllm.tuner.progress import JsonEvents, TerminalProgress
    from macllm.tuner.session import RunOptions, run_training

    emit = JsonEvents() if args.json else TerminalProgress()
    try:
        args, init_from = apply_retrain(args)
        cfg = train_config(args)
    except MacllmError as e:
        if args.json:
            emit({"event": "error", "message": str(e)})
        raise
    opts = RunOptions(model=args.model, data=Path(args.notes).expanduser().resolve(), name=args.name,
                      keep_quantized=args.keep_quantized, resume=args.resume, force=args.force,
                      mask_prompt=args.mask_prompt, val_fraction=args.val_fraction,
                      out_dir=Path(args.out_dir) if args.out_dir else None, init_from=init_from)
    return run_training(opts, cfg, emit)
