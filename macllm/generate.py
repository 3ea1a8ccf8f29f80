"""Prefill + decode: yields token events as they are produced, then one result with stats."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import mlx.core as mx

from macllm import backend
from macllm.cache import KVCache, cache_length, make_cache, trim_cache
from macllm.errors import MacllmError
from macllm.sampling import Sampler, SamplingParams

PREFILL_CHUNK = 512


@dataclass
class GenerationParams(SamplingParams):
    max_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    top_alternatives: int = 0  # >0: each token event carries that many most likely alternatives


@dataclass
class TokenEvent:
    token_id: int
    text: str  # new, complete text this token made visible (may be "")
    logprob: float
    alternatives: list[tuple[int, float]] | None = None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens actually computed (the rest came from the KV cache)
    prompt_tps: float = 0.0
    ttft_s: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    peak_memory_mb: float = 0.0


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: GenerationStats
    fed_tokens: list[int] = field(default_factory=list)  # exactly what the KV cache now holds


class StopStringWatcher:
    """Holds back text that might be the start of a stop string; reports when one completes."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefill(model, tokens: list[int], cache: list[KVCache]) -> mx.array:
    """Run the prompt through the model in chunks; return the last position's logits (1, vocab)."""
    logits = None
    for start in range(0, len(tokens), PREFILL_CHUNK):
        chunk = mx.array(tokens[start:start + PREFILL_CHUNK])[None]
        logits = model(chunk, cache=cache, last_only=True)
        if start + PREFILL_CHUNK < len(tokens):
            mx.eval([c.state for c in cache])
    return logits[:, -1, :]


def stream_generate(model, tokenizer, prompt: list[int], params: GenerationParams,
                    cache: list[KVCache] | None = None, cached: list[int] | None = None,
                    cancel: threading.Event | None = None,
                    context_length: int | None = None) -> Iterator[TokenEvent | GenerationResult]:
    """Generate after `prompt`. If `cache` already holds `cached` tokens, only the part of `prompt`
    after their common prefix is computed. Yields TokenEvents, then one GenerationResult."""
    if not prompt:
        raise MacllmError("the prompt is empty")
    limit = context_length or getattr(model.config, "max_position_embeddings", None)
    if limit and len(prompt) >= limit:
        raise MacllmError(f"the prompt is {len(prompt)} tokens, longer than the model's context of {limit}; "
                          "shorten the prompt")
    if cache is None:
        cache, cached = make_cache(model), []
    cached = list(cached or [])[: cache_length(cache)]
    reuse = common_prefix_length(cached, prompt)
    reuse = min(reuse, len(prompt) - 1)  # at least one token must run to produce logits
    if not trim_cache(cache, cache_length(cache) - reuse):
        reuse = 0  # a sliding-window layer had dropped positions the reused prefix needs
    fed = list(prompt)
    stats = GenerationStats(prompt_tokens=len(prompt), prefilled_tokens=len(prompt) - reuse)
    backend.reset_peak_memory()

    sampler = Sampler(params)
    window = max(params.repetition_window, 1)
    recent = mx.array(prompt[-window:], dtype=mx.int32)
    use_penalty = params.repetition_penalty != 1.0
    k_alt = params.top_alternatives

    def choose(logits):
        nonlocal recent
        token, logprobs = sampler(logits, recent if use_penalty else None)
        if use_penalty:
            recent = mx.concatenate([recent[-(window - 1):] if window > 1 else recent[:0], token])
        alts = None
        if k_alt > 0:
            alts = mx.argpartition(-logprobs, kth=k_alt - 1, axis=-1)[:, :k_alt]
            alts = (alts, mx.take_along_axis(logprobs, alts, axis=-1))
        return token, logprobs[0, token], alts

    t0 = time.perf_counter()
    logits = prefill(model, prompt[reuse:], cache)
    token, logprob, alts = choose(logits)
    mx.eval(token, logprob, alts)
    stats.ttft_s = time.perf_counter() - t0
    stats.prompt_tps = stats.prefilled_tokens / max(stats.ttft_s, 1e-9)

    detok = tokenizer.stream_decoder()
    stops = StopStringWatcher(params.stop_strings)
    eos = tokenizer.eos_token_ids
    generated: list[int] = []
    text_parts: list[str] = []
    finish = "length"
    t_decode = time.perf_counter()
    max_new = params.max_tokens
    if limit:
        max_new = min(max_new, limit - len(prompt))

    while True:
        # Queue the next step on the still-lazy token before waiting for it: graph building and the
        # caller's work overlap with the model's compute.
        more = len(generated) + 1 < max_new and not (cancel is not None and cancel.is_set())
        if more:
            next_token, next_logprob, next_alts = choose(model(token[None], cache=cache)[:, -1, :])
            mx.async_eval(next_token, next_logprob, next_alts)
        tid = token.item()
        generated.append(tid)
        if more:
            fed.append(tid)
        if tid in eos:
            finish = "stop"
            break
        text, stopped = stops.feed(detok.add(tid))
        if text:
            text_parts.append(text)
        event_alts = None
        if alts is not None:
            event_alts = list(zip(alts[0][0].tolist(), alts[1][0].tolist()))
        yield TokenEvent(tid, text, logprob.item(), event_alts)
        if stopped:
            finish = "stop"
            break
        if not more:
            finish = "cancelled" if cancel is not None and cancel.is_set() else "length"
            break
        token, logprob, alts = next_token, next_logprob, next_alts

    if finish != "stop" or not stops.stops:
        tail, _ = stops.feed(detok.flush())
        tail += stops.flush()
        if tail:
            text_parts.append(tail)
    elapsed = time.perf_counter() - t_decode
    stats.generation_tokens = len(generated)
    stats.generation_tps = (len(generated) - 1) / elapsed if len(generated) > 1 and elapsed > 0 else 0.0
    stats.peak_memory_mb = backend.peak_memory_mb()
    # The speculative step may have fed one token past a stop; keep cache and `fed` in step.
    trim_cache(cache, cache_length(cache) - len(fed))
    yield GenerationResult("".join(text_parts), generated, finish, stats, fed)


def generate(model, tokenizer, prompt: list[int], params: GenerationParams, **kw) -> GenerationResult:
    result = None
    for event in stream_generate(model, tokenizer, prompt, params, **kw):
        if isinstance(event, GenerationResult):
            result = event
    return result
