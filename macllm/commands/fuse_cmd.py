"""`macllm fuse`: bake adapters into a new model folder (mlx-lm compatible)."""

from __future__ import annotations

from pathlib import Path

from macllm.commands.options import (
    add_adapter_option,
    add_model_option,
    parse_adapter_specs,
)


def add_parser(sub) -> None:
    p = sub.add_parser("fuse", help="bake adapters into a new model folder")
    add_model_option(p)
    add_adapter_option(p, required=True)
    p.add_argument("--out", required=True, help="the new model folder (must not exist)")
    p.set_defaults(run=run)


def run(args) -> int:
    from macllm.lora import formats, store
    from macllm.lora.fuse import fuse_to_folder

    adapters = [(formats.read_adapter(store.resolve(ref), name=name), scale)
                for ref, name, scale in parse_adapter_specs(args.adapter)]
    out = fuse_to_folder(args.model, adapters, Path(args.out))
    print(out)
    return 0
