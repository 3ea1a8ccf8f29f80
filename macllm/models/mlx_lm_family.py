"""Every architecture we do not implement ourselves, through mlx-lm's own model classes.

`build(cfg)` makes mlx-lm's `Model` for the config (its sanitize, its make_cache, its parameter names, so
mlx-community folders and mlx-lm adapters fit as saved) as a subclass that also is what our code expects of
a model (see `base.CausalLM`): `__call__(tokens, cache, last_only)`, `make_cache(kv_bits)`, `num_layers`,
`config`. Its caches are mlx-lm's, each seen through `MlxLmLayerCache` (our `LayerCache`); the model hands
mlx-lm the inner caches, so mlx-lm's attention code sees exactly the types it made.
"""

from __future__ import annotations

import copy
import sys

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import cache as mlx_lm_cache
from mlx_lm.utils import _get_classes

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.models.implementation import MLX_LM_LABEL

KV_GROUP_SIZES = (64, 32)  # mx.quantize's group must divide the head width
# Other names mlx-lm's families give our training targets (fused projections count for each part).
_SYNONYMS = {"q_proj": {"wq", "query", "qkv_proj", "query_key_value", "wqkv", "Wqkv", "c_attn"},
             "k_proj": {"wk", "key", "qkv_proj", "query_key_value", "wqkv", "Wqkv", "c_attn"},
             "v_proj": {"wv", "value", "qkv_proj", "query_key_value", "wqkv", "Wqkv", "c_attn"},
             "o_proj": {"wo", "dense", "out_proj"},
             "gate_proj": {"w1", "gate_up_proj", "c_fc", "fc1", "dense_h_to_4h"},
             "up_proj": {"w3", "gate_up_proj", "c_fc", "fc1", "dense_h_to_4h"},
             "down_proj": {"w2", "c_proj", "fc2", "dense_4h_to_h"}}


def _arrays(tree) -> list[mx.array]:
    """Every array inside an mlx-lm cache state (tuples of arrays, ints and None, or lists of them)."""
    if isinstance(tree, mx.array):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [a for item in tree for a in _arrays(item)]
    return []


class MlxLmLayerCache:
    """One mlx-lm cache through our LayerCache protocol. `offset` is counted here (the model adds every
    call's length) because recurrent caches (ArraysCache) keep no position count of their own."""

    def __init__(self, inner, on_refused_trim=None):
        self.inner = inner
        self._empty = copy.deepcopy(inner)  # reset() starts again from this
        self._on_refused_trim = on_refused_trim
        self.offset = 0

    @property
    def kind(self) -> str:
        return type(self.inner).__name__

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return self.inner.update_and_fetch(keys, values)

    def can_trim(self, n: int) -> bool:
        if n <= 0:
            return True
        ok = bool(self.inner.is_trimmable()) and n <= self.offset
        if not ok and self._on_refused_trim is not None:
            self._on_refused_trim(self.kind)
        return ok

    def trim(self, n: int) -> int:
        n = min(n, self.offset)
        if n:
            self.inner.trim(n)
            self.offset -= n
        return n

    def reset(self) -> None:
        self.inner = copy.deepcopy(self._empty)
        self.offset = 0

    @property
    def state(self) -> list[mx.array]:
        return _arrays(self.inner.state)

    @property
    def nbytes(self) -> int:
        try:
            return int(self.inner.nbytes)
        except (AttributeError, NotImplementedError, TypeError):  # empty, or a type without the count
            return sum(a.nbytes for a in self.state)


