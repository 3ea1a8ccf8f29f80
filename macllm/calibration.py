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

from macllm.errors import MacllmError

CHUNK = 512
TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".rst")


class _Recorder(nn.Module):
    """Wraps a layer; adds the squares of its inputs to a shared tally on the way through."""

    def __init__(self, inner: nn.Module, key: str, tally: dict):
        super().__init__()
        self.inner = inner
        self._key, self._tally = key, tally

    def __call__(self, x):
        _record(self._tally, self._key, x)
        return self.inner(x)


def _record(tally: dict, key: str, x: mx.array) -> None:
    flat = x.astype(mx.float32).reshape(-1, x.shape[-1])
    squares, count = tally.get(key, (0.0, 0))
    tally[key] = (squares + mx.square(flat).sum(axis=0), count + flat.shape[0])


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
    from mlx.utils import tree_unflatten

    from macllm.cache import make_cache

    tally: dict = {}
    wrapped = [(name, _Recorder(layer, name, tally)) for name, layer in model.named_modules()
               if isinstance(layer, nn.Linear) and name != "lm_head"]
    model.update_modules(tree_unflatten(wrapped))
    head = "model.embed_tokens" if tied_embeddings else "lm_head"
    for start in range(0, len(token_ids), CHUNK):
        chunk = mx.array(token_ids[start:start + CHUNK])[None]
        hidden = model.model(chunk, make_cache(model))  # the body: the final norm's output, no logits
        _record(tally, head, hidden)
        mx.eval([squares for squares, _ in tally.values()])
    return {key: squares / count for key, (squares, count) in tally.items()}
