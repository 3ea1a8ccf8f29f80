"""Where adapters live and which base they fit.

Two places: the user's store $MACLLM_HOME/adapters/<name>/ and the `adapters/` folder shipped in the
repository (examples). A name is looked up in that order; an existing folder path also works.
The fingerprint says which base shapes an adapter needs, so one made for another model is refused
with a clear error instead of a shape error deep in a matmul.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.lora import formats
from macllm.models.implementation import MLX_LM_LABEL, implementation
from macllm.paths import adapters_dir
from macllm.tuner.data import notes_changed_since

BUNDLED = Path(__file__).resolve().parents[2] / "adapters"


def fingerprint(cfg: ModelConfig) -> str:
    """Architecture, width, depth, vocab and a hash of the projection shapes: equal for the same base
    whatever its file (GGUF or folder, quantized or not)."""
    if implementation(cfg.model_type) == MLX_LM_LABEL:
        return _family_fingerprint(cfg)
    hd, heads, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    d, f = cfg.hidden_size, cfg.intermediate_size
    shapes = [(heads * hd, d), (kv * hd, d), (kv * hd, d), (d, heads * hd), (f, d), (f, d), (d, f)]
    digest = hashlib.sha256(json.dumps([cfg.model_type, shapes, cfg.tie_word_embeddings]).encode()).hexdigest()
    return f"{cfg.model_type}-d{d}-l{cfg.num_hidden_layers}-v{cfg.vocab_size}-{digest[:8]}"


def _family_fingerprint(cfg: ModelConfig) -> str:
    """mlx-lm's families name their sizes their own way: hash every integer (and list) setting of the config
    but token ids, which is what shapes the tensors, and nothing quantization or dtype changes."""
    raw = cfg.extra if cfg.extra.get("model_type") == cfg.model_type else cfg.to_hf_dict()
    shaping = sorted((k, v) for k, v in raw.items() if not k.endswith(("token_id", "token_ids"))
                     and k != "architectures" and (type(v) is int or isinstance(v, list)))
    digest = hashlib.sha256(json.dumps([cfg.model_type, shaping]).encode()).hexdigest()
    return f"{cfg.model_type}-d{cfg.hidden_size}-l{cfg.num_hidden_layers}-v{cfg.vocab_size}-{digest[:8]}"


def search_dirs() -> list[Path]:
    return [adapters_dir(), BUNDLED]


def resolve(ref: str | Path) -> Path:
    """A folder path, or a name in the user's store or the bundled examples."""
    path = Path(ref).expanduser()
    if path.is_dir() and (path / formats.CONFIG).exists():
        return path
    name = str(ref)
    if "/" not in name and name not in ("", ".", ".."):
        for folder in search_dirs():
            if (folder / name).is_dir():
                return folder / name
    if path.is_dir():
        return path  # read_adapter names what is missing
    known = ", ".join(sorted({r["name"] for r in list_adapters()})) or "none installed"
    raise MacllmError(f"no adapter named {ref!r} (known: {known}; see `macllm adapters list`)")


def list_adapters() -> list[dict]:
    """One row per adapter folder; a damaged one is listed with its problem instead of failing."""
    rows, seen = [], set()
    for where, folder in (("user", adapters_dir()), ("bundled", BUNDLED)):
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if path.name in seen or not (path / formats.CONFIG).exists():
                continue
            seen.add(path.name)
            rows.append(describe(path, where))
    return rows


def describe(path: Path, where: str = "") -> dict:
    row = {"name": path.name, "where": where, "path": str(path),
           "size_bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file())}
    try:
        a = formats.read_adapter(path)
    except MacllmError as e:
        row["error"] = str(e)
        return row
    layers = a.layer_indices
    row.update({"base_model": a.base_model, "base_fingerprint": a.base_fingerprint, "rank": a.rank,
                "scale": a.scale, "format": a.format, "layers": _span(layers), "num_layers": len(layers),
                "keys": a.keys, "created": a.created, "training": a.training})
    data = (a.training or {}).get("data")
    if isinstance(data, dict):
        row["notes_changed"] = notes_changed_since(data)  # None: unknown (not a notes folder, or gone)
    return row


def _span(layers: list[int]) -> str:
    if not layers:
        return "-"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))
