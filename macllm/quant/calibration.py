"""How much each input column of each matrix matters, measured on calibration text.

The float model reads the text once; every linear layer records the mean squared value of each input
feature. A quantizer that weights its rounding error by these numbers spends its precision where the
activations are large (llama.cpp calls the same statistic an importance matrix). The output head sees the
final hidden state; when the head is tied to the embedding, the embedding matrix gets that importance.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from macllm.cache import make_cache
from macllm.errors import MacllmError

CHUNK = 512
TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".rst")


class _Recorder(nn.Module):
    """Wraps a layer; adds its inputs' second moments to a shared tally on the way through."""

    def __init__(self, inner: nn.Module, key: str, tally: "_Tally"):
        super().__init__()
        self.inner = inner
        self._key, self._tally = key, tally

    def __call__(self, x):
        self._tally.record(self._key, x)
        return self.inner(x)


class _Tally:
    """Per layer: the sum of x*x per input column, and how many rows went in."""

    def __init__(self):
        self.sums: dict[str, mx.array] = {}
        self.counts: dict[str, int] = {}
        # q/k/v (and gate/up) read the very same input array: compute its moment once. The input is
        # kept alongside, so its id cannot be reused by another array before settle().
        self._seen: dict[int, tuple[mx.array, mx.array]] = {}

    def record(self, key: str, x: mx.array) -> None:
        seen = self._seen.get(id(x))
        if seen is None:
            flat = x.astype(mx.float32).reshape(-1, x.shape[-1])
            seen = self._seen[id(x)] = (x, mx.square(flat).sum(axis=0))
        moment = seen[1]
        self.sums[key] = self.sums[key] + moment if key in self.sums else moment
        self.counts[key] = self.counts.get(key, 0) + x.size // x.shape[-1]

    def settle(self) -> None:
        mx.eval(list(self.sums.values()))
        self._seen.clear()

    def means(self) -> dict[str, mx.array]:
        return {key: total / self.counts[key] for key, total in self.sums.items()}


def read_calibration_text(path: Path) -> str:
    """A text file, or every text/markdown file under a folder (sorted, hidden ones skipped)."""
    path = Path(path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        raise MacllmError(f"calibration text {path} does not exist; give a text file or a folder of notes")
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    if not text.strip():
        raise MacllmError(f"no text found in {path} to calibrate with; give a text file or a folder of notes")
    return text


def activation_importance(model: nn.Module, token_ids: list[int], tied_embeddings: bool) -> dict[str, mx.array]:
    """Mean squared input per column, keyed by layer path ("model.layers.0.mlp.down_proj", "lm_head" or
    "model.embed_tokens" for a tied head). The model is changed (layers wrapped): use a throwaway copy."""
    tally = _Tally()
    wrapped = [(name, _Recorder(layer, name, tally)) for name, layer in model.named_modules()
               if isinstance(layer, nn.Linear) and name != "lm_head"]
    model.update_modules(tree_unflatten(wrapped))
    head = "model.embed_tokens" if tied_embeddings else "lm_head"
    for start in range(0, len(token_ids), CHUNK):
        chunk = mx.array(token_ids[start:start + CHUNK])[None]
        hidden = model.model(chunk, make_cache(model))  # the body: the final norm's output, no logits
        tally.record(head, hidden)
        tally.settle()
    return tally.means()
