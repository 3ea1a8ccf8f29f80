"""The command palette (Ctrl+P): every keymap action marked for it, of the app and of the screen shown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.keymap import KEYMAP, display


class MacllmCommands(Provider):
    def _all(self) -> Iterator[tuple[str, str, Callable]]:
        screen = self.screen  # the screen the palette was opened on
        scope = getattr(screen, "SCOPE", None)  # screens name their keymap scope; Textual's own do not
        for key in KEYMAP:
            if not key.palette or key.scope not in ("app", scope):
                continue
            target = self.app if key.scope == "app" else screen
            does = key.does.replace("*", "")  # Markdown emphasis is for the help screen
            help_text = does[:1].upper() + does[1:] + (f" ({display(key.keys)})" if key.keys else "")
            yield key.palette_title, help_text, partial(target.run_action, key.action)

    async def discover(self) -> Hits:
        for title, help_text, run in self._all():
            yield DiscoveryHit(title, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self._all():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, help=help_text)
