"""Distilled scales: training only the per-group scales and biases brings the quantized model's
predictions closer to the float model's, without touching the codes."""

from __future__ import annotations

import copy

import mlx.core as mx

from macllm.loader import build_model
from macllm.quant.convert import float_weights
from macllm.quant.distill import distill_scales
from macllm.quant.weights import quantize_weights


def kl_to_float(cfg, weights, qweights, quant, ids):
    float_cfg, quant_cfg = copy.copy(cfg), copy.copy(cfg)
    float_cfg.quantization, quant_cfg.quantization = None, quant
    teacher, _ = build_model(float_cfg, dict(weights))
    student, _ = build_model(quant_cfg, dict(qweights))
    x = mx.array(ids)[None]
    p = teacher(x)
    p = p - mx.logsumexp(p, -1, keepdims=True)
    s = student(x)
    s = s - mx.logsumexp(s, -1, keepdims=True)
    return (mx.exp(p) * (p - s)).sum(-1).mean().item()


def test_distilled_scales_track_the_float_model_and_keep_the_codes(tiny_llama_folder):
    cfg, weights, _ = float_weights(tiny_llama_folder)
    cfg.quantization = None
    qweights, quant = quantize_weights(dict(weights), bits=4, group_size=32)
    ids = [(7 * i + 3) % 250 + 5 for i in range(300)]
    before = kl_to_float(cfg, weights, qweights, quant, ids)
    tuned = distill_scales(cfg, weights, qweights, quant, ids, epochs=4, learning_rate=3e-4)
    after = kl_to_float(cfg, weights, tuned, quant, ids)
    assert after < 0.5 * before, (before, after)
    for name, value in qweights.items():
        assert tuned[name].dtype == value.dtype and tuned[name].shape == value.shape
        if name.endswith(".weight") and f"{name[:-7]}.scales" in qweights:
            assert mx.array_equal(tuned[name], value).item()  # codes untouched
    changed = [n for n in qweights if n.endswith(".scales") and not mx.array_equal(tuned[n], qweights[n]).item()]
    assert changed
