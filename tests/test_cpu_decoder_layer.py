"""The whole decoder layer as one CPU node (csrc/fused_layer.cpp, macllm/models/fused_layer.py).

Oracles: the per-op path it replaces (each op tested against MLX's own in test_cpu_fused_ops.py), which it
must match bit for bit, and MLX's float path (MACLLM_CPU_KERNEL=off: mx.quantized_matmul and mx.fast ops)
within float tolerance. Covered: Llama, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms; mlx-lm's own folders)
and Qwen3-MoE (its dense layer fused, the sparse ones not), 4- and 8-bit layers in one model, one and
several query rows, the cache growing past its buffer, adapters active on some projections and a blend of
two, a cache buffer somebody else still holds (never written in place), and where the op must step aside.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import macllm.models.decoder as decoder
from macllm import cpu_kernels
from macllm.cache import make_cache
from macllm.generation.steps import prefill
from macllm.loader import load_model
from macllm.lora.manager import AdapterManager
from macllm.lora.random_adapter import random_adapter
from macllm.models.fused_layer import decode_layer
from tests import tiny_models
from tests.conftest import ON_CI
from tests.test_qwen3 import QWEN3, QWEN3_MOE, mlx_lm_model, save_as_mlx_lm, vocab_config

if cpu_kernels.extension is None:
    if ON_CI:
        pytest.fail(f"the CPU kernels must be built on CI: {cpu_kernels.build_status}", pytrace=False)
    pytest.skip(f"CPU kernels unavailable: {cpu_kernels.build_status}", allow_module_level=True)

PROMPT = list(range(3, 40))
# (rows fed per step): single tokens and speculative-style checks of several rows, across the cache's
# 256-position buffer boundary (the prompt plus these steps passes it when started near it).
STEPS = (1, 3, 1, 16, 2, 1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder-layer")
    mixed = {"bits": 4, "group_size": 32, "model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 64},
             "model.layers.1.self_attn.v_proj": {"bits": 8, "group_size": 32}}
    folders = {"llama": tiny_models.write_tiny_folder(root / "llama", quantize=mixed),
               "qwen2": tiny_models.write_tiny_folder(root / "qwen2", model_type="qwen2",
                                                      quantize={"bits": 4, "group_size": 32})}
    for name, base in (("qwen3", QWEN3), ("qwen3_moe", QWEN3_MOE)):  # written by mlx-lm, quantized by it
        config = vocab_config(base)
        folders[name] = save_as_mlx_lm(mlx_lm_model(config), config, root / name, bits=4)
    return folders


def decode(model, fused: bool, monkeypatch, prompt=PROMPT, steps=STEPS) -> list[mx.array]:
    """Logits of a prefill and then of each step, feeding the last step's argmax `rows` times."""
    calls = []

    def tracked(*args):
        out = decode_layer(*args) if fused else None
        calls.append(out is not None)
        return out

    monkeypatch.setattr(decoder, "decode_layer", tracked)
    cache = make_cache(model)
    outs = [prefill(model, prompt, cache)]
    token = int(mx.argmax(outs[-1][-1]).item())
    for rows in steps:
        logits = model(mx.array([[token] * rows]), cache=cache)
        outs.append(logits)
        token = int(mx.argmax(logits[0, -1]).item())
    mx.eval(outs)
    assert any(calls) == fused  # the op ran where it applies (not on a mixture-of-experts layer)
    return outs


@pytest.fixture(params=["float", "int8"])
def activations(request, monkeypatch):
    """The kernel's float activations, and its int8 ones (AVX-512 VNNI) where this CPU has them (loading a
    model applies MACLLM_CPU_INT8)."""
    if request.param == "int8" and not cpu_kernels.extension.int8_available():
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setenv(cpu_kernels.INT8_ENV, "on" if request.param == "int8" else "off")
    yield request.param
    monkeypatch.delenv(cpu_kernels.INT8_ENV, raising=False)
    cpu_kernels.apply_int8()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "qwen3_moe"])
def test_the_layer_op_equals_the_per_op_path_bit_for_bit(folders, family, activations, monkeypatch):
    model = load_model(str(folders[family]), progress=False).model
    assert cpu_kernels.extension.int8() == (activations == "int8")
    fused = decode(model, True, monkeypatch)
    per_op = decode(model, False, monkeypatch)
    for a, b in zip(fused, per_op, strict=True):
        assert mx.array_equal(a, b).item()


def test_across_the_cache_buffer_boundary(folders, monkeypatch):
    model = load_model(str(folders["llama"]), progress=False).model
    prompt = [3 + i % 200 for i in range(250)]  # 250 + 24 rows: the 256-position buffer grows mid-way
    fused = decode(model, True, monkeypatch, prompt=prompt)
    per_op = decode(model, False, monkeypatch, prompt=prompt)
    for a, b in zip(fused, per_op, strict=True):
        assert mx.array_equal(a, b).item()


