"""The text layer over the token loop: prompt checks, KV-cache reuse, detokenizing, stop conditions and
timing. Yields TokenEvents as tokens become text, then one GenerationResult with stats."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import mlx.core as mx

from macllm import backend
from macllm.cache import LayerCache, cache_length, make_cache, trim_cache
from macllm.errors import MacllmError
from macllm.generation import speculative, steps
from macllm.generation.params import (
    GenerationParams,
    GenerationResult,
    GenerationStats,
    TokenEvent,
)
from macllm.generation.reasoning import (
    THINK_CLOSE,
    ReasoningSplitter,
    SplitText,
    prompt_opens_thinking,
    template_thinks,
)
from macllm.generation.stop_strings import StopStringWatcher

# Enough prompt tokens to see whether the template left a think block open for the model.
PROMPT_TAIL_TOKENS = 16


def _check_prompt(model, prompt: list[int], context_length: int | None) -> int | None:
    if not prompt:
        raise MacllmError("the prompt is empty")
    limit = context_length or getattr(model.config, "max_position_embeddings", None)
    if limit and len(prompt) >= limit:
        raise MacllmError(f"the prompt is {len(prompt)} tokens, longer than the model's context of {limit}; "
                          "shorten the prompt")
    return limit


def _reusable_prefix(cache: list[LayerCache], cached: list[int], prompt: list[int]) -> int:
    """Trim the cache to the longest prefix it shares with `prompt`; return that prefix's length."""
    cached = cached[: cache_length(cache)]
    reuse = min(steps.common_prefix_length(cached, prompt), len(prompt) - 1)  # one token must run
    if not trim_cache(cache, cache_length(cache) - reuse):
        reuse = 0  # a sliding-window layer had dropped positions the reused prefix needs
    return reuse


def _reasoning_splitter(tokenizer, prompt: list[int]) -> ReasoningSplitter | None:
    """A splitter for models whose chat template knows think blocks; None for the others."""
    if not template_thinks(getattr(tokenizer, "chat_template", None)):
        return None
    return ReasoningSplitter(inside=prompt_opens_thinking(tokenizer.decode(prompt[-PROMPT_TAIL_TOKENS:])))


