"""A live loss plot: training loss per step and validation loss per evaluation, as two sparklines."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

MAX_POINTS = 240  # older points are averaged away so the plot keeps its width


def _squeeze(values: list[float]) -> list[float]:
    """Halve a long series by averaging neighbours (keeps the shape, bounds the cost of redrawing)."""
    return [sum(values[i:i + 2]) / len(values[i:i + 2]) for i in range(0, len(values), 2)]


class LossPlot(Vertical):
    DEFAULT_CSS = """
    LossPlot { height: auto; }
    LossPlot Sparkline { height: 3; margin: 0 0 1 0; }
    LossPlot .plot-label { color: $text-muted; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train: list[float] = []
        self.val: list[float] = []

    def compose(self) -> ComposeResult:
        yield Label("train loss", id="train-label", classes="plot-label")
        yield Sparkline([], id="train-plot")
        yield Label("validation loss", id="val-label", classes="plot-label")
        yield Sparkline([], id="val-plot")

    def reset(self) -> None:
        self.train, self.val = [], []
        self._redraw()

    def add_train(self, loss: float) -> None:
        self.train.append(loss)
        if len(self.train) > MAX_POINTS:
            self.train = _squeeze(self.train)
        self._redraw()

    def add_val(self, loss: float) -> None:
        self.val.append(loss)
        self._redraw()

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        self.query_one("#train-plot", Sparkline).data = list(self.train)
        self.query_one("#val-plot", Sparkline).data = list(self.val)
        last_train = f" {self.train[-1]:.3f}" if self.train else ""
        last_val = f" {self.val[-1]:.3f} (best {min(self.val):.3f})" if self.val else ""
        self.query_one("#train-label", Label).update(f"train loss{last_train}")
        self.query_one("#val-label", Label).update(f"validation loss{last_val}")
