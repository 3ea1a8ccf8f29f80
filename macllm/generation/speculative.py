"""Speculative decoding: something cheap guesses the next k tokens, the model checks all of them in one forward
pass, and every guess it agrees with is a token that cost no decode step of its own.

Two guessers (proposers): a small draft model with the same tokenizer (`DraftModel`), or prompt lookup
(`LookupProposer`, prompt_lookup.py), which copies what followed the last few tokens earlier in the text.

The output is the model's own. Greedy: a guess is kept while it is the model's argmax, and the first
disagreement is replaced by the argmax, so the text is what plain greedy decoding gives. Sampling: the
standard accept/reject rule (Leviathan et al. 2023, Chen et al. 2023): guess d, drawn from the guesser's q, is
kept with probability min(1, p(d)/q(d)); the first rejected one is replaced by a draw from max(0, p - q)
renormalised; when all are kept, one more token comes from p. Each emitted token is then distributed exactly as
p, the model's distribution after penalty, temperature and top-k/top-p/min-p. Prompt lookup's guesses are
certain (q is one-hot), so the rule keeps d with probability p(d) and otherwise draws from p without d.

One round builds the model's check (with the draft's steps, when k is fixed) as one lazy MLX graph, evaluated
while the caller shows the previous token; the only wait is for the verdict. Rejected positions are trimmed from
both caches. How many to guess adapts to the acceptance rate and to what a guess is measured to cost
(guess_plan.py); a draft also ends its round early after a guess it is unsure of (DRAFT_CONFIDENCE), which needs
each of its steps evaluated before the next is built.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Protocol

import mlx.core as mx
from mlx.utils import tree_flatten

from macllm.cache import LayerCache, cache_length, make_cache, trim_cache
from macllm.errors import MacllmError
from macllm.generation.guess_plan import AdaptiveK
from macllm.generation.params import GenerationParams
from macllm.generation.prompt_lookup import PromptLookup
from macllm.generation.sampling import apply_repetition_penalty, filter_logprobs, greedy_choices, top_alternatives
from macllm.generation.steps import Step, common_prefix_length, prefill


@dataclass
class Proposal:
    tokens: mx.array  # (k,) int32, possibly still lazy
    probs: mx.array | None  # (k, vocab): the distribution each guess was drawn from; None: certain guesses
    kind: int = 0  # what kind of guess, for the acceptance kept per kind (AdaptiveK)

    @property
    def size(self) -> int:
        return self.tokens.shape[0]


class Proposer(Protocol):
    def propose(self, history: list[int], plan: AdaptiveK, room: int) -> Proposal | None:
        """Guesses to follow `history` (the tokens so far, the last one not yet in any cache): as many as `plan`
        says for their kind, at most `room`; None for none."""

    def settle(self, proposed: list[int]) -> None:
        """The guesses of the last proposal, now known (whether or not they were kept)."""

    def guess_cost(self, model) -> float:
        """What making one guess costs, in decode steps of `model` (the check's share is measured)."""

    def plan(self, model, fixed: int) -> AdaptiveK:
        """The planner of how many to guess (`fixed` > 0: always that many)."""


@dataclass
class SpeculationStats:
    proposed: int = 0
    accepted: int = 0
    rounds: int = 0


class _Keys:
    """Random keys split from the seed (None without one: MLX's global state), as `Sampler` does."""

    def __init__(self, seed: int | None):
        self._key = mx.random.key(seed) if seed is not None else None

    def next(self):
        if self._key is None:
            return None
        self._key, sub = mx.random.split(self._key)
        return sub


def _distribution(logprobs: mx.array, params: GenerationParams) -> mx.array:
    """Rows of log-probabilities -> the probabilities sampling draws from (temperature, then the filters)."""
    scaled = filter_logprobs(logprobs / params.temperature, params.top_k, params.top_p, params.min_p)
    return mx.softmax(scaled.astype(mx.float32), axis=-1)


def _fit_width(logits: mx.array, width: int) -> mx.array:
    """The draft's logits over the model's vocabulary width (checkpoints pad their embeddings differently)."""
    have = logits.shape[-1]
    if have > width:
        return logits[..., :width]
    if have < width:
        pad = mx.full((*logits.shape[:-1], width - have), -float("inf"), logits.dtype)
        return mx.concatenate([logits, pad], axis=-1)
    return logits


# Prompt lookup's prior acceptance by how far its match reaches back (prompt_lookup.Match.length), as kinds
# 0-4: 2 tokens, 3, 4-7, 8-15, 16 or more. With a guess costing ~0.3 of a step in the check, a match of two or three
# tokens does not pay until the answer shows that it copies.
LOOKUP_PRIORS = {0: 0.3, 1: 0.4, 2: 0.55, 3: 0.7, 4: 0.8}


def match_kind(length: int) -> int:
    return 0 if length <= 2 else 1 if length == 3 else min(length.bit_length() - 1, 4)


class LookupProposer:
    """Guesses copied from earlier in the prompt and the answer so far (prompt_lookup.py), planned per match
    length: a short match that keeps missing stops guessing, a long one guesses far."""

    def __init__(self):
        self.index = PromptLookup()

    def propose(self, history: list[int], plan: AdaptiveK, room: int) -> Proposal | None:
        self.index.extend(history[len(self.index.tokens):])
        found = self.index.match(min(plan.max_k, room))
        if found is None:
            return None
        kind = match_kind(found.length)
        k = min(plan.k(kind), room)
        if k == 0:
            return None
        return Proposal(mx.array(found.guesses[:k], dtype=mx.int32), None, kind)

    def settle(self, proposed: list[int]) -> None:
        pass

    def guess_cost(self, model) -> float:
        return 0.0  # a dictionary look-up

    def plan(self, model, fixed: int) -> AdaptiveK:
        return AdaptiveK(fixed, self.guess_cost(model), least=0, priors=LOOKUP_PRIORS)


# A draft's round ends after a guess it gives less than this probability: such guesses are the ones the model
# rejects. Chosen by simulating rounds from the 0.5B's teacher-forced guesses for the 1.5B on the code prompts
# (docs/benchmarks.md, "Speculative decoding").
DRAFT_CONFIDENCE = 0.8


class DraftModel:
    """A small model with the same tokenizer that guesses by decoding k tokens itself, bare (no adapters).

    Owns its KV cache and the tokens it holds (`cached`), so a conversation can keep it between turns."""

    def __init__(self, model, tokenizer, cache: list[LayerCache] | None = None, cached: list[int] | None = None,
                 kv_bits: int | None = None, confidence: float = DRAFT_CONFIDENCE):
        self.model, self.tokenizer = model, tokenizer
        self.confidence = confidence  # an adaptive round's guesses end after one the draft gives less than this
        self.cache = cache if cache is not None else make_cache(model, kv_bits)
        self.cached = list(cached or [])
        self.params = GenerationParams()
        self.width = 0  # the model's vocabulary width, set by `start`
        self._keys = _Keys(None)
        self._base: list[int] = []

    def start(self, prompt: list[int], params: GenerationParams, width: int) -> None:
        """Take the prompt into the draft's cache (reusing what it already holds) before the first round."""
        self.params, self.width = params, width
        # Draws apart from the model's (a seed is at most 2**64 - 1: wrap around).
        self._keys = _Keys(None if params.seed is None else (params.seed + 1) % 2**64)
        self._catch_up(prompt, keep_last=False)
        if len(prompt) > len(self.cached):
            mx.eval(prefill(self.model, prompt[len(self.cached):], self.cache))
            self.cached = list(prompt)

    def _catch_up(self, history: list[int], keep_last: bool) -> int:
        """Trim the cache to its common prefix with `history` (leaving the last token to run if `keep_last`)."""
        limit = len(history) - 1 if keep_last else len(history)
        held = self.cached[:cache_length(self.cache)]
        common = min(common_prefix_length(held, history), limit)
        if not trim_cache(self.cache, cache_length(self.cache) - common):
            common = 0
        self.cached = history[:common]
        return common

    def propose(self, history: list[int], plan: AdaptiveK, room: int) -> Proposal | None:
        k = min(plan.k(), room)
        if k == 0:
            return None
        # With an adaptive k (no --draft-tokens), k is a cap: the draft stops early at a guess it is unsure of.
        # That costs an evaluation per draft step, which the lazy graph of k steps did not have (~0.1 ms of an
        # ~18 ms step for the 0.5B draft here).
        stop_below = self.confidence if not plan.fixed else 0.0
        common = self._catch_up(history, keep_last=True)
        logits = self.model(mx.array(history[common:])[None], cache=self.cache, last_only=True)[:, -1, :]
        tokens: list[mx.array] = []
        probs: list[mx.array] = []
        for i in range(k):
            token, q, sure = self._choose(logits)
            tokens.append(token)
            if q is not None:
                probs.append(q)
            if i + 1 == k:
                break  # the last guess's own continuation is not needed
            if stop_below > 0:
                mx.eval(token, sure)
                if float(sure.item()) < stop_below:  # type: ignore[arg-type]  # a float32 scalar
                    break
            logits = self.model(token[None], cache=self.cache)[:, -1, :]
        self._base = list(history)
        return Proposal(mx.concatenate(tokens).astype(mx.int32), mx.concatenate(probs) if probs else None)

    def _choose(self, logits: mx.array) -> tuple[mx.array, mx.array | None, mx.array]:
        """The next guess, the distribution it was drawn from (None: greedy), and the draft's probability of it."""
        logits = _fit_width(logits, self.width)
        if self.params.temperature <= 0:
            top = logits.astype(mx.float32)
            return mx.argmax(logits, axis=-1), None, mx.exp(mx.max(top) - mx.logsumexp(top))
        q = _distribution(logits - mx.logsumexp(logits, axis=-1, keepdims=True), self.params)
        token = mx.random.categorical(mx.log(q), key=self._keys.next())
        return token, q, mx.take_along_axis(q, token[:, None], axis=-1).squeeze()

    def settle(self, proposed: list[int]) -> None:
        if proposed:  # (a round without guesses left the draft's cache as it was)
            self.cached = self._base + proposed[:-1]  # what the draft's cache now holds

    def guess_cost(self, model) -> float:
        """A decode step reads every weight once, so a draft step costs about its weights' share in bytes."""
        return weight_bytes(self.model) / max(weight_bytes(model), 1)

    def plan(self, model, fixed: int) -> AdaptiveK:
        return AdaptiveK(fixed, self.guess_cost(model))


def weight_bytes(model) -> int:
    weights = tree_flatten(model.parameters(), destination={})
    assert isinstance(weights, dict)
    return sum(v.nbytes for v in weights.values())


@dataclass
class Verdict:
    """One round's outcome, all lazy until `resolve`."""

    drafts: mx.array  # (k,)
    accept: mx.array  # (k,) bool: each guess on its own (only the leading run counts)
    replacement: mx.array  # (k+1,): the token to emit if the first rejection is at i (k: all kept)
    # Sampled rounds: (k+1, vocab), the model's log-probabilities (after penalty) at each position. Greedy
    # rounds: (k+1,), the log-probability of each position's choice, the only ones a greedy round emits.
    logprobs: mx.array
    alternatives: tuple[mx.array, mx.array] | None = None

    def arrays(self) -> list[mx.array]:
        extra = list(self.alternatives) if self.alternatives is not None else []
        return [self.drafts, self.accept, self.replacement, self.logprobs, *extra]


@dataclass
class Resolved:
    tokens: list[int]  # the kept guesses, then the replacement (or the extra token)
    logprobs: list[float]
    alternatives: list[list[tuple[int, float]] | None] = field(default_factory=list)
    proposed: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.tokens) - 1


