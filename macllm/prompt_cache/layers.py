"""Each per-layer cache type's state as (meta, arrays) and back: what a prompt-cache file holds per layer.

`snapshot` reads a layer's positions without changing it; `restore` fills a fresh layer made by the same
`make_cache`. Kinds: ours (full, sliding, quantized) and mlx-lm's plain, quantized and rotating (ring buffer) KV
caches (mlx-lm families). Any other layer (e.g. a recurrent ArraysCache) has no snapshot: `unsaved_kind` names
it, and such a model's prompts are not written to disk.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.cache.full import KVCache
from macllm.cache.quantized import QuantizedKVCache
from macllm.cache.sliding import SlidingWindowCache

FLOAT_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
MLX_LM_KINDS = ("KVCache", "QuantizedKVCache", "RotatingKVCache")  # mlx-lm caches of positions, which we can save
ROTATING_SLACK = 4096  # a rotating buffer holds at most its window plus one prefill chunk (mlx-lm's concat path)


def _inner(layer):
    """mlx-lm's own cache inside our `MlxLmLayerCache` (duck-typed: importing that module loads mlx-lm)."""
    return getattr(layer, "inner", None)


def describe(layer) -> dict:
    """What kind of layer this is and its fixed settings; a restored layer must describe the same."""
    if type(layer) is KVCache:
        return {"kind": "full"}
    if type(layer) is SlidingWindowCache:
        return {"kind": "sliding", "window": layer.window}
    if type(layer) is QuantizedKVCache:
        return {"kind": "quantized", "bits": layer.bits, "group_size": layer.group_size,
                "threshold": layer.threshold}
    inner = _inner(layer)
    name = type(inner).__name__ if inner is not None else type(layer).__name__
    if inner is not None and name == "QuantizedKVCache":
        return {"kind": "mlx_lm.QuantizedKVCache", "bits": inner.bits, "group_size": inner.group_size}
    if inner is not None and name == "RotatingKVCache":
        return {"kind": "mlx_lm.RotatingKVCache", "max_size": inner.max_size, "keep": inner.keep}
    return {"kind": f"mlx_lm.{name}" if inner is not None else name}


def unsaved_kind(layers: list) -> str | None:
    """The first layer kind no snapshot exists for, or None when every layer can be saved."""
    for layer in layers:
        kind = describe(layer)["kind"]
        if kind not in ("full", "sliding", "quantized") and kind.removeprefix("mlx_lm.") not in MLX_LM_KINDS:
            return kind.removeprefix("mlx_lm.")
    return None


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


def snapshot(layer) -> tuple[dict, list[mx.array]]:
    """(meta, arrays) of everything the layer holds; arrays are (batch, heads, positions, width)."""
    meta = describe(layer)
    kind = meta["kind"]
    if kind == "full":
        n = layer.offset
        return meta, [layer.keys[..., :n, :], layer.values[..., :n, :]]
    if kind == "sliding":
        n = layer.stored
        return meta | {"start": layer.start, "offset": layer.offset}, [layer.keys[..., :n, :],
                                                                       layer.values[..., :n, :]]
    if kind == "quantized":
        n = layer.offset
        mode = "full" if layer.full is not None else "quantized"
        arrays = layer.full.buffers() if layer.full is not None else list(layer.quantized or [])
        return meta | {"mode": mode, "dtype": _dtype_name(layer.dtype)}, [a[..., :n, :] for a in arrays]
    inner = _inner(layer)
    n = inner.offset
    if kind == "mlx_lm.KVCache":
        return meta, [inner.keys[..., :n, :], inner.values[..., :n, :]]
    if kind == "mlx_lm.QuantizedKVCache":
        return meta, [a[..., :n, :] for a in (*inner.keys, *inner.values)]
    if kind == "mlx_lm.RotatingKVCache":  # a ring buffer: kept as it lies, with the write position
        stored = min(n, inner.keys.shape[2])
        return meta | {"offset": n, "idx": inner._idx}, [inner.keys[..., :stored, :], inner.values[..., :stored, :]]
    raise ValueError(f"a {kind} layer has no snapshot")


def positions(meta: dict, arrays: list[mx.array]) -> int:
    """The absolute position count a snapshot stands for (a sliding window counts dropped ones too)."""
    return meta["offset"] if meta["kind"] in ("sliding", "mlx_lm.RotatingKVCache") else arrays[0].shape[2]


def restore(layer, meta: dict, arrays: list[mx.array]) -> None:
    """Fill a fresh layer (from the same `make_cache`) with a checked snapshot."""
    kind, n = meta["kind"], arrays[0].shape[2]
    if kind == "full":
        layer.keys, layer.values = arrays
        layer.offset = n
    elif kind == "sliding":
        layer.keys, layer.values = arrays
        layer.start, layer.offset = meta["start"], meta["offset"]
    elif kind == "quantized":
        layer.offset, layer.dtype = n, FLOAT_DTYPES[meta["dtype"]]
        if meta["mode"] == "full":
            assert layer.full is not None
            layer.full.keys, layer.full.values = arrays
            layer.full.offset = n
        else:
            layer.full, layer.quantized = None, list(arrays)
    elif kind == "mlx_lm.KVCache":
        inner = _inner(layer)
        inner.keys, inner.values = arrays
        inner.offset = layer.offset = n
    elif kind == "mlx_lm.QuantizedKVCache":
        inner = _inner(layer)
        inner.keys, inner.values = tuple(arrays[:3]), tuple(arrays[3:])
        inner.offset = layer.offset = n
    elif kind == "mlx_lm.RotatingKVCache":
        inner = _inner(layer)
        inner.keys, inner.values = arrays
        inner.offset = layer.offset = meta["offset"]
        inner._idx = meta["idx"]
    else:
        raise ValueError(f"a {kind} layer cannot be restored")


def expected_arrays(meta: dict, probe: list[tuple[tuple[int, ...], str]], n: int) -> list[tuple[tuple, str]]:
    """(shape, dtype) each array of a snapshot holding `n` stored positions must have, from `probe`: the
    (shape, dtype) of the same layer's snapshot after one token of a fresh cache (positions axis 1)."""
    def at(shape: tuple[int, ...], width: int | None = None) -> tuple[int, ...]:
        return (shape[0], shape[1], n, shape[3] if width is None else width)

    if meta["kind"] == "quantized" and meta.get("mode") == "quantized":
        bits, group = meta["bits"], meta["group_size"]
        out = []
        for shape, dtype in probe:  # keys, values in full precision -> packed codes, scales, biases each
            width = shape[3]
            out += [(at(shape, width * bits // 32), "uint32"), (at(shape, width // group), dtype),
                    (at(shape, width // group), dtype)]
        return out
    return [(at(shape), dtype) for shape, dtype in probe]


def array_signature(a: mx.array) -> tuple[tuple[int, ...], str]:
    return tuple(a.shape), _dtype_name(a.dtype)