class MlxLmFamily:
    """Mixed in before mlx-lm's Model class (see `build`); only adds, never changes, mlx-lm's computation."""

    implementation = MLX_LM_LABEL
    config: ModelConfig

    @property
    def num_layers(self) -> int:
        return len(self.layers)  # type: ignore[attr-defined]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        theirs = getattr(super(), "sanitize", None)
        return theirs(weights) if theirs is not None else weights

    def make_cache(self, kv_bits: int | None = None) -> list[MlxLmLayerCache]:
        theirs = getattr(super(), "make_cache", None)
        inner = theirs() if theirs is not None else [mlx_lm_cache.KVCache() for _ in self.layers]  # type: ignore
        if kv_bits:
            # Only plain KV layers quantize (mlx-lm's attention reads QuantizedKVCache); others stay as made.
            group = next((g for g in KV_GROUP_SIZES if self.config.head_dim % g == 0), None)
            kept = sorted({type(c).__name__ for c in inner if type(c) is not mlx_lm_cache.KVCache or group is None})
            if kept:
                self._note(f"--kv-bits quantizes only the full-attention layers of this {self.config.model_type} "
                           f"model (head width {self.config.head_dim}); its {', '.join(kept)} layers stay in "
                           "full precision")
            if group is not None:
                inner = [mlx_lm_cache.QuantizedKVCache(group, kv_bits) if type(c) is mlx_lm_cache.KVCache
                         else c for c in inner]
        return [MlxLmLayerCache(c, self._refused_trim) for c in inner]

    def _refused_trim(self, kind: str) -> None:
        self._note(f"this {self.config.model_type} model's {kind} layers cannot go back to an earlier "
                   "position: a changed prompt is computed again from its start (no prefix reuse)")

    def _note(self, line: str) -> None:
        """Say a limitation once per model, in one line, instead of failing."""
        said = self.__dict__.setdefault("_notes_said", set())
        if line not in said:
            said.add(line)
            print(f"macllm: note: {line}", file=sys.stderr)

    @property
    def notes(self) -> list[str]:
        return sorted(self.__dict__.get("_notes_said", ()))

    def lora_paths(self, last: int | None, keys: list[str]) -> list[str]:
        """Module paths of the linear layers `macllm train` wraps in the last `last` layers (None: all)."""
        return linear_targets(self, last, keys)  # type: ignore[arg-type]  # mixed into an nn.Module

    def __call__(self, tokens: mx.array, cache=None, last_only: bool = False) -> mx.array:
        inner = [c.inner for c in cache] if cache is not None else None
        logits = super().__call__(tokens, cache=inner)  # type: ignore[misc]
        if cache is not None:
            for c in cache:
                c.offset += tokens.shape[1]
        return logits[:, -1:, :] if last_only else logits


def build(cfg: ModelConfig, rope_periods=None) -> nn.Module:
    """mlx-lm's model for this config, as an `MlxLmFamily`; random weights until the loader loads them."""
    raw = dict(cfg.extra) if cfg.extra.get("model_type") == cfg.model_type else cfg.to_hf_dict()
    try:
        model_class, args_class = _get_classes(raw)
    except ValueError:
        raise MacllmError(f"unsupported model architecture '{cfg.model_type}' (neither macllm nor mlx-lm "
                          "implements it)") from None
    try:
        args = args_class.from_dict(raw)
    except (TypeError, ValueError, KeyError) as e:
        raise MacllmError(f"config.json does not describe a {cfg.model_type} model for mlx-lm "
                          f"({' '.join(str(e).split())})") from None
    family = type(f"MlxLm{model_class.__name__}", (MlxLmFamily, model_class), {})
    model = family(args)
    model.config = cfg
    cfg.num_hidden_layers = len(model.layers)
    return model


def linear_targets(model: nn.Module, last: int | None, keys: list[str]) -> list[str]:
    """In each of the last `last` layers, the linear layers named like `keys` (mlx-lm's names or their
    synonyms); a layer where none match (a recurrent block) gives all its linear layers, as mlx-lm's
    LoRA does without keys."""
    layers = list(model.layers)
    where = {id(m): path for path, m in model.named_modules()}
    wanted = {k.rsplit(".", 1)[-1] for k in keys}
    wanted |= {s for k in list(wanted) for s in _SYNONYMS.get(k, ())}
    paths = []
    for layer in layers[len(layers) - (len(layers) if last is None else last):]:
        prefix = where[id(layer)]
        linears = []
        for path, module in layer.named_modules():
            if isinstance(module, (nn.Linear, nn.QuantizedLinear)):
                # A linear already wrapped by a loaded adapter sits at "<path>.linear": the wrapper is the target.
                linears.append(path.removesuffix(".linear") if path.endswith(".linear") else path)
        chosen = [p for p in linears if p.rsplit(".", 1)[-1] in wanted] or linears
        paths += [f"{prefix}.{p}" for p in sorted(set(chosen))]
    return paths
