"""A chat conversation: its messages plus the KV cache of the tokens the model has already seen.

Only the engine thread holds a Conversation; callers get a ConversationView, a copy taken on that thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


def new_conversation_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    id: str = field(default_factory=new_conversation_id)
    # What the KV cache holds, token for token; the next turn reuses the common prefix.
    cache: list | None = None
    cached_tokens: list[int] = field(default_factory=list)
    # The draft model's cache and tokens when answers are decoded speculatively (generation/speculative.py).
    draft_cache: list | None = None
    draft_cached_tokens: list[int] = field(default_factory=list)
    saved_tokens: int = 0  # how many of cached_tokens the prompt cache on disk holds (engine/disk_prefix.py)

    def template_messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [_template_message(m) for m in self.messages]

    def invalidate_cache(self) -> None:
        """Forget cached keys/values (e.g. they were computed under other adapters)."""
        self.cache = None
        self.cached_tokens = []
        self.drop_draft_cache()

    def drop_draft_cache(self) -> None:
        self.draft_cache = None
        self.draft_cached_tokens = []
        self.saved_tokens = 0

    def view(self) -> "ConversationView":
        return ConversationView(self.id, self.system, [dict(m) for m in self.messages], len(self.cached_tokens))


def _template_message(message: dict) -> dict:
    """What a chat template is given of a message. An answer's thinking travels as `reasoning_content`, the
    field reasoning templates read (Qwen3's drops it for turns before the last question, as it drops a
    <think> block left in the content); templates that do not know the field ignore it."""
    out = {"role": message["role"], "content": message["content"]}
    if message.get("reasoning_content"):
        out["reasoning_content"] = message["reasoning_content"]
    return out


@dataclass(frozen=True)
class ConversationView:
    """A conversation as it stood when asked for: changing it changes nothing in the engine."""

    id: str
    system: str | None
    messages: list[dict]
    context_used: int  # tokens its KV cache holds
