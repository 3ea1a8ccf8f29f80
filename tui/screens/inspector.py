"""The token inspector: the last answer's tokens, coloured by the probability each had when sampled,
with the top alternatives for the selected one. Tokens that speculative decoding guessed and the model
kept are underlined."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from tui.keymap import bindings


def probability_colour(p: float) -> str:
    """Red (a guess) through yellow to green (confident)."""
    p = max(0.0, min(1.0, p))
    red = int(200 * (1 - p) + 30)
    green = int(170 * p + 40)
    return f"rgb({red},{green},60)"


def visible_piece(piece: str) -> str:
    """Make token boundaries and whitespace visible."""
    return piece.replace(" ", "·").replace("\n", "↵\n").replace("\t", "→") or "∅"


class TokenStrip(Static):
    def __init__(self, tokens: list, pieces: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.tokens = tokens
        self.pieces = pieces
        self.selected = 0

    def render(self) -> Text:
        text = Text()
        for i, (event, piece) in enumerate(zip(self.tokens, self.pieces, strict=True)):
            p = math.exp(event.logprob)
            style = f"black on {probability_colour(p)}"
            if event.drafted:
                style += " underline"
            if i == self.selected:
                style += " bold underline reverse"
            text.append(visible_piece(piece), style=style)
            if not piece.endswith("\n"):  # a gap between tokens, but no stray indent on the next line
                text.append(" ")
        return text


class TokenInspector(ModalScreen):
    SCOPE = "inspector"
    BINDINGS = bindings(SCOPE)

    def __init__(self, tokens: list, tokenizer) -> None:
        super().__init__(classes="dialog-screen")
        self.tokens = tokens
        self.tokenizer = tokenizer
        self.pieces = [tokenizer.piece(e.token_id) for e in tokens]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog inspector"):
            drafted = sum(1 for e in self.tokens if e.drafted)
            kept = f", {drafted} underlined: guessed by speculative decoding and kept" if drafted else ""
            yield Label(f"Token inspector — {len(self.tokens)} tokens{kept} (←/→ to move, Esc to close)",
                        classes="dialog-title")
            with VerticalScroll(id="strip-scroll"):
                yield TokenStrip(self.tokens, self.pieces, id="strip")
            yield Label("", id="token-detail")
            yield DataTable(id="alternatives", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("rank", "token", "id", "probability")
        self.show_selected()

    @property
    def strip(self) -> TokenStrip:
        return self.query_one(TokenStrip)

    def action_move(self, step: int) -> None:
        self.strip.selected = max(0, min(len(self.tokens) - 1, self.strip.selected + step))
        self.show_selected()

    def action_jump(self, index: int) -> None:
        self.strip.selected = index % len(self.tokens)
        self.show_selected()

    def show_selected(self) -> None:
        i = self.strip.selected
        event = self.tokens[i]
        self.strip.refresh()
        self.query_one("#token-detail", Label).update(
            f"#{i + 1}: {visible_piece(self.pieces[i])!r}  id {event.token_id}  "
            f"p = {math.exp(event.logprob):.3f}" + ("  · a kept guess" if event.drafted else ""))
        table = self.query_one(DataTable)
        table.clear()
        alternatives = sorted(event.alternatives or [], key=lambda a: -a[1])
        for rank, (token_id, logprob) in enumerate(alternatives, 1):
            mark = " ◀ chosen" if token_id == event.token_id else ""
            table.add_row(str(rank), visible_piece(self.tokenizer.piece(token_id)) + mark, str(token_id),
                          f"{math.exp(logprob):.3f}")
