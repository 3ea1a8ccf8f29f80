"""The engine's side of the prompt cache (macllm/prompt_cache): the key for the model, adapter blend and KV bits
in use, and when to look up and save. Runs on the engine thread, like everything that touches the caches.

When: a generation first looks for a file sharing a longer prefix with its prompt than the cache in memory
does (a restart, a reopened chat, a repeated system prompt). It saves its cache after a prefill of at least
`min_tokens` new tokens (the wait worth sparing next time), and a conversation is saved when it is closed or
the engine stops, if it grew by MIN_GAIN tokens since it was last saved. Never per token.
"""

from __future__ import annotations

import weakref

from macllm.cache import cache_length, trim_cache
from macllm.generation.speculative import DraftModel
from macllm.generation.steps import common_prefix_length
from macllm.loaded import LoadedModel
from macllm.lora.manager import AdapterManager
from macllm.lora.store import fingerprint
from macllm.prompt_cache import PromptCache
from macllm.prompt_cache.key import arrays_digest, make_key, model_fingerprint
from macllm.prompt_cache.store import MIN_GAIN, Found


class DiskPrefixes:
    def __init__(self, store: PromptCache):
        self.store = store
        # id(LoadedModel) -> (weak reference, fingerprint): the main model and a speculative draft both have keys.
        self._models: dict[int, tuple[weakref.ref, str]] = {}
        self._digests: dict[int, tuple[weakref.ref, str]] = {}  # id(adapter) -> (weak reference, digest of arrays)

    def key(self, loaded: LoadedModel, adapters: AdapterManager | None, kv_bits: int | None) -> dict:
        """The key of what the engine computes now ({} while the cache is off: nothing is read or written)."""
        if not self.store.enabled:
            return {}
        held = self._models.get(id(loaded))
        if held is None or held[0]() is not loaded:
            self._models = {i: m for i, m in self._models.items() if m[0]() is not None}
            held = self._models[id(loaded)] = (weakref.ref(loaded),
                                               model_fingerprint(loaded.info, fingerprint(loaded.config)))
        blend = []
        for name, weight in sorted((adapters.active if adapters is not None else {}).items()):
            adapter = adapters.loaded[name]  # type: ignore[union-attr]
            digest = self._digests.get(id(adapter))
            if digest is None or digest[0]() is not adapter:
                self._digests = {i: d for i, d in self._digests.items() if d[0]() is not None}
                digest = self._digests[id(adapter)] = (weakref.ref(adapter), arrays_digest(adapter.weights))
            blend.append([name, float(weight), adapter.scale, digest[1]])
        return make_key(held[1], blend, kv_bits)

    def find(self, loaded: LoadedModel, key: dict, kv_bits: int | None, prompt: list[int],
             have: int) -> Found | None:
        try:
            return self.store.find(loaded.model, kv_bits, key, prompt, have)
        except Exception as e:  # noqa: BLE001  the cache only spares time: a failure there must not fail an answer
            self.store.note(f"the prompt cache could not be read: {type(e).__name__}: {e}")
            return None

    def save_after_prefill(self, loaded: LoadedModel, key: dict, prefilled: int, tokens: list[int],
                           cache: list) -> bool:
        return prefilled >= self.store.min_tokens and self._save(loaded, key, tokens, cache)

    def save_grown(self, loaded: LoadedModel, key: dict, saved: int, tokens: list[int], cache: list) -> bool:
        return len(tokens) - saved >= MIN_GAIN and self._save(loaded, key, tokens, cache)

    def _save(self, loaded: LoadedModel, key: dict, tokens: list[int], cache: list) -> bool:
        try:
            return self.store.save(key, loaded.info.source, tokens, cache) is not None
        except Exception as e:  # noqa: BLE001  as in find
            self.store.note(f"the prompt cache could not be saved: {type(e).__name__}: {e}")
            return False

    # A speculative draft's own cache (bare model: no adapters), looked up and saved beside the main model's.
    def resume_draft(self, loaded: LoadedModel, kv_bits: int | None, draft: DraftModel, prompt: list[int]) -> int:
        """Restore the draft's cache from disk if that spares it reading; returns how many tokens it must read."""
        key = self.key(loaded, None, kv_bits)
        have = common_prefix_length(draft.cached, prompt)
        found = self.find(loaded, key, kv_bits, prompt, have) if key else None
        if found is not None:
            draft.cache, draft.cached, have = found.cache, found.tokens, len(found.tokens)
        return len(prompt) - have

    def save_draft(self, loaded: LoadedModel, kv_bits: int | None, draft: DraftModel, read: int) -> None:
        key = self.key(loaded, None, kv_bits)
        if not key or read < self.store.min_tokens:
            return
        extra = cache_length(draft.cache) - len(draft.cached)  # guesses past what it holds for sure
        if extra < 0 or not trim_cache(draft.cache, extra):
            return
        self._save(loaded, key, draft.cached, draft.cache)
