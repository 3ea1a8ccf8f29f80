"""Length-bucketed batches: examples of similar length share a batch, so little compute is padding.

The order is a pure function of (seed, epoch), which is what lets --resume continue mid-epoch with
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random

import mlx.core as mx
import numpy as np

from macllm.tuner.examples import Example

PAD_MULTIPLE = 32  # padded lengths come in few distinct sizes, so the compiled step rarely retraces


def epoch_batches(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index lists: shuffle, sort by length (stable, so ties stay shuffled), cut, shuffle the batches."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    order.sort(key=lambda i: len(examples[i].tokens))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def collate(examples: list[Example]) -> tuple[mx.array, mx.array, int]:
    """(tokens B x L, loss mask B x (L-1), real tokens). Padding and masked prompts weigh 0."""
    longest = max(len(e.tokens) for e in examples)
    length = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE + 1  # +1: inputs and targets are shifted views
    tokens = np.zeros((len(examples), length), dtype=np.int32)
    mask = np.zeros((len(examples), length - 1), dtype=np.float32)
    for row, e in enumerate(examples):
        tokens[row, : len(e.tokens)] = e.tokens
        # Target t+1 is predicted at position t; train targets from prompt_len on.
        mask[row, max(0, e.prompt_len - 1): len(e.tokens) - 1] = 1.0
    return mx.array(tokens), mx.array(mask), sum(len(e.tokens) for e in examples)