def stream_generate(model, tokenizer, prompt: list[int], params: GenerationParams,
                    cache: list[LayerCache] | None = None, cached: list[int] | None = None,
                    cancel: threading.Event | None = None,
                    context_length: int | None = None,
                    on_prefill: steps.PrefillProgress | None = None,
                    draft: speculative.DraftModel | None = None,
                    decoder: steps.Decoder | None = None) -> Iterator[TokenEvent | GenerationResult]:
    """Generate after `prompt`. If `cache` already holds `cached` tokens, only the part of `prompt`
    after their common prefix is computed. Yields TokenEvents, then one GenerationResult.
    `on_prefill(done, total)` reports a long prefill's progress (see steps.prefill). With `draft` (or
    `params.prompt_lookup`) tokens are decoded speculatively (speculative.py); `params.draft_model` is the
    Engine's to turn into a `draft`. `decoder` replaces `steps.decode_steps` (the engine's batched decode)."""
    limit = _check_prompt(model, prompt, context_length)
    if cache is None:
        cache, cached = make_cache(model), []
    reuse = _reusable_prefix(cache, list(cached or []), prompt)
    stats = GenerationStats(prompt_tokens=len(prompt), prefilled_tokens=len(prompt) - reuse)
    backend.reset_peak_memory()

    splitter = _reasoning_splitter(tokenizer, prompt)
    # A constraint shapes the answer: a think block the prompt opened is left free until it closes.
    choose = steps.TokenChooser(params, prompt,
                                free_until=THINK_CLOSE if splitter is not None and splitter.in_reasoning else None)
    t0 = time.perf_counter()
    last_logits = steps.prefill(model, prompt[reuse:], cache, on_prefill)
    first = choose(last_logits)
    mx.eval(first)
    # A batched decoder shares each forward pass with other requests; guesses would need passes of their own.
    proposer = None if decoder is not None else _proposer(cache, prompt, params, draft, last_logits.shape[-1])
    stats.ttft_s = time.perf_counter() - t0
    stats.prompt_tps = stats.prefilled_tokens / max(stats.ttft_s, 1e-9)

    detok = tokenizer.stream_decoder()
    stops = StopStringWatcher(params.stop_strings)
    eos = tokenizer.eos_token_ids
    fed = list(prompt)
    generated: list[int] = []
    text_parts: list[str] = []
    reasoning_parts: list[str] = []

    def split(text: str) -> SplitText:
        piece = SplitText(answer=text) if splitter is None else splitter.feed(text)
        text_parts.append(piece.answer)
        reasoning_parts.append(piece.reasoning)
        return piece

    finish = "length"
    max_new = min(params.max_tokens, limit - len(prompt)) if limit else params.max_tokens
    t_decode = time.perf_counter()
    spec_stats = speculative.SpeculationStats()
    if proposer is None:
        decoded = (decoder or steps.decode_steps)(model, cache, first, choose, max_new, cancel)
    else:
        decoded = speculative.decode_steps(model, cache, _first_step(first), prompt, params, proposer, max_new,
                                           spec_stats, cancel)
    for step in decoded:
        generated.append(step.token_id)
        if step.fed:
            fed.append(step.token_id)
        if step.token_id in eos:
            finish = "stop"
            break
        text, stopped = stops.feed(detok.add(step.token_id))
        piece = split(text)
        yield TokenEvent(step.token_id, piece.answer, step.logprob, _possible(step.alternatives),
                         reasoning=piece.reasoning, drafted=step.drafted)
        if stopped:
            finish = "stop"
            break
        if not step.fed:
            finish = "cancelled" if cancel is not None and cancel.is_set() else "length"

    if finish != "stop" or not stops.stops:
        tail, _ = stops.feed(detok.flush())
        tail += stops.flush()
        split(tail)
    if splitter is not None:
        rest = splitter.flush()
        text_parts.append(rest.answer)
        reasoning_parts.append(rest.reasoning)
    elapsed = time.perf_counter() - t_decode
    stats.generation_tokens = len(generated)
    stats.generation_tps = (len(generated) - 1) / elapsed if len(generated) > 1 and elapsed > 0 else 0.0
    stats.peak_memory_mb = backend.peak_memory_mb()
    stats.draft_proposed, stats.draft_accepted = spec_stats.proposed, spec_stats.accepted
    # The queued step may have fed one token past a stop; keep cache and `fed` in step.
    trim_cache(cache, cache_length(cache) - len(fed))
    yield GenerationResult("".join(text_parts), generated, finish, stats, fed, reasoning="".join(reasoning_parts))


def _proposer(cache, prompt: list[int], params: GenerationParams, draft: speculative.DraftModel | None,
              vocab_width: int) -> speculative.Proposer | None:
    """What guesses tokens for this answer (a draft model, else prompt lookup if asked), its cache filled."""
    if draft is None and not params.prompt_lookup:
        return None
    if params.constraint is not None:
        return None  # verifying guesses would need the parser rolled back per round; the output is the same without
    if draft is None:  # prompt lookup is only ever a speed-up: a model that cannot take it decodes plainly
        return speculative.LookupProposer() if speculative.rewindable(cache) else None
    speculative.check_rewindable(cache, "this model")
    draft.start(prompt, params, vocab_width)
    speculative.check_rewindable(draft.cache, "the draft model")
    return draft


def _possible(alternatives: list[tuple[int, float]] | None) -> list[tuple[int, float]] | None:
    """Alternatives a constraint masked out have logprob -inf: not alternatives at all (and not valid JSON)."""
    if alternatives is None:
        return None
    return [(token, logprob) for token, logprob in alternatives if logprob != float("-inf")]


def _first_step(first: tuple) -> steps.Step:
    token, logprob, alts = first
    return steps.Step(token.item(), logprob.item(), steps.read_alternatives(alts), False)


def generate(model, tokenizer, prompt: list[int], params: GenerationParams, **kw) -> GenerationResult:
    """Run `stream_generate` to the end and return its result."""
    for event in stream_generate(model, tokenizer, prompt, params, **kw):
        if isinstance(event, GenerationResult):
            return event
    raise AssertionError("stream_generate ended without a result")
