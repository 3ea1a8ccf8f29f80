"""The token loop: prefill a prompt into the cache, then decode one token at a time.

It knows tokens, logits and the cache, nothing about text: `stream.py` turns its steps into text,
stop strings and timing (as mlx-lm keeps `generate_step` apart from `stream_generate`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator, cast

import mlx.core as mx

from macllm.cache import LayerCache
from macllm.generation.params import GenerationParams
from macllm.generation.sampling import Sampler

PREFILL_CHUNK = 512


@dataclass
class Step:
    token_id: int
    logprob: float
    alternatives: list[tuple[int, float]] | None
    fed: bool  # the token is already in the cache (the next step was queued with it)
    drafted: bool = False  # a guess of speculative decoding that the model confirmed (speculative.py)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


PrefillProgress = Callable[[int, int], None]  # (tokens done, tokens to prefill)


def prefill(model, tokens: list[int], cache: list[LayerCache], on_chunk: PrefillProgress | None = None) -> mx.array:
    """Run the prompt through the model in chunks; return the last position's logits (1, vocab).

    `on_chunk(done, total)` is called before the first chunk and after each evaluated one, only when the
    prompt spans several chunks (a long prefill is the wait worth showing; a short one is over at once)."""
    logits = None
    report = on_chunk if on_chunk is not None and len(tokens) > PREFILL_CHUNK else None
    if report is not None:
        report(0, len(tokens))
    for start in range(0, len(tokens), PREFILL_CHUNK):
        chunk = mx.array(tokens[start:start + PREFILL_CHUNK])[None]
        logits = model(chunk, cache=cache, last_only=True)
        if start + PREFILL_CHUNK < len(tokens):
            mx.eval([c.state for c in cache])
            if report is not None:
                report(start + PREFILL_CHUNK, len(tokens))
    assert logits is not None, "prefill needs at least one token"
    return logits[:, -1, :]


class TokenChooser:
    """Logits -> (token, its log-probability, optional top alternatives), all still lazy.

    Keeps the recent tokens for the repetition penalty as an mx.array, so choosing never waits for
    the previous token to be known."""

    def __init__(self, params: GenerationParams, prompt: list[int], free_until: str | None = None):
        self.sampler = Sampler(params)
        self.window = max(params.repetition_window, 1)
        self.recent = mx.array(prompt[-self.window:], dtype=mx.int32)
        self.use_penalty = params.repetition_penalty != 1.0
        self.k_alt = params.top_alternatives
        # Constrained output: this generation's own parser state; alternatives and logprobs are after masking.
        # `free_until`: a think block the prompt opened stays free text up to its closing tag.
        self.constraint = params.constraint.start(free_until) if params.constraint is not None else None
        self.last: mx.array | None = None

    def follow(self, tokens: list[int]) -> None:
        """Go on after `tokens` (the prompt and the answer so far), which were chosen elsewhere (speculative
        decoding's rounds): the repetition penalty sees them as if this chooser had picked them."""
        self.recent = mx.array(tokens[-self.window:], dtype=mx.int32)

    def __call__(self, logits: mx.array):
        if self.constraint is not None:
            logits = self.constraint.mask(logits, self.last)
        token, logprob, alts = self.sampler.choose(logits, self.recent if self.use_penalty else None, self.k_alt)
        if self.use_penalty:
            keep = self.recent[-(self.window - 1):] if self.window > 1 else self.recent[:0]
            self.recent = mx.concatenate([keep, token])
        self.last = token
        return token, logprob, alts


def read_alternatives(alts: tuple[mx.array, mx.array] | None) -> list[tuple[int, float]] | None:
    """A choice's alternatives ((1, k) ids, (1, k) logprobs) as Python pairs. Read whole and indexed in Python:
    `ids[0].tolist()` would make a new MLX node whose evaluation waits behind the next step already queued on
    the stream, so the caller's work would stop overlapping the model's (~1-3 ms a token with the inspector on)."""
    if alts is None:
        return None
    ids = cast(list[list[int]], alts[0].tolist())
    logprobs = cast(list[list[float]], alts[1].tolist())
    return list(zip(ids[0], logprobs[0], strict=True))


# What decodes after the prefill: (model, cache, first choice, chooser, max new tokens, cancel) -> Steps.
Decoder = Callable[..., Iterator[Step]]


def decode_steps(model, cache: list[LayerCache], first: tuple, choose: TokenChooser, max_new: int,
                 cancel: threading.Event | None = None) -> Iterator[Step]:
    """Yield up to `max_new` tokens starting from `first` (the evaluated choice after the prefill).

    The next step is queued on the still-lazy token before the current one is handed out, so graph
    building and the caller's work overlap with the model's compute. The caller stops by breaking."""
    token, logprob, alts = first
    produced = 0
    while True:
        produced += 1
        more = produced < max_new and not (cancel is not None and cancel.is_set())
        if more:
            next_choice = choose(model(token[None], cache=cache)[:, -1, :])
            mx.async_eval(next_choice)
        yield Step(token.item(), logprob.item(), read_alternatives(alts), more)
        if not more:
            return
        token, logprob, alts = next_choice
