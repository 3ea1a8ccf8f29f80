"""The engine: one thread owns a model and every MLX call for it; callers get futures and token streams."""

from macllm.engine.conversation import ConversationView
from macllm.engine.core import Engine
from macllm.engine.token_stream import PrefillProgress, TokenStream

__all__ = ["ConversationView", "Engine", "PrefillProgress", "TokenStream"]
