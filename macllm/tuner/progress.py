"""How training reports itself: JSON lines on stdout (--json; the TUI reads these) or a terminal bar.

Events (stable; documented in docs/training.md): start, step, eval, checkpoint, stopped, done, error.
"""

from __future__ import annotations

import json
import sys
import time


class JsonEvents:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, event: dict) -> None:
        self.stream.write(json.dumps({**event, "time": round(time.time(), 3)}) + "\n")
        self.stream.flush()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class TerminalProgress:
    """One redrawn line: bar, step, ETA, loss, tok/s, memory; evals and checkpoints on lines of their own."""

    def __init__(self, stream=None, width: int = 28):
        self.stream = stream or sys.stderr
        self.width = width
        self.val = None
        self.live = False

    def _line(self, text: str) -> None:
        if self.live:
            self.stream.write("\n")
            self.live = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            d = event["data"]
            self._line(f"Training {event['adapter']} on {event['model']}: {d['train_chunks']} chunks from "
                       f"{d.get('train_files', d['files'])} file(s), {d['train_tokens']} tokens; "
                       f"{event['total_iters']} steps" + (f" (resuming at {event['resumed_from']})"
                                                          if event.get("resumed_from") else ""))
        elif kind == "step":
            done = event["iteration"] / event["total"]
            filled = int(done * self.width)
            bar = "█" * filled + "░" * (self.width - filled)
            val = f" val {self.val:.3f}" if self.val is not None else ""
            self.stream.write(f"\r{bar} {event['iteration']}/{event['total']} ETA {_clock(event['eta_s'])} "
                              f"loss {event['train_loss']:.3f}{val} {event['tokens_per_sec']:.0f} tok/s "
                              f"{event['peak_memory_mb']:.0f} MB ")
            self.stream.flush()
            self.live = True
        elif kind == "eval":
            self.val = event["val_loss"]
            self._line(f"  validation loss {event['val_loss']:.3f} (perplexity {event['val_ppl']:.2f}) "
                       f"at step {event['iteration']}")
        elif kind == "checkpoint":
            self._line(f"  checkpoint at step {event['iteration']}: {event['path']}")
        elif kind == "stopped":
            self._line(f"Stopped at step {event['iteration']}; checkpoint kept in {event['checkpoint']}. "
                       f"Continue with --resume.")
        elif kind == "done":
            s = event["summary"]
            ppl = ""
            if s.get("val_ppl_before") is not None:
                ppl = f", validation perplexity {s['val_ppl_before']:.2f} -> {s['val_ppl_after']:.2f}"
            self._line(f"Done: {event['adapter']} ({s['steps']} steps in {_clock(s['time_s'])}, "
                       f"train loss {s['train_loss']}{ppl})")
        # "error": the command prints it as its one-line error.