def _penalised(logits: mx.array, history: list[int], drafts: mx.array, params: GenerationParams) -> mx.array:
    """Per-position repetition penalty: position i has seen `history` and the first i guesses."""
    if params.repetition_penalty == 1.0:
        return logits
    window = max(params.repetition_window, 1)
    seen = mx.concatenate([mx.array(history, dtype=mx.int32), drafts.astype(mx.int32)])
    rows = []
    for i in range(logits.shape[0]):
        upto = len(history) + i
        rows.append(apply_repetition_penalty(logits[i:i + 1], seen[max(0, upto - window):upto],
                                             params.repetition_penalty))
    return mx.concatenate(rows)


def judge(logits: mx.array, proposal: Proposal, history: list[int], params: GenerationParams, keys: _Keys) -> Verdict:
    """logits (k+1, vocab): the model's at the last token and after each guess -> the round's Verdict."""
    k = proposal.size
    drafts = proposal.tokens
    logits = _penalised(logits, history, drafts, params)
    if params.temperature <= 0:
        # A guess is kept when it is the model's own choice; each position's choice and its logprob (one
        # node per round on the CPU) are all a greedy round needs.
        best, chosen, alternatives = greedy_choices(logits, params.top_alternatives)
        return Verdict(drafts, best[:k] == drafts, best, chosen, alternatives)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    p = _distribution(logprobs, params)
    rows = mx.arange(k)
    p_d = p[rows, drafts]
    if proposal.probs is None:  # certain guesses: q is one-hot at d
        q_d = mx.ones_like(p_d)
        residual = mx.where(mx.arange(p.shape[-1])[None] == drafts[:, None], 0.0, p[:k])
    else:
        q_d = proposal.probs[rows, drafts]
        residual = mx.maximum(p[:k] - proposal.probs, 0.0)
    # Where p and q agree to rounding the residual is empty; a draw from p itself is then as good.
    residual = mx.where(residual.sum(axis=-1, keepdims=True) > 0, residual, p[:k])
    accept = mx.random.uniform(shape=(k,), key=keys.next()) * q_d < p_d
    pick_from = mx.concatenate([residual, p[k:]])
    replacement = mx.random.categorical(mx.log(pick_from), key=keys.next())
    verdict = Verdict(drafts, accept, replacement, logprobs)
    if params.top_alternatives > 0:
        verdict.alternatives = top_alternatives(logprobs, params.top_alternatives)
    return verdict


