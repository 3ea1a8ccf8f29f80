"""Speculative decoding for the engine's one-off requests (the server's, engine/batch.py). A request that asks for
a draft model or prompt lookup decodes speculatively while it is the only one running: a round checks its
guesses in one forward pass of its own. With other requests running it decodes in the batch, whose shared
forward serves every row one token at a time (guesses would need passes of their own, and reading the weights
once for all rows is the saving there); it goes back to guessing when it is alone again.
"""

from __future__ import annotations

from typing import Callable

from macllm.generation.params import GenerationParams
from macllm.generation.speculative import DraftModel, LookupProposer, Proposer, check_rewindable, rewindable
from macllm.loaded import LoadedModel


class Guesser:
    """What one request guesses with: `proposer(history)` gives a proposer ready to go on after `history` (the
    tokens in the request's cache), each time the request starts speculating."""

    def __init__(self, params: GenerationParams, make: Callable[[list[int]], Proposer]):
        self.params = params
        self._make = make

    def proposer(self, history: list[int]) -> Proposer:
        return self._make(history)


class SoloGuesses:
    """Makes each request's Guesser and owns the draft model's cache for them: one request speculates at a time,
    so one cache serves, and the next request that starts like the last (a chat resent whole) reuses it."""

    def __init__(self, engine):
        self._engine = engine  # for the draft model (Engine._ensure_draft) and the KV bits; engine thread only
        self._draft: DraftModel | None = None
        self._draft_bits: int | None = None

    def guesser(self, loaded: LoadedModel, params: GenerationParams, cache: list) -> Guesser | None:
        """None when the request asks for no guesses, or cannot take them (a constraint: see stream._proposer;
        prompt lookup on a cache that cannot step back). A draft the model cannot take is refused in one line."""
        if not (params.draft_model or params.prompt_lookup) or params.constraint is not None:
            return None
        if not params.draft_model:
            return Guesser(params, lambda history: LookupProposer()) if rewindable(cache) else None
        check_rewindable(cache, "this model")
        drafting = self._engine._ensure_draft(params.draft_model, loaded)  # another vocabulary: refused now

        def make(history: list[int]) -> Proposer:
            draft = self._draft_for(drafting)
            draft.start(history, params, loaded.config.vocab_size)
            check_rewindable(draft.cache, "the draft model")
            return draft

        return Guesser(params, make)

    def _draft_for(self, drafting: LoadedModel) -> DraftModel:
        bits = self._engine.kv_bits
        if self._draft is None or self._draft.model is not drafting.model or self._draft_bits != bits:
            self._draft, self._draft_bits = DraftModel(drafting.model, drafting.tokenizer, kv_bits=bits), bits
        return self._draft

    def drop(self) -> None:
        """Forget the draft's cache (the draft or the model changed)."""
        self._draft = None
