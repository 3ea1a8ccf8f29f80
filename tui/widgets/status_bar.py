"""The bottom status line: model, speed, speculative guesses kept, time to first token, context use, memory."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class StatusBar(Static):
    model = reactive("loading…")
    decode_tps = reactive(0.0)
    ttft_ms = reactive(0.0)
    acceptance = reactive(-1.0)  # share of speculative guesses the model kept in the last answer; -1: none made
    context_used = reactive(0)
    context_length = reactive(0)
    memory_mb = reactive(0.0)
    state = reactive("")
    adapters = reactive("")
    notes = reactive("")

    def render(self) -> str:
        parts = [self.model + (f" + {self.adapters}" if self.adapters else "")]
        if self.notes:
            parts.append(self.notes)
        if self.state:
            parts.append(self.state)
        if self.decode_tps:
            parts.append(f"{self.decode_tps:.1f} tok/s")
        if self.acceptance >= 0:
            parts.append(f"guesses {100 * self.acceptance:.0f}% kept")
        if self.ttft_ms:
            parts.append(f"first token {self.ttft_ms:.0f} ms")
        if self.context_length:
            parts.append(f"context {self.context_used}/{self.context_length}")
        if self.memory_mb:
            parts.append(f"{self.memory_mb:.0f} MB")
        return "  │  ".join(parts)