def _listed(a: mx.array) -> list:
    values = a.tolist()
    assert isinstance(values, list), "a one- or two-dimensional array"
    return values


def resolve(verdict: Verdict, limit: int) -> Resolved:
    """Wait for the verdict; keep at most `limit` guesses."""
    drafts = _listed(verdict.drafts)
    accept = _listed(verdict.accept)
    kept = 0
    while kept < min(len(drafts), limit) and accept[kept]:
        kept += 1
    tokens = drafts[:kept] + [verdict.replacement[kept].item()]
    if verdict.logprobs.ndim == 1:  # greedy: the emitted tokens are the positions' choices
        lp = _listed(verdict.logprobs)[:kept + 1]
    else:
        lp = _listed(verdict.logprobs[mx.arange(kept + 1), mx.array(tokens)])
    alts: list[list[tuple[int, float]] | None] = [None] * len(tokens)
    if verdict.alternatives is not None:
        ids, vals = _listed(verdict.alternatives[0]), _listed(verdict.alternatives[1])
        alts = [list(zip(ids[i], vals[i], strict=True)) for i in range(len(tokens))]
    return Resolved(tokens, lp, alts, drafts)


def rewindable(cache: list[LayerCache]) -> bool:
    """Whether every layer can drop its last positions (recurrent state, e.g. mlx-lm's ArraysCache, cannot).
    Asked of the wrapped mlx-lm cache itself, so the wrapper's "no prefix reuse" note is not raised."""
    def steps_back(layer) -> bool:
        inner = getattr(layer, "inner", None)  # an mlx-lm cache seen through MlxLmLayerCache
        return bool(inner.is_trimmable()) if inner is not None else layer.can_trim(1)

    return all(steps_back(layer) for layer in cache)