def test_close_to_mlx_own_float_path(folders, monkeypatch):
    monkeypatch.setenv(cpu_kernels.INT8_ENV, "off")  # int8 activations round x: not within float tolerance
    model = load_model(str(folders["qwen2"]), progress=False).model
    fused = decode(model, True, monkeypatch)
    monkeypatch.setenv(cpu_kernels.ENV, "off")
    reference = load_model(str(folders["qwen2"]), progress=False).model
    mlx_own = decode(reference, False, monkeypatch)
    for a, b in zip(fused, mlx_own, strict=True):
        assert mx.abs(a - b).max().item() <= 2e-4 * max(1.0, mx.abs(b).max().item())


def test_adapters_ride_along_exactly(folders, monkeypatch):
    model_result = load_model(str(folders["llama"]), progress=False)
    model, cfg = model_result.model, model_result.config
    manager = AdapterManager(model, cfg)
    manager.load(random_adapter(cfg, "one", keys=("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"),
                                seed=1, scale=2.0, b_std=0.05))
    manager.load(random_adapter(cfg, "two", seed=2, b_std=0.05))
    for scales in ({"one": 1.0}, {"one": 0.5, "two": 0.8}):
        manager.activate(scales)
        fused = decode(model, True, monkeypatch)
        per_op = decode(model, False, monkeypatch)
        for a, b in zip(fused, per_op, strict=True):
            assert mx.array_equal(a, b).item()
    manager.activate({})
    bare = decode(model, True, monkeypatch)
    assert not mx.array_equal(bare[-1], fused[-1]).item()  # the adapters did change the answer


def test_a_buffer_somebody_else_holds_is_never_written_in_place(folders, monkeypatch):
    model = load_model(str(folders["llama"]), progress=False).model
    cache = make_cache(model)
    mx.eval(prefill(model, PROMPT, cache))
    held = cache[0].keys  # a snapshot, as a saved prompt cache or a rollback would keep
    before = np.array(held)
    logits = model(mx.array([[7]]), cache=cache)
    mx.eval(logits, cache[0].keys)
    assert np.array_equal(np.array(held), before)
    offset = cache[0].offset
    assert not np.array_equal(np.array(cache[0].keys)[:, :, offset - 1], before[:, :, offset - 1])
    # And with nobody else holding it, the next step reuses the buffer in place.
    del held
    address = np.asarray(cache[0].keys).__array_interface__["data"][0]
    mx.eval(model(mx.array([[8]]), cache=cache))
    assert np.asarray(cache[0].keys).__array_interface__["data"][0] == address


def test_the_op_steps_aside_where_it_does_not_apply(folders, monkeypatch):
    model = load_model(str(folders["llama"]), progress=False).model
    layer = model.model.layers[0]
    x = mx.random.normal((1, 1, layer.input_layernorm.weight.shape[0]))
    cache = make_cache(model)
    mx.eval(prefill(model, PROMPT, cache))
    assert decode_layer(layer, x, None, cache[0]) is not None
    cache[0].offset -= 1
    long_x = mx.random.normal((1, 17, x.shape[-1]))  # prefill-sized: BLAS keeps it
    assert decode_layer(layer, long_x, "causal", cache[0]) is None
    quantized_kv = make_cache(model, kv_bits=8)
    mx.eval(prefill(model, PROMPT, quantized_kv))
    assert decode_layer(layer, x, None, quantized_kv[0]) is None
    assert decode_layer(layer, x.astype(mx.float16), None, cache[0]) is None
    layer.train()
    assert decode_layer(layer, x, None, cache[0]) is None
    layer.eval()
    monkeypatch.setenv(cpu_kernels.ENV, "off")
    assert decode_layer(layer, x, None, cache[0]) is None


def test_bad_operands_are_refused_in_one_line(folders):
    model = load_model(str(folders["llama"]), progress=False).model
    layer = model.model.layers[0]
    attn = layer.self_attn
    operands = [getattr(getattr(layer, block), name).kernel_operands() for block, name in
                (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
                 ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))]
    dim = layer.input_layernorm.weight.shape[0]
    keys = mx.zeros((1, attn.n_kv_heads, 8, attn.head_dim))
    cos = sin = mx.zeros((1, attn.head_dim // 2))
    x = mx.zeros((1, 1, dim))
    norm = layer.input_layernorm.weight

    def call(**change):
        args = dict(x=x, norm_in=norm, norm_post=norm, cos=cos, sin=sin, keys=keys, values=keys, projections=operands,
                    n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads, offset=0, eps_in=1e-5, eps_post=1e-5,
                    scale=0.1, causal=False) | change
        return cpu_kernels.extension.decoder_layer(**args)

    mx.eval(call())
    cases = [("offset", 8), ("projections", operands[:6]), ("x", mx.zeros((1, 1, dim + 1))),
             ("keys", mx.zeros((1, attn.n_kv_heads + 1, 8, attn.head_dim))),
             ("projections", [operands[1]] + operands[1:])]
    for name, value in cases:
        with pytest.raises(ValueError) as err:
            call(**{name: value})
        message = str(err.value)
        assert message.startswith("[macllm decoder_layer]") and "\n" not in message
