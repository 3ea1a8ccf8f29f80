"""The affine quantizer's search: never worse than min/max, better where outliers stretch a group, and
importance-weighted where calibration says some inputs matter more; calibration records every layer."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from macllm.quant.affine import affine_quantize


def errors_per_group(w, packed, scales, biases, bits, group, weight=None):
    back = mx.dequantize(packed, scales.astype(mx.float32), biases.astype(mx.float32), group_size=group, bits=bits)
    sq = mx.square(back - w)
    if weight is not None:
        sq = sq * weight
    return np.array(sq.reshape(w.shape[0], -1, group).sum(-1))


def test_search_is_never_worse_than_min_max_and_helps_with_outliers():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, (64, 256)).astype(np.float32)
    w[rng.random(w.shape) < 0.01] *= 12  # a few outliers per matrix, as in real weights
    w = mx.array(w)
    plain = errors_per_group(w, *affine_quantize(w, 4, 64), 4, 64)
    searched = errors_per_group(w, *affine_quantize(w, 4, 64, search=True), 4, 64)
    assert np.all(searched <= plain * (1 + 1e-6))
    assert searched.sum() < 0.95 * plain.sum() and (searched < plain).mean() > 0.5


def test_importance_protects_the_columns_that_matter():
    rng = np.random.default_rng(1)
    w = mx.array(rng.normal(0, 0.02, (32, 128)).astype(np.float32))
    importance = np.full(128, 1e-3, np.float32)
    importance[::16] = 100.0  # a few "large activation" input features
    imp = mx.array(importance)
    col_error = lambda q: np.array(mx.square(  # noqa: E731
        mx.dequantize(q[0], q[1].astype(mx.float32), q[2].astype(mx.float32), group_size=32, bits=4) - w))
    plain = col_error(affine_quantize(w, 4, 32, search=True))
    weighted = col_error(affine_quantize(w, 4, 32, importance=imp, search=True))
    assert weighted[:, ::16].sum() < 0.5 * plain[:, ::16].sum()


def test_activation_importance_covers_every_matrix(tiny_llama_folder):
    from macllm.loader import load_model
    from macllm.quant.calibration import activation_importance

    loaded = load_model(str(tiny_llama_folder), progress=False)
    model = loaded.model
    linears = [name for name, m in model.named_modules() if type(m).__name__ == "Linear"]
    tied = "lm_head" not in linears
    # 695 ids inside the tiny vocabulary (an id past it reads memory outside the embedding: NaN at random)
    imp = activation_importance(model, [5 + i % (loaded.config.vocab_size - 5) for i in range(695)], tied)
    assert set(imp) == set(n for n in linears if n != "lm_head") | {"model.embed_tokens" if tied else "lm_head"}
    q, k = imp["model.layers.0.self_attn.q_proj"], imp["model.layers.0.self_attn.k_proj"]
    assert mx.array_equal(q, k).item()  # the same input, recorded once
    assert q.shape == (loaded.config.hidden_size,) and (q >= 0).all().item() and (q > 0).any().item()