def check_rewindable(cache: list[LayerCache], who: str) -> None:
    """Speculation trims rejected guesses: a model whose cache cannot step back cannot take a draft."""
    if not rewindable(cache):
        raise MacllmError(f"{who} has layers whose cache cannot step back (recurrent state), which speculative "
                          "decoding needs; run it without --draft-model")


def decode_steps(model, cache: list[LayerCache], first: Step, history: list[int], params: GenerationParams,
                 proposer: Proposer, max_new: int, stats: SpeculationStats,
                 cancel: threading.Event | None = None,
                 hand_over: Callable[[], bool] | None = None) -> Generator[Step, None, Step | None]:
    """Like steps.decode_steps, with guesses: yields up to `max_new` Steps from `first` (the token after
    `history`, the tokens in the cache); kept guesses come as Steps with `drafted` set. The caller stops by
    breaking. When `hand_over()` says so between rounds, it returns the next token, not yet yielded nor in the
    cache, for plain decoding to go on from (the engine's batch, once a second request joins); else None."""
    keys = _Keys(params.seed)
    plan = proposer.plan(model, params.draft_tokens)
    # A round without guesses feeds its token on ahead, still lazy, as the plain loop does, so that forward
    # computes while this one is resolved and the next proposal made; the next round uses its logits whether
    # or not it guesses (guesses then take a forward of their own). Not with a repetition penalty: judging
    # the next position needs the token itself.
    # Nor with a draft, which guesses every round but the timing ones: those must time a plain step alone.
    pipelined = params.repetition_penalty == 1.0 and isinstance(proposer, LookupProposer)
    ahead: mx.array | None = None  # (1, vocab): the model's logits after `pending`, which the cache already holds
    history = list(history)
    pending = first
    produced = 0
    last = time.perf_counter()
    while True:
        if hand_over is not None and hand_over():
            if ahead is not None:
                trim_cache(cache, 1)
            return pending
        produced += 1
        room = max_new - produced  # tokens still allowed after `pending`
        if room <= 0 or (cancel is not None and cancel.is_set()):
            if ahead is not None:
                trim_cache(cache, 1)
            yield Step(pending.token_id, pending.logprob, pending.alternatives, False)
            return None
        history.append(pending.token_id)
        proposal = proposer.propose(history, plan, room)
        if proposal is None:
            proposal = Proposal(mx.zeros((0,), dtype=mx.int32), None)
        if ahead is None:
            tokens = mx.concatenate([mx.array([pending.token_id], dtype=mx.int32), proposal.tokens])
            logits = model(tokens[None], cache=cache)[0]
        elif proposal.size == 0:
            logits = ahead
        else:
            logits = mx.concatenate([ahead, model(proposal.tokens[None], cache=cache)[0]])
        verdict = judge(logits, proposal, history, params, keys)
        ahead = None
        if pipelined and proposal.size == 0 and room > 1:
            ahead = model(verdict.replacement[None, :1], cache=cache)[0]
            mx.async_eval([*verdict.arrays(), ahead])
        else:
            mx.async_eval(verdict.arrays())
        yield Step(pending.token_id, pending.logprob, pending.alternatives, True, pending.drafted)

        outcome = resolve(verdict, room)
        now = time.perf_counter()
        plan.observe(proposal.size, now - last)  # the whole round: proposing, graph building and the wait
        last = now
        proposer.settle(outcome.proposed)
        trim_cache(cache, proposal.size - outcome.kept)  # the cache keeps `pending` and the kept guesses
        if proposal.size:
            stats.rounds += 1
            stats.proposed += proposal.size
            stats.accepted += outcome.kept
            plan.update(proposal.size, outcome.kept, proposal.kind)
        for i in range(outcome.kept):
            produced += 1
            yield Step(outcome.tokens[i], outcome.logprobs[i], outcome.alternatives[i], True, drafted=True)
        history.extend(outcome.tokens[:outcome.kept])
        if produced >= max_new:
            if ahead is not None:
                trim_cache(cache, 1)
            return None
        pending = Step(outcome.tokens[-1], outcome.logprobs[-1], outcome.alternatives[-1], False)


def same_vocabulary(draft_tokenizer, tokenizer) -> bool:
    """Whether two tokenizers map the same strings to the same ids (a draft must, or its guesses are noise)."""
    a, b = draft_tokenizer.hf_tokenizer, tokenizer.hf_tokenizer
    if a.get_vocab_size(with_added_tokens=True) != b.get_vocab_size(with_added_tokens=True):
        return False
    return bool(a.get_vocab(with_added_tokens=True) == b.get_vocab(with_added_tokens=True))
