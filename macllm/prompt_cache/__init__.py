"""A prompt cache that survives restarts: KV caches of long prefixes saved under $MACLLM_HOME/cache/."""

from macllm.prompt_cache.limit import given_limit_bytes, resolve_limit_bytes
from macllm.prompt_cache.store import PromptCache

__all__ = ["PromptCache", "given_limit_bytes", "resolve_limit_bytes"]
