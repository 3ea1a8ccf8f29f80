"""A chat conversation: its messages plus the KV cache of the tokens the model has already seen."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # What the KV cache holds, token for token; the next turn reuses the common prefix.
    cache: list | None = None
    cached_tokens: list[int] = field(default_factory=list)

    def template_messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def invalidate_cache(self) -> None:
        """Forget cached keys/values (e.g. they were computed under other adapters)."""
        self.cache = None
        self.cached_tokens = []
