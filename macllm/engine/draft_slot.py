"""The draft model of speculative decoding, held for the engine thread: loaded when a generation first names
it (or by `Engine.load_draft`), kept while the same name comes back, and checked once against each main model
it drafts for, since guesses in another vocabulary are noise. It runs bare: adapters belong to the main model.
"""

from __future__ import annotations

from dataclasses import replace

from macllm.errors import MacllmError
from macllm.generation.speculative import same_vocabulary
from macllm.loaded import LoadedModel
from macllm.quant.narrow import DRAFT_BITS, narrow_to_bits


class DraftSlot:
    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None  # replaced whole, so other threads may read its info
        self.source: str | None = None
        self._fits: LoadedModel | None = None  # the main model the draft was last checked against

    def ensure(self, source: str, target: LoadedModel, keep_quantized: bool = False) -> tuple[LoadedModel, bool]:
        """The draft named `source`, loaded if it is not the one held, checked against `target`.
        Returns (draft, whether it is another draft than before). Engine thread only."""
        changed = source != self.source or self.loaded is None
        if changed:
            # Start-up time: the loader is imported on first use, as Engine.load does.
            from macllm.loader import load_model

            try:
                loaded = load_model(source, keep_quantized=keep_quantized, progress=False)
            except MacllmError as e:
                raise MacllmError(f"draft model: {e}") from None
            self.loaded, self.source, self._fits = narrowed_for_drafting(loaded), source, None
        assert self.loaded is not None
        if self._fits is not target:
            check_vocabulary(self.loaded, target, source)
            self._fits = target
        return self.loaded, changed

    def drop(self) -> bool:
        held = self.loaded is not None
        self.loaded = self.source = self._fits = None
        return held


def narrowed_for_drafting(draft: LoadedModel) -> LoadedModel:
    """The draft with its layers stored wider than 4 bits re-quantized to 4 (macllm/quant/narrow.py): fewer
    bytes per guess; the main model still checks every token, so the output is unchanged."""
    if narrow_to_bits(draft.model) == 0:
        return draft
    return replace(draft, info=replace(draft.info, compute=f"{draft.info.compute}, narrowed to {DRAFT_BITS}-bit "
                                                           "for drafting"))


def check_vocabulary(draft: LoadedModel, target: LoadedModel, source: str) -> None:
    if same_vocabulary(draft.tokenizer, target.tokenizer):
        return
    n, m = draft.tokenizer.vocab_size, target.tokenizer.vocab_size
    how = f"{n} tokens against {m}" if n != m else f"the same size ({n}) with other tokens"
    raise MacllmError(f"the draft model {source} has another vocabulary than {target.info.source} ({how}); "
                      "a draft must use the model's tokenizer, e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b")
