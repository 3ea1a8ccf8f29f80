"""Batched decode of one-off requests (the server's): several generations share each forward pass.

On a CPU a decode step's cost is mostly reading the weights; the projections and MLPs of every running sequence
go through one pass, so the weights are read once per step for all of them (attention stays per sequence, see
cache/rows.py). Everything here runs on the engine thread.

Each request keeps the ordinary text layer (`stream_generate`: prefill, stop strings, detokenizing, stats); only
its decode loop is replaced by `Row.decoder`, which yields the tokens the batch computed. Per step the runner
feeds every row's next token in one forward, queues each row's choice, then resumes each row's generator once:
it reports the token, exactly as `steps.decode_steps` would have, whose forward it also mirrors (the token a
step reports is already in the cache when `fed`).

Requests join in arrival order, up to MAX_ROWS; while a long prompt is prefilled in chunks, the running rows
take a step between chunks. A forward pass computes under one adapter blend, so rows are
grouped by blend and the groups take turns, one step each, the blend swapped between them (a few array
re-points): rows under the same adapters share every pass, and a request under other adapters is served
alongside instead of waiting for the batch to finish. A pump job runs a bounded number of steps and queues itself
again, so other engine jobs (an adapter load, a notes question) are never starved.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import mlx.core as mx

from macllm.cache.rows import row_caches
from macllm.engine.prompt_slots import PromptSlots, Slot
from macllm.engine.solo_guesses import Guesser, SoloGuesses
from macllm.engine.token_stream import PrefillProgress, TokenStream
from macllm.generation import GenerationParams, GenerationResult, GenerationStats, speculative, stream_generate
from macllm.generation.speculative import SpeculationStats
from macllm.generation.steps import Step, common_prefix_length, read_alternatives

MAX_ROWS = 8  # sequences decoded together; more costs memory for the caches and attention time per step
STEPS_PER_JOB = 16  # decode steps one pump job runs before letting other engine jobs in


@dataclass
class Request:
    tokens: list[int]
    params: GenerationParams
    scales: dict[str, float] | None  # None: whatever blend is active
    stream: TokenStream


@dataclass
class Row:
    request: Request
    slot: Slot
    events: Iterator = field(init=False)
    cache: list = field(default_factory=list)
    choose: Callable | None = None
    max_new: int = 0
    produced: int = 0
    current: tuple | None = None  # the choice the batch fed last (reported at the next resume)
    upcoming: tuple | None = None  # the choice after it, computed by the last forward
    feeding: bool = False  # whether the last forward fed `current`
    more: bool = True  # False once the row reported its last token
    blend: tuple = ()  # the adapter blend it runs under (blend_key)
    disk_key: dict | None = None  # the prompt cache's key for this row's model and blend
    guesser: Guesser | None = None  # speculative decoding asked for: used while this row runs alone
    speculate: bool = False  # the runner's word: decode speculatively (alone) from the next token on
    in_batch: bool = False  # whether the decoder is in its batched phase (`upcoming` is the row's next token)
    spec_stats: SpeculationStats = field(default_factory=SpeculationStats)

    def wants_feed(self) -> bool:
        """Whether the batch computes past `upcoming`: the same rule as steps.decode_steps."""
        return self.produced + 1 < self.max_new and not self.request.stream.cancelled.is_set()

    def decoder(self, model, cache, first, choose, max_new, cancel) -> Iterator[Step]:
        """Stands in for steps.decode_steps. Batched: the first token's forward runs here alone; the rest come from
        the batch, one per resume. While the runner says `speculate` (the row runs alone), tokens come from
        speculative rounds run here, and go back to the batch between two rounds when another row joins."""
        self.cache, self.choose, self.max_new = cache, choose, max_new
        history = list(self.request.tokens)  # what the cache holds
        choice = first  # the next token to report, not yet fed
        while True:
            if self.speculate and self.guesser is not None:
                handed = yield from self._speculate(model, cache, _step_of(choice), history, cancel)
                if handed is None:
                    return
                choice = _choice_of(handed)
                choose.follow([*history, handed.token_id])
            token, logprob, alts = choice
            self.produced += 1
            self.more = self.produced < max_new and not (cancel is not None and cancel.is_set())
            if self.more:
                self.upcoming = choose(model(token[None], cache=cache)[:, -1, :])
                mx.async_eval(self.upcoming)
                history.append(token.item())
            self.in_batch = True
            yield Step(token.item(), logprob.item(), read_alternatives(alts), self.more)
            while self.more and not self.speculate:
                assert self.current is not None, "the batch moved this row on before resuming it"
                token, logprob, alts = self.current
                self.produced += 1
                self.more = self.feeding
                if self.more:
                    history.append(token.item())
                yield Step(token.item(), logprob.item(), read_alternatives(alts), self.more)
            self.in_batch = False
            if not self.more:
                return
            choice, self.upcoming = self.upcoming, None  # the runner left it unfed: the rounds start from it

    def _speculate(self, model, cache, pending: Step, history: list[int], cancel):
        """Speculative rounds from `pending` until the answer ends (None) or the runner takes the row back into
        the batch (the next token, unfed)."""
        assert self.guesser is not None
        proposer = self.guesser.proposer(history)
        rounds = speculative.decode_steps(model, cache, pending, history, self.guesser.params, proposer,
                                          self.max_new - self.produced, self.spec_stats, cancel,
                                          hand_over=lambda: not self.speculate)
        while True:
            try:
                step = next(rounds)
            except StopIteration as done:
                return done.value
            self.produced += 1
            self.more = step.fed
            if step.fed:
                history.append(step.token_id)
            yield step


def _step_of(choice: tuple) -> Step:
    token, logprob, alts = choice
    return Step(token.item(), logprob.item(), read_alternatives(alts), False)


def _choice_of(step: Step) -> tuple:
    """A Step back into the (token, logprob, alternatives) arrays a TokenChooser gives."""
    alts = None
    if step.alternatives is not None:
        ids, values = zip(*step.alternatives, strict=True) if step.alternatives else ((), ())
        alts = (mx.array([list(ids)], dtype=mx.int32), mx.array([list(values)]))
    return mx.array([step.token_id], dtype=mx.int32), mx.array(step.logprob), alts


def decode_forward(model, tokens: mx.array, caches: list[list]) -> mx.array:
    """tokens (B, 1), one per sequence, through the model with each sequence's own cache: (B, 1, vocab). One
    sequence takes its plain cache list (every model can), several a RowCaches per layer."""
    if len(caches) == 1:
        return model(tokens, cache=caches[0])
    return model(tokens, cache=row_caches(caches))


class BatchRunner:
    def __init__(self, engine, slots: PromptSlots):
        self._engine = engine  # the Engine: model, adapters, KV bits, disk prefixes (engine thread only)
        self._slots = slots
        self._pending: deque[Request] = deque()
        self._rows: list[Row] = []
        self._turn = 0  # which blend group steps next (round robin)
        self._lock = threading.Lock()
        self._pump_queued = False
        self.guesses = SoloGuesses(engine)  # speculative decoding for a request that runs alone

    def submit(self, request: Request) -> None:
        """From any thread: queue a request and make sure a pump job will see it."""
        with self._lock:
            self._pending.append(request)
            if self._pump_queued:
                return
            self._pump_queued = True
        self._engine.submit(self._pump)

    def fail_all(self, error: BaseException, pending: bool = False) -> None:
        """On the engine thread: the model changed under the rows (or the engine stops: `pending` too), so they
        end with `error`."""
        waiting: list[Request] = []
        if pending:
            with self._lock:
                waiting, self._pending = list(self._pending), deque()
        for request in waiting:
            request.stream._fail(error)
        for row in self._rows:
            self._slots.release(row.slot, keep=False)
            row.request.stream._fail(error)
        self._rows.clear()
        self.guesses.drop()

    # --- the pump (engine thread) -----------------------------------------------------------------
    def _pump(self) -> None:
        try:
            for _ in range(STEPS_PER_JOB):
                self._admit()
                if not self._rows:
                    break
                self._step()
        finally:
            with self._lock:
                again = bool(self._rows or self._pending)
                self._pump_queued = again
            if again:
                self._engine.submit(self._pump)

    def _capacity(self) -> int:
        return MAX_ROWS if self._engine._batchable() else 1

    def _admit(self) -> None:
        while len(self._rows) < self._capacity():
            with self._lock:
                if not self._pending:
                    return
                request = self._pending[0]
                if request.stream.cancelled.is_set():
                    self._pending.popleft()
                    request.stream._put(GenerationResult("", [], "cancelled",
                                                         GenerationStats(prompt_tokens=len(request.tokens))))
                    request.stream._close()
                    continue
                self._pending.popleft()
            self._start(request)

    def _start(self, request: Request) -> None:
        engine, row = self._engine, None
        try:
            loaded = engine._require_model()
            if request.scales is not None:
                engine._swap(dict(request.scales))
            blend = engine._active_blend()
            slot = self._slots.take(blend, request.tokens)
            row = Row(request, slot, blend=blend)
            if slot.cache is None:
                slot.cache, slot.tokens = engine._new_cache(loaded), []
            key = engine._disk_key(loaded)
            found = engine._disk.find(loaded, key, engine.kv_bits, request.tokens,
                                      common_prefix_length(slot.tokens, request.tokens))
            if found is not None:  # a longer prefix on disk than in any slot (e.g. after a restart)
                slot.cache, slot.tokens = found.cache, found.tokens
            row.disk_key = key
            row.guesser = self.guesses.guesser(loaded, request.params, slot.cache)
            row.speculate = row.guesser is not None and self._alone(joining=True)
            stream = request.stream

            def on_prefill(done: int, total: int) -> None:
                stream._put(PrefillProgress(done, total))
                if done:
                    self._step_between_chunks(row)

            row.events = stream_generate(loaded.model, loaded.tokenizer, request.tokens, request.params,
                                         cache=slot.cache, cached=slot.tokens, cancel=stream.cancelled,
                                         on_prefill=on_prefill, decoder=row.decoder)
            self._resume(row)  # prefill and the first token
            if not stream.done:
                self._rows.append(row)
        except BaseException as e:
            if row is not None:
                self._drop(row)
                self._slots.release(row.slot, keep=False)
            request.stream._fail(e)

    def _step_between_chunks(self, joining: Row) -> None:
        """A long prompt is prefilled in chunks (steps.PREFILL_CHUNK): between two of them the running rows take a
        step, so they do not stall for the whole prompt. The joining row's blend is put back before its next chunk
        (its chunks so far are already computed)."""
        if not self._rows:
            return
        self._step()
        if self._engine._active_blend() != joining.blend:
            self._engine._swap(dict(joining.blend))

    def _next_group(self) -> list[Row]:
        """The rows of the blend whose turn it is: blends take turns step by step (in the order their first row
        arrived), so a request under other adapters never waits for a whole batch to finish."""
        blends = list(dict.fromkeys(r.blend for r in self._rows))
        blend = blends[self._turn % len(blends)]
        self._turn += 1
        return [r for r in self._rows if r.blend == blend]

    def _alone(self, joining: bool = False) -> bool:
        """Whether one row runs and none waits (`joining`: the row being started is that one)."""
        with self._lock:
            waiting = bool(self._pending)
        return not waiting and len(self._rows) == (0 if joining else 1)

    def _step(self) -> None:
        """One forward for the rows of one blend that go on in the batch; then each row of the blend reports its
        token (a row decoding speculatively, alone, runs its own round when resumed)."""
        group = self._next_group()
        if self._engine._active_blend() != group[0].blend:
            self._engine._swap(dict(group[0].blend))  # a few array re-points (adapter_swap)
        alone = self._alone()
        for row in group:
            row.speculate = alone and row.guesser is not None
        batched = [r for r in group if r.in_batch and not r.speculate]
        feeding = [r for r in batched if r.more and r.wants_feed()]
        for row in batched:
            row.current, row.feeding = row.upcoming, row in feeding
            row.upcoming = None
        if feeding:
            try:
                model = self._engine._require_model().model
                tokens = mx.concatenate([r.current[0] for r in feeding])[:, None]  # type: ignore[index]
                logits = decode_forward(model, tokens, [r.cache for r in feeding])
                for i, row in enumerate(feeding):
                    row.upcoming = row.choose(logits[i:i + 1, -1, :])  # type: ignore[misc]
                mx.async_eval([r.upcoming for r in feeding])
            except BaseException as e:  # a failed step may have left every row's cache half-updated
                self.fail_all(e)
                return
        for row in group:
            try:
                self._resume(row)
            except BaseException as e:
                self._drop(row)
                self._slots.release(row.slot, keep=False)
                row.request.stream._fail(e)

    def _resume(self, row: Row) -> None:
        """Advance the row's text layer by one token (and to its result, when that was the last)."""
        stream = row.request.stream
        while True:
            event = next(row.events)
            if isinstance(event, GenerationResult) and row.spec_stats.proposed:
                event.stats.draft_proposed = row.spec_stats.proposed
                event.stats.draft_accepted = row.spec_stats.accepted
            stream._put(event)
            if isinstance(event, GenerationResult):
                self._finish(row, event)
                return
            if row.more:
                return

    def _finish(self, row: Row, result: GenerationResult) -> None:
        self._drop(row)
        row.slot.tokens = result.fed_tokens
        engine = self._engine
        loaded = engine._require_model()
        if row.disk_key is not None:
            engine._disk.save_after_prefill(loaded, row.disk_key, result.stats.prefilled_tokens, result.fed_tokens,
                                            row.slot.cache)
        self._slots.release(row.slot, keep=True)
        row.request.stream._close()

    def _drop(self, row: Row) -> None:
        if row in self._rows:
            self._rows.remove(row)

