"""Kernel references against plain numpy formulas (shapes x dtypes), and the CPU choice of path.

The Metal kernels themselves cannot run here; tests/test_kernels_parity.py compares them with these
references on a Mac, and tests/test_kernels_gate.py covers the choice between them.
"""

import mlx.core as mx
import numpy as np
import pytest

import macllm  # noqa: F401  (conftest imports it, and so the fast BLAS, before mlx)
from macllm.generation.sampling import Sampler, SamplingParams, filter_logprobs
from macllm.kernels import KERNELS, lora_delta, residual_rms_norm, sample_filter, status
from macllm.lora.layers import LoRALinear

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
TOL = {mx.float32: 1e-5, mx.float16: 1e-2, mx.bfloat16: 6e-2}


def as_np(a):
    return np.array(a.astype(mx.float32)).astype(np.float64)


def rand(shape, dtype, seed, scale=1.0):
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(dtype)


# --- residual_rms_norm ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 7), (1, 1, 576), (2, 5, 1001)])
def test_residual_rms_norm_reference_matches_formula(dtype, shape):
    x, r = rand(shape, dtype, 1), rand(shape, dtype, 2)
    w = (1 + 0.1 * rand(shape[-1:], mx.float32, 3)).astype(dtype)
    h, y = residual_rms_norm.reference(x, r, w, 1e-5)
    assert h.dtype == dtype and y.dtype == dtype and h.shape == y.shape == shape
    hx = as_np(x) + as_np(r)
    want = hx / np.sqrt((hx ** 2).mean(-1, keepdims=True) + 1e-5) * as_np(w)
    np.testing.assert_allclose(as_np(h), hx, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(as_np(y), want, rtol=4 * TOL[dtype], atol=4 * TOL[dtype])


def test_residual_rms_norm_is_bit_identical_to_the_layer_code():
    import mlx.nn as nn

    norm = nn.RMSNorm(64, eps=1e-6)
    norm.weight = 1 + rand((64,), mx.float32, 4)
    x, r = rand((1, 3, 64), mx.float32, 5), rand((1, 3, 64), mx.float32, 6)
    h, y = residual_rms_norm.apply(x, r, norm.weight, norm.eps)
    assert mx.array_equal(h, x + r) and mx.array_equal(y, norm(x + r))


# --- lora_delta -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n_in,n_out,rank,scale", [(1, 33, 65, 1, 2.0), (1, 256, 1000, 8, 1.0),
                                                      (4, 129, 77, 24, 0.5)])
