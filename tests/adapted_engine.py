"""An Engine with two random LoRA adapters loaded, for the tests of swaps and of adapters under speculation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from macllm.engine import Engine
from macllm.lora.formats import write_adapter
from macllm.lora.random_adapter import random_adapter


@contextmanager
def engine_with_alpha_and_beta(folder: Path, adapters_root: Path) -> Iterator[Engine]:
    """Engine on `folder` with adapters "alpha" and "beta" (rank 4, seeds 1 and 2, B large enough to change
    answers) written under `adapters_root` and loaded; none is active yet."""
    with Engine(str(folder), progress=False) as e:
        cfg = e.loaded.config
        for seed, name in enumerate(("alpha", "beta")):
            adapter = random_adapter(cfg, name, rank=4, seed=seed + 1, b_std=0.5, base_model="tiny")
            e.load_adapter(str(write_adapter(adapter, adapters_root / name, cfg.num_hidden_layers)))
        yield e
