"""A prompt cache that survives restarts: KV caches of long prefixes saved under $MACLLM_HOME/cache/."""

from macllm.prompt_cache.limit import resolve_limit_bytes
from macllm.prompt_cache.store import PromptCache

__all__ = ["PromptCache", "resolve_limit_bytes"]
