"""The engine's side of the prompt cache (macllm/prompt_cache): the key for the model, adapter blend and KV bits
in use, and when to look up and save. Runs on the engine thread, like everything that touches the caches.

When: a generation first looks for a file sharing a longer prefix with its prompt than the cache in memory
does (a restart, a reopened chat, a repeated system prompt). It saves its cache after a prefill of at least
`min_tokens` new tokens (the wait worth sparing next time), and a conversation is saved when it is closed or
the engine stops, if it grew by MIN_GAIN tokens since it was last saved. Never per token.
"""

from __future__ import annotations

from macllm.loaded import LoadedModel
from macllm.lora.manager import AdapterManager
from macllm.lora.store import fingerprint
from macllm.prompt_cache import PromptCache
from macllm.prompt_cache.key import arrays_digest, make_key, model_fingerprint
from macllm.prompt_cache.store import MIN_GAIN, Found


class DiskPrefixes:
    def __init__(self, store: PromptCache):
        self.store = store
        self._model: tuple[int, str] | None = None  # (id of the LoadedModel, its fingerprint)
        self._digests: dict[int, tuple[object, str]] = {}  # id(adapter) -> (adapter, digest); held to keep ids

    def key(self, loaded: LoadedModel, adapters: AdapterManager | None, kv_bits: int | None) -> dict:
        """The key of what the engine computes now ({} while the cache is off: nothing is read or written)."""
        if not self.store.enabled:
            return {}
        if self._model is None or self._model[0] != id(loaded):
            self._model = (id(loaded), model_fingerprint(loaded.info, fingerprint(loaded.config)))
            self._digests.clear()
            self.store.forget_model()
        blend = []
        for name, weight in sorted((adapters.active if adapters is not None else {}).items()):
            adapter = adapters.loaded[name]  # type: ignore[union-attr]
            held = self._digests.get(id(adapter))
            if held is None or held[0] is not adapter:
                held = self._digests[id(adapter)] = (adapter, arrays_digest(adapter.weights))
            blend.append([name, float(weight), adapter.scale, held[1]])
        return make_key(self._model[1], blend, kv_bits)

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
