"""Our fused CPU decode ops (csrc/fused_*.cpp, macllm/cpu_kernels/fused.py) against MLX's own ops.

The oracle for each op is the composition of MLX ops it replaces (mx.fast.rms_norm, the half-split
rope on tables, mx.fast.scaled_dot_product_attention, silu * up), on random shapes including views
(slices of a larger cache buffer, transposes), grouped-query heads, causal queries and partial
rotary. Gradients are checked against MLX's gradients of the same composition, and a whole model
decodes the same tokens with the fused ops as without them.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from macllm import cpu_kernels
from macllm.cache import make_cache
from macllm.cpu_kernels import fused
from macllm.generation import GenerationParams, generate
from macllm.loader import load_model
from tests.conftest import ON_CI

if cpu_kernels.extension is None:
    if ON_CI:
        pytest.fail(f"the CPU kernels must be built on CI: {cpu_kernels.build_status}", pytrace=False)
    pytest.skip(f"CPU kernels unavailable: {cpu_kernels.build_status}", allow_module_level=True)

TOL = 2e-6


def close(a: mx.array, b: mx.array, tol: float = TOL) -> None:
    assert a.shape == b.shape
    scale = max(1.0, mx.abs(b).max().item())
    assert mx.abs(a - b).max().item() <= tol * scale


def rotate_reference(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    xt = x.transpose(0, 2, 1, 3)
    r = cos.shape[-1]
    x1, x2 = xt[..., :r], xt[..., r:2 * r]
    return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, xt[..., 2 * r:]], axis=-1)


def attend_reference(q, k, v, scale, causal):
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal" if causal else None)
    return out.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)


@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 3, 64), (5, 7), (1, 4, 2, 16)])
def test_rms_norm_matches_mlx(shape):
    mx.random.seed(1)
    x, w = mx.random.normal(shape) * 3, mx.random.normal((shape[-1],))
    close(fused.rms_norm(x, w, 1e-5), mx.fast.rms_norm(x, w, 1e-5))
    # A view: every other row of a larger array, and a transposed one.
    big = mx.random.normal((2 * shape[0],) + tuple(shape[1:]))
    close(fused.rms_norm(big[::2], w, 1e-6), mx.fast.rms_norm(big[::2], w, 1e-6))
    sq = mx.random.normal((shape[-1], shape[-1]))
    close(fused.rms_norm(sq.T, w, 1e-6), mx.fast.rms_norm(sq.T, w, 1e-6))


def test_residual_rms_norm_returns_the_sum_and_its_norm():
    mx.random.seed(2)
    x, r, w = mx.random.normal((3, 2, 96)), mx.random.normal((3, 2, 96)), mx.random.normal((96,))
    h, y = fused.residual_rms_norm(x, r, w, 1e-5)
    close(h, x + r)
    close(y, mx.fast.rms_norm(x + r, w, 1e-5))


@pytest.mark.parametrize("b,length,heads,dim,rotated", [(1, 1, 9, 64, 32), (2, 5, 3, 16, 8), (1, 3, 2, 32, 8)])
def test_rotate_heads_matches_the_table_rope(b, length, heads, dim, rotated):
    mx.random.seed(3)
    x = mx.random.normal((b, length, heads, dim))
    angles = mx.random.uniform(-3, 3, (length, rotated))
    cos, sin = mx.cos(angles), mx.sin(angles)
    close(fused.rotate_heads(x, cos, sin), rotate_reference(x, cos, sin))
    # Strided input: the heads of a (B, H, L, D) array seen as (B, L, H, D), and strided tables.
    xt = mx.random.normal((b, heads, length, dim)).transpose(0, 2, 1, 3)
    wide = mx.random.normal((length, 2 * rotated))
    close(fused.rotate_heads(xt, wide[:, ::2], wide[:, 1::2]), rotate_reference(xt, wide[:, ::2], wide[:, 1::2]))


@pytest.mark.parametrize("lq,causal", [(1, False), (1, True), (4, True), (3, False), (16, True)])
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4), (8, 1)])
def test_attend_matches_mlx_sdpa_over_cache_views(lq, causal, heads, kv_heads):
    mx.random.seed(4)
    b, dim, used, capacity = 2, 32, 37, 64
    q = mx.random.normal((b, heads, lq, dim))
    k_buf, v_buf = mx.random.normal((b, kv_heads, capacity, dim)), mx.random.normal((b, kv_heads, capacity, dim))
    k, v = k_buf[:, :, :used, :], v_buf[:, :, :used, :]  # what the KV cache hands out
    close(fused.attend(q, k, v, 0.17, causal), attend_reference(q, k, v, 0.17, causal))


def test_attend_splits_long_caches_over_the_pool_the_same_way():
    mx.random.seed(5)
    q = mx.random.normal((1, 8, 2, 64))
    k, v = mx.random.normal((1, 2, 3000, 64)), mx.random.normal((1, 2, 3000, 64))
    close(fused.attend(q, k, v, 0.125, True), attend_reference(q, k, v, 0.125, True))


@pytest.mark.parametrize("keys", [100, 300, 700])
def test_a_query_row_attends_bit_identically_alone_or_among_guesses(keys):
    """Speculative decoding checks k+1 rows at once where plain decoding attends one row at a time over the
    keys it sees: the same bits (the key runs must not move with the key count), or greedy output could
    differ from plain decoding's at a near tie."""
    mx.random.seed(6)
    lq = 9
    q = mx.random.normal((1, 14, lq, 64))
    k, v = mx.random.normal((1, 2, keys, 64)), mx.random.normal((1, 2, keys, 64))
    together = fused.attend(q, k, v, 0.125, True)
    for i in range(lq):
        visible = keys - lq + i + 1
        alone = fused.attend(q[:, :, i:i + 1], k[:, :, :visible], v[:, :, :visible], 0.125, True)
        assert mx.array_equal(together[:, i:i + 1], alone).item(), f"row {i} ({visible} keys)"


