"""Perplexity of a model on a text: exp(mean negative log-likelihood of each token given those before).

Long texts are scored with a sliding window: each window of `context` tokens is run from an empty cache,
fed in chunks (so a quantized KV cache is exercised as in generation), and only the tokens the previous
window did not score count, each with at least `context - stride` tokens of history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from macllm.cache import make_cache
from macllm.errors import MacllmError

CHUNK = 256


@dataclass
class Perplexity:
    tokens: int  # tokens scored
    nll: float  # mean negative log-likelihood, nats per token
    ppl: float

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "nll": round(self.nll, 6), "ppl": round(self.ppl, 4)}


def window_starts(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) per window; every position 1..n-1 is scored exactly once."""
    spans, scored_to = [], 1
    begin = 0
    while scored_to < n:
        begin = min(begin, scored_to - 1)  # the first scored token needs at least one before it
        end = min(begin + context, n)
        spans.append((begin, end, scored_to))
        scored_to = end
        begin += stride
    return spans


def token_nll(model, tokens: list[int], first: int, kv_bits: int | None = None) -> tuple[float, int]:
    """Summed NLL of tokens[first:] given all of `tokens` before each, and how many were scored."""
    cache = make_cache(model, kv_bits)
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, CHUNK):
        chunk = tokens[start:start + CHUNK]
        logits = model(mx.array(chunk)[None], cache=cache)[0].astype(mx.float32)
        targets = tokens[start + 1:start + 1 + len(chunk)]
        lo = max(first - 1 - start, 0)  # logits at position p predict token p + 1
        hi = len(targets)
        if lo < hi:
            rows = logits[lo:hi]
            picked = mx.take_along_axis(rows, mx.array(targets[lo:hi])[:, None], axis=-1)[:, 0]
            nll = mx.logsumexp(rows, axis=-1) - picked
            total += nll.sum().item()  # type: ignore[assignment]  # a float32 sum: item() is a float
            count += hi - lo
        mx.eval([c.state for c in cache])
    return total, count


def perplexity(model, tokens: list[int], context: int = 1024, stride: int | None = None,
               kv_bits: int | None = None) -> Perplexity:
    if len(tokens) < 2:
        raise MacllmError("the text is too short to measure perplexity (it needs at least 2 tokens)")
    stride = stride or context // 2
    if not 0 < stride <= context:
        raise MacllmError(f"--stride must be between 1 and the context ({context}), got {stride}")
    total, count = 0.0, 0
    for begin, end, first in window_starts(len(tokens), context, stride):
        s, c = token_nll(model, tokens[begin:end], first - begin, kv_bits)
        total, count = total + s, count + c
    nll = total / count
    return Perplexity(tokens=count, nll=nll, ppl=math.exp(nll))
