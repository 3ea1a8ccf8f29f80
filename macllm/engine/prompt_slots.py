"""PromptSlots: a few KV caches kept between one-off requests (the server's), so a conversation's next request
computes only its new tokens.

A client of an OpenAI-style server resends the whole conversation each turn; the cache that served the last turn
already holds its prefix. Each slot remembers the adapter blend its keys/values were computed under (a cache made
under another blend is another model's) and the exact tokens it holds. Only the engine thread touches a pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from macllm.generation.steps import common_prefix_length

DEFAULT_SLOTS = 4  # SmolLM2-135M at 2k tokens: ~190 MB of float32 keys/values per slot


def blend_key(scales: dict[str, float]) -> tuple:
    return tuple(sorted((name, float(weight)) for name, weight in scales.items() if weight != 0))


@dataclass
class Slot:
    blend: tuple
    cache: list | None = None
    tokens: list[int] = field(default_factory=list)
    busy: bool = False  # a running generation is filling it; nobody else may take it


class PromptSlots:
    def __init__(self, size: int = DEFAULT_SLOTS):
        self.size = max(1, size)
        self._slots: list[Slot] = []  # least recently used first

    def take(self, blend: tuple, prompt: list[int]) -> Slot:
        """The free slot under `blend` sharing the longest prefix with `prompt`, or a fresh one; it is busy until
        `release`d. Beyond `size` slots the least recently used free ones are evicted."""
        best, best_len = None, 0
        for slot in self._slots:
            if slot.blend == blend and slot.cache is not None and not slot.busy:
                n = common_prefix_length(slot.tokens, prompt)
                if n > best_len:
                    best, best_len = slot, n
        if best is None:
            best = Slot(blend)
        else:
            self._slots.remove(best)
        self._slots.append(best)  # the most recently used end
        best.busy = True
        self._evict()
        return best

    def release(self, slot: Slot, keep: bool) -> None:
        """The generation is over: keep the slot for reuse, or forget it (its cache may be half-updated)."""
        slot.busy = False
        if not keep and slot in self._slots:
            self._slots.remove(slot)
        self._evict()

    def _evict(self) -> None:
        for slot in [s for s in self._slots if not s.busy]:
            if len(self._slots) <= self.size:
                return
            self._slots.remove(slot)

    def clear(self) -> None:
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)