def test_silu_mul_matches_swiglu():
    mx.random.seed(6)
    g, u = mx.random.normal((2, 3, 1536)) * 4, mx.random.normal((2, 3, 1536))
    close(fused.silu_mul(g, u), nn.silu(g) * u)


def test_gradients_are_those_of_the_reference():
    mx.random.seed(7)
    x, r, w = mx.random.normal((2, 3, 32)), mx.random.normal((2, 3, 32)), mx.random.normal((32,))
    q = mx.random.normal((1, 3, 4, 16))  # (B, L, H, D) as projected
    k, v = mx.random.normal((1, 4, 3, 16)), mx.random.normal((1, 4, 3, 16))
    angles = mx.random.normal((3, 8))
    cos, sin = mx.cos(angles), mx.sin(angles)
    probe = mx.random.normal((1, 3, 64))

    def ours(x, r, w, q, k, v):
        h, y = fused.residual_rms_norm(x, r, w, 1e-5)
        a = fused.attend(fused.rotate_heads(q, cos, sin), k, v, 0.25, True)
        return (fused.silu_mul(h, y).sum() + fused.rms_norm(y, w, 1e-5).sum() + (a * probe).sum())

    def theirs(x, r, w, q, k, v):
        h = x + r
        y = mx.fast.rms_norm(h, w, 1e-5)
        a = attend_reference(rotate_reference(q, cos, sin), k, v, 0.25, True)
        return ((nn.silu(h) * y).sum() + mx.fast.rms_norm(y, w, 1e-5).sum() + (a * probe).sum())

    args = (x, r, w, q, k, v)
    for g_ours, g_ref in zip(mx.grad(ours, argnums=tuple(range(6)))(*args),
                             mx.grad(theirs, argnums=tuple(range(6)))(*args), strict=True):
        close(g_ours, g_ref, 1e-5)


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(ValueError, match="float32"):
        fused.rms_norm(mx.ones((2, 4), dtype=mx.float16), mx.ones((4,), dtype=mx.float16), 1e-5)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        fused.attend(mx.ones((1, 3, 1, 8)), mx.ones((1, 2, 4, 8)), mx.ones((1, 2, 4, 8)), 1.0, False)


def test_active_only_for_float32_on_the_cpu_unless_switched_off(monkeypatch):
    assert fused.active(mx.ones((1,)))
    assert not fused.active(mx.ones((1,), dtype=mx.float16))
    monkeypatch.setenv(cpu_kernels.ENV, "off")
    assert not fused.active(mx.ones((1,)))


def test_a_model_decodes_the_same_with_and_without_the_fused_ops(tiny_llama_gguf, monkeypatch):
    lm = load_model(str(tiny_llama_gguf), progress=False)
    prompt = list(range(3, 40))
    params = GenerationParams(max_tokens=12, temperature=0.0)
    with_fused = generate(lm.model, lm.tokenizer, prompt, params).token_ids
    logits_fused = lm.model(mx.array([prompt]), cache=make_cache(lm.model))
    monkeypatch.setattr(fused, "active", lambda x: False)
    without = generate(lm.model, lm.tokenizer, prompt, params).token_ids
    logits_plain = lm.model(mx.array([prompt]), cache=make_cache(lm.model))
    assert with_fused == without
    close(logits_fused, logits_plain, 1e-5)


@pytest.mark.parametrize("shape,queries", [((1, 3, 768, 256), 256), ((2, 2, 6, 40), 3), ((1, 1, 5, 5), 5)])
def test_causal_softmax_matches_mlx_masked_softmax(shape, queries):
    mx.random.seed(8)
    scores = mx.random.normal(shape) * 4
    rows, keys = shape[-2], shape[-1]
    visible = mx.arange(keys)[None] <= (mx.arange(rows) % queries)[:, None] + keys - queries
    expected = mx.softmax(mx.where(visible, scores * 0.125, -mx.inf), axis=-1, precise=True)
    close(fused.causal_softmax(scores, 0.125, queries), expected, 1e-6)
    close(fused.causal_softmax(scores.swapaxes(-1, -2).swapaxes(-1, -2), 0.125, queries), expected, 1e-6)


def test_causal_softmax_gradient_is_the_masked_softmaxs():
    mx.random.seed(9)
    scores, probe = mx.random.normal((1, 2, 8, 6)), mx.random.normal((1, 2, 8, 6))
    visible = mx.arange(6)[None] <= (mx.arange(8) % 4)[:, None] + 2

    def ours(s):
        return (fused.causal_softmax(s, 0.5, 4) * probe).sum()

    def theirs(s):
        return (mx.softmax(mx.where(visible, s * 0.5, -mx.inf), axis=-1, precise=True) * probe).sum()

    close(mx.grad(ours)(scores), mx.grad(theirs)(scores), 1e-5)


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4)])
def test_prefill_attention_equals_mlx_sdpa(heads, kv_heads, monkeypatch):
    from macllm.cache.full import KVCache
    from macllm.models.attention import rotate_cache_attend
    from macllm.models.rope import RoPE

    mx.random.seed(10)
    rope = RoPE(16, 10000.0)
    q, k = mx.random.normal((1, 40, heads, 16)), mx.random.normal((1, 40, kv_heads, 16))
    v = mx.random.normal((1, kv_heads, 40, 16))
    ours = rotate_cache_attend(q, k, v, rope, KVCache(), 0.25, "causal")
    monkeypatch.setattr(fused, "active", lambda x: False)
    close(ours, rotate_cache_attend(q, k, v, rope, KVCache(), 0.25, "causal"), 1e-5)
