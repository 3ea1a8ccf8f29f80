"""What the app knows beyond one chat, in one place: set from `macllm chat`'s options, then read and
changed by the screens (which get this object, not the app's attributes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from macllm.hub.catalog import DEFAULT_MODEL


@dataclass
class AppState:
    model_source: str = DEFAULT_MODEL  # what new chats use; each chat's settings may name another
    keep_quantized: bool = False  # `chat --keep-quantized`: compute with the stored quantized weights
    kv_bits: int | None = None  # `chat --kv-bits`: the caches of every model loaded in this app
    chat_defaults: dict = field(default_factory=dict)  # a new chat's settings (`chat --temp` ...)
    startup_adapters: list[tuple[str, str, float]] = field(default_factory=list)  # (ref, name, scale), once
    notes_mode: bool = False  # answers come from the notes index, with citations
    notes_index: str | None = None  # None: the default index "notes"
    notes_folder: str | None = None  # the folder last indexed (the train screen starts there too)
    trained_adapter: str | None = None  # set when a run on the train screen finishes; F3 swaps it in
