"""Turning logits into the next token: greedy, temperature, top-k, top-p, min-p, repetition penalty.

Randomness comes from an explicit key split per step, so a seed reproduces an answer exactly no matter
what else uses MLX's global random state. On the CPU the whole choice (log-probabilities, filters, draw,
alternatives) is one node of our extension (csrc/sample_token.cpp) that picks the same tokens as the MLX
composition here: that composition costs 0.7 ms (greedy) to 4.5 ms (the app's sampling) per token on a
49k vocabulary, the node 0.1-0.4 ms (docs/benchmarks.md, issue 15).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from macllm.cpu_kernels import fused
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


def top_alternatives(logprobs: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """The k likeliest tokens of each row and their logprobs, most likely first (as the CPU op orders them)."""
    ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[..., :k]
    values = mx.take_along_axis(logprobs, ids, axis=-1)
    order = mx.argsort(-values, axis=-1)
    return mx.take_along_axis(ids, order, axis=-1), mx.take_along_axis(values, order, axis=-1)


def greedy_choices(logits: mx.array, alternatives: int = 0):
    """Each row's greedy choice of logits (rows, vocab): (tokens (rows,), their logprobs (rows,), None or the
    `alternatives` likeliest per row with their logprobs ((rows, k), (rows, k))), lazy; one node on the CPU."""
    if one_node(logits):
        return fused.choose_token(logits, None, 0.0, 0, 1.0, 0.0, alternatives)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    best = mx.argmax(logprobs, axis=-1)
    chosen = mx.take_along_axis(logprobs, best[:, None], axis=-1)[:, 0]
    return best, chosen, top_alternatives(logprobs, alternatives) if alternatives > 0 else None


def one_node(logits: mx.array) -> bool:
    """Whether our CPU op makes the choice (csrc/sample_token.cpp) rather than the MLX ops below."""
    return fused.active(logits)


__all__ = ["Sampler", "SamplingParams", "apply_repetition_penalty", "filter_logprobs", "greedy_choices",
           "top_alternatives"]


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self._key = mx.random.key(params.seed) if params.seed is not None else None

    def _next_key(self):
        if self._key is None:
            return None
        self._key, sub = mx.random.split(self._key)
        return sub

    def choose(self, logits: mx.array, recent: mx.array | None = None, alternatives: int = 0):
        """logits (1, vocab) -> (token (1,), its logprob (1,), None or the `alternatives` likeliest tokens and
        their logprobs ((1, k), (1, k))), logprobs of the unfiltered distribution; all lazy."""
        p = self.params
        logits = apply_repetition_penalty(logits, recent, p.repetition_penalty)
        if one_node(logits):
            greedy = p.temperature <= 0.0
            u = None if greedy else sample_filter.uniforms(logits, self._next_key())
            return fused.choose_token(logits, u, 0.0 if greedy else p.temperature, p.top_k, p.top_p, p.min_p,
                                      alternatives)
        token, logprobs = self._pick(logits)
        alts = top_alternatives(logprobs, alternatives) if alternatives > 0 else None
        return token, logprobs[0, token], alts

    def __call__(self, logits: mx.array, recent: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """logits (1, vocab) -> (token (1,), logprobs (1, vocab) of the unfiltered distribution), by MLX's ops
        on every device (the reference `choose` matches on the CPU)."""
        return self._pick(apply_repetition_penalty(logits, recent, self.params.repetition_penalty))

    def _pick(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        p = self.params
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if p.temperature <= 0.0:
            return mx.argmax(logprobs, axis=-1), logprobs
        # Filter + draw: one Metal kernel on a Mac; elsewhere filter_logprobs and the same
        # inverse-CDF draw mx.random.categorical makes (same key, same token).
        token = sample_filter.apply(logprobs, p.temperature, p.top_k, p.top_p, p.min_p, key=self._next_key())
        return token, logprobs