def test_lora_delta_reference_matches_formula(dtype, rows, n_in, n_out, rank, scale):
    x, y = rand((rows, 1, n_in), dtype, 7), rand((rows, 1, n_out), dtype, 8)
    a, b = rand((n_in, rank), dtype, 9, 0.1), rand((rank, n_out), dtype, 10, 0.1)
    out = lora_delta.reference(y, x, a, b, scale)
    assert out.dtype == dtype and out.shape == y.shape
    want = as_np(y) + scale * (as_np(x) @ as_np(a)) @ as_np(b)
    np.testing.assert_allclose(as_np(out), want, rtol=2 * TOL[dtype], atol=2 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_delta_reference_is_lora_linear_math(dtype):
    import mlx.nn as nn

    base = nn.Linear(48, 40, bias=False)
    base.weight = base.weight.astype(dtype)
    layer = LoRALinear(base)
    layer.add_slot("one", rand((48, 4), dtype, 11, 0.1), rand((4, 40), dtype, 12, 0.1))
    layer.add_slot("two", rand((48, 8), dtype, 13, 0.1), rand((8, 40), dtype, 14, 0.1))
    x = rand((1, 1, 48), dtype, 15)
    for scales in ({"one": 2.0}, {"one": 0.5, "two": 1.5}):
        layer.activate(scales)
        a, b, s = layer._slots.active
        assert mx.array_equal(layer(x), lora_delta.reference(base(x), x, a, b, s))


# --- sample_filter ----------------------------------------------------------------------------
def np_filtered(s, top_k, top_p, min_p):
    keep = np.ones(s.shape, dtype=bool)
    if 0 < top_k < s.size:
        keep &= s >= np.sort(s)[-top_k]
    if min_p > 0:
        keep &= s >= s.max() + np.log(min_p)
    if top_p < 1:
        p = np.where(keep, np.exp(s - s.max()), 0.0)
        p /= p.sum()
        order = np.argsort(-s, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        first = np.r_[True, s[order][1:] != s[order][:-1]]  # equal values: the mass before the first
        keep_sorted = np.zeros_like(keep)
        keep_sorted[order] = np.maximum.accumulate(np.where(first, before, 0.0)) < top_p
        keep &= keep_sorted
    return np.where(keep, s, -np.inf)


def np_inverse_cdf(filtered, u):
    w = np.exp(filtered - filtered.max())
    return int(np.searchsorted(np.cumsum(w) - w, u * w.sum(), side="right") - 1)


SETTINGS = [dict(), dict(top_k=1), dict(top_k=9), dict(min_p=0.1), dict(top_p=0.7),
            dict(top_k=30, min_p=0.01, top_p=0.9)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [2, 61, 4099])
@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_sample_filter_reference_matches_formula(dtype, vocab, settings):
    logits = rand((1, vocab), mx.float32, vocab, 3.0)
    lp = (logits - mx.logsumexp(logits, axis=-1, keepdims=True)).astype(dtype)
    temp = 0.7
    kw = dict(top_k=0, top_p=1.0, min_p=0.0) | settings
    filtered = as_np(sample_filter.reference_filter(lp, temp, **kw))[0]
    s = as_np(lp / temp)[0]  # the division in the dtype, as the sampler does it
    want = np_filtered(s, **kw)
    np.testing.assert_array_equal(np.isfinite(filtered), np.isfinite(want))
    for seed in range(5):
        u = mx.random.uniform(shape=(1,), key=mx.random.key(seed))
        token = sample_filter.reference(lp, u, temp, **kw)
        assert token.shape == (1,) and token.dtype == mx.uint32
        assert np.isfinite(filtered[token.item()])
        assert token.item() == np_inverse_cdf(filtered, u.item())


def test_sample_filter_reference_draws_what_categorical_draws():
    """Same key -> same token as mx.random.categorical on the filtered logits (today's sampler)."""
    for seed in range(60):
        logits = rand((1, 500), mx.float32, 100 + seed, 2.0)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        kw = SETTINGS[seed % len(SETTINGS)]
        key = mx.random.key(seed)
        want = mx.random.categorical(filter_logprobs(lp / 0.9, kw.get("top_k", 0), kw.get("top_p", 1.0),
                                                     kw.get("min_p", 0.0)), key=key)
        got = sample_filter.apply(lp, 0.9, key=key, **kw)
        assert got.item() == want.item()


def test_sample_filter_rows_are_independent():
    lp = mx.log(mx.softmax(rand((3, 50), mx.float32, 7, 2.0), axis=-1))
    u = mx.array([0.1, 0.5, 0.9])
    both = sample_filter.reference(lp, u, 1.0, top_k=10)
    each = [sample_filter.reference(lp[i:i + 1], u[i:i + 1], 1.0, top_k=10).item() for i in range(3)]
    assert both.tolist() == each


# --- the choice -------------------------------------------------------------------------------
def test_cpu_chooses_the_references():
    if mx.metal.is_available():
        pytest.skip("Metal is available: the gate decides")
    assert status() == {name: ("reference", "no Metal") for name in KERNELS}


def test_sampler_with_seed_is_reproducible_through_the_kernel_path():
    logits = rand((1, 300), mx.float32, 3, 2.0)
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, seed=7)
    first = [Sampler(params)(logits)[0].item() for _ in range(3)]
    s = Sampler(params)
    key = mx.random.key(7)
    key, sub = mx.random.split(key)
    lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    want = mx.random.categorical(filter_logprobs(lp / 0.8, 40, 0.9, 0.02), key=sub).item()
    assert s(logits)[0].item() == want == first[0]


def test_each_kernel_wrapper_reaches_metal_dispatch_here():
    """Each wrapper builds its kernel and gets as far as MLX's dispatch."""
    if mx.metal.is_available():
        pytest.skip("Metal is available: tests/test_kernels_parity.py runs the kernels")
    x = rand((1, 1, 64), mx.float16, 1)
    calls = [lambda: residual_rms_norm.metal(x, x, mx.ones((64,), mx.float16), 1e-5),
             lambda: lora_delta.metal(rand((1, 1, 40), mx.float16, 2), x, rand((64, 8), mx.float16, 3),
                                      rand((8, 40), mx.float16, 4), 2.0),
             lambda: sample_filter.metal(mx.zeros((1, 100)), mx.array([0.5]), 0.7, 5, 0.9, 0.1)]
    for call in calls:
        with pytest.raises(RuntimeError, match="No Metal"):
            mx.eval(call())


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_top_p_mass_is_summed_in_float32_for_half_inputs(dtype):
    """A half-precision cumsum over 32k probabilities kept about half the nucleus (65 of 134 tokens)."""
    logits = rand((1, 32003), mx.float32, 32003, 3.0)
    lp = (logits - mx.logsumexp(logits, axis=-1, keepdims=True)).astype(dtype)
    kept = np.isfinite(as_np(filter_logprobs(lp, 0, 0.8, 0.0))[0])
    want = np.isfinite(np_filtered(as_np(lp)[0], 0, 0.8, 0.0))
    assert kept.sum() > 100 and np.array_equal(kept, want)
    assert np.array_equal(kept, np.isfinite(as_np(filter_logprobs(lp.astype(mx.float32), 0, 0.8, 0.0))[0]))


def test_top_p_keeps_equal_values_together():
    lp = mx.log(mx.array([[0.4, 0.25, 0.25, 0.1]]))
    assert np.isfinite(as_np(filter_logprobs(lp, 0, 0.5, 0.0))[0]).tolist() == [True, True, True, False]


def test_doctor_kernels_json_on_this_machine(capsys):
    import json
    from types import SimpleNamespace

    from macllm.commands import doctor_cmd

    assert doctor_cmd.run(SimpleNamespace(kernels=True, json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and {r["kernel"] for r in report["rows"]} == set(KERNELS)
    assert all(r["reference_ok"] and r["reference_us"] > 0 for r in report["rows"])
    if not report["metal"]:
        assert "unavailable" in report["note"] and all(r["parity"] is None for r in report["rows"])
