"""Turning logits into the next token: greedy, temperature, top-k, top-p, min-p, repetition penalty.

Randomness comes from an explicit key split per step, so a seed reproduces an answer exactly no matter
what else uses MLX's global random state.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from macllm.kernels import sample_filter
from macllm.kernels.sample_filter import filter_logprobs


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    seed: int | None = None


def apply_repetition_penalty(logits: mx.array, recent: mx.array | None, penalty: float) -> mx.array:
    """CTRL-style: shrink positive logits and grow negative ones of recently seen tokens.

    `recent` stays an mx.array so the decode loop never waits for the last token to be known.
    Repeated ids are fine: each gets the same penalised value once.
    """
    if penalty == 1.0 or recent is None or recent.size == 0:
        return logits
    ids = recent
    picked = logits[..., ids]
    picked = mx.where(picked > 0, picked / penalty, picked * penalty)
    logits[..., ids] = picked
    return logits


__all__ = ["Sampler", "SamplingParams", "apply_repetition_penalty", "filter_logprobs"]


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self._key = mx.random.key(params.seed) if params.seed is not None else None

    def _next_key(self):
        if self._key is None:
            return None
        self._key, sub = mx.random.split(self._key)
        return sub

    def __call__(self, logits: mx.array, recent: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """logits (1, vocab) -> (token (1,), logprobs (1, vocab) of the unfiltered distribution)."""
        p = self.params
        logits = apply_repetition_penalty(logits, recent, p.repetition_penalty)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if p.temperature <= 0.0:
            return mx.argmax(logprobs, axis=-1), logprobs
        # Filter + draw: one Metal kernel on a Mac; elsewhere filter_logprobs and the same
        # inverse-CDF draw mx.random.categorical makes (same key, same token).
        token = sample_filter.apply(logprobs, p.temperature, p.top_k, p.top_p, p.min_p, key=self._next_key())
        return token, logprobs
