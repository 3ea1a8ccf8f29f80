"""The kernel gate on CPU: Metal simulated, kernels that fail to build, mismatch, or match the reference.

A test replaces `gate.metal_available` (the platform), a module's `get_kernel` (the builder) or its
`metal` (the kernel): the same seams a Mac would exercise for real.
"""

import json
import threading
from types import SimpleNamespace

import mlx.core as mx
import pytest

import macllm  # noqa: F401  (conftest imports it, and so the fast BLAS, before mlx)
from macllm import kernels
from macllm.commands import doctor_cmd
from macllm.engine import Engine
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, generate
from macllm.kernels import KERNELS, gate, lora_delta, parity, residual_rms_norm, sample_filter
from macllm.loader import load_model

BUILD_ERROR = "Unable to build metal library from source\nprogram_source:12:5: error: use of undeclared identifier"


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    monkeypatch.delenv(gate.ENV, raising=False)
    gate.forget()
    yield
    gate.forget()


@pytest.fixture
def on_metal(monkeypatch):
    monkeypatch.setattr(gate, "metal_available", lambda: True)


def fail_to_build(monkeypatch, module):
    def builder():
        raise RuntimeError(BUILD_ERROR)

    monkeypatch.setattr(module, "get_kernel", builder)


def mismatch(monkeypatch, module):
    def wrong(*args, **kw):
        out = module.reference(*args, **kw)
        if module is sample_filter:
            return (out + 1) % args[0].shape[-1]
        return tuple(o * 1.5 for o in out) if isinstance(out, tuple) else out * 1.5

    monkeypatch.setattr(module, "metal", wrong)


def good_kernel(monkeypatch, module) -> list:
    calls = []

    def right(*args, **kw):
        calls.append(threading.current_thread().name)
        return module.reference(*args, **kw)

    monkeypatch.setattr(module, "metal", right)
    return calls


def norm_inputs():
    x = parity.rand((1, 1, 64), mx.float16, 1)
    return x, parity.rand((1, 1, 64), mx.float16, 2), mx.ones((64,), mx.float16), 1e-5


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("macllm: warning: kernel")]


# --- the decision, without a platform -----------------------------------------------------------
@pytest.mark.parametrize("mode", gate.MODES)
def test_without_metal_every_mode_is_the_reference_and_nothing_runs(mode):
    def probe(compare):
        raise AssertionError("no check without Metal")

    assert gate.decide(mode, False, probe) == gate.Decision("reference", "no Metal")


def test_off_never_checks():
    decision = gate.decide("off", True, lambda compare: pytest.fail("checked"))
    assert decision.path == "reference" and "MACLLM_KERNELS=off" in decision.reason and not decision.fell_back


def test_auto_compares_and_on_only_builds():
    seen = []
    assert gate.decide("auto", True, lambda compare: seen.append(compare)).path == "metal"
    assert gate.decide("on", True, lambda compare: seen.append(compare) or "ignored").path == "metal"
    assert seen == [True, False]


@pytest.mark.parametrize("value", ["yes", "1", "metal"])
def test_invalid_mode_is_one_line_naming_the_valid_values(monkeypatch, value):
    monkeypatch.setenv(gate.ENV, value)
    with pytest.raises(MacllmError) as err:
        gate.kernels_mode()
    message = str(err.value)
    assert "\n" not in message and value in message and "auto, on, off" in message
    with pytest.raises(MacllmError):
        residual_rms_norm.apply(*norm_inputs())


def test_mode_is_case_and_space_tolerant(monkeypatch):
    monkeypatch.setenv(gate.ENV, " OFF ")
    assert gate.kernels_mode() == "off"


# --- the status on this machine ------------------------------------------------------------------
def test_no_metal_status_for_every_kernel():
    if mx.metal.is_available():
        pytest.skip("Metal is available")
    residual_rms_norm.apply(*norm_inputs())
    assert kernels.status() == {name: ("reference", "no Metal") for name in KERNELS}


def test_status_before_first_use_on_metal(on_metal):
    assert set(kernels.status()) == set(KERNELS)
    assert all(path == gate.UNDECIDED for path, _ in kernels.status().values())


# --- simulated Metal: (a) build error, (b) mismatch, (c) good kernel -------------------------------
def test_build_error_falls_back_with_one_warning(on_metal, monkeypatch, capsys):
    fail_to_build(monkeypatch, residual_rms_norm)
    x, r, w, eps = norm_inputs()
    for _ in range(3):
        h, y = residual_rms_norm.apply(x, r, w, eps)
        want_h, want_y = residual_rms_norm.reference(x, r, w, eps)
        assert mx.array_equal(h, want_h) and mx.array_equal(y, want_y)
    path, reason = kernels.status()["residual_rms_norm"]
    assert path == "reference" and "failed to build" in reason and "Unable to build metal library" in reason
    assert "\n" not in reason
    (line,) = warnings_in(capsys.readouterr().err)
    assert "residual_rms_norm" in line and "Unable to build metal library" in line


def test_the_real_kernels_fail_to_run_here_and_fall_back(on_metal, capsys):
    """On CPU, MLX builds each kernel object but cannot dispatch it: the same path as a compile error."""
    if mx.metal.is_available():
        pytest.skip("Metal is available: the kernels run")
    token = sample_filter.apply(mx.zeros((1, 100)), 0.7, 5, 0.9, 0.1, key=mx.random.key(0))
    assert token.shape == (1,)
    status = kernels.decide_all()
    assert all(path == "reference" and "failed to build or run" in why for path, why in status.values())
    lines = warnings_in(capsys.readouterr().err)
    assert sorted(line.split()[3] for line in lines) == sorted(KERNELS)


def test_mismatch_falls_back_with_one_warning(on_metal, monkeypatch, capsys):
    mismatch(monkeypatch, lora_delta)
    y, x = parity.rand((1, 1, 40), mx.float32, 3), parity.rand((1, 1, 64), mx.float32, 4)
    a, b = parity.rand((64, 8), mx.float32, 5, 0.1), parity.rand((8, 40), mx.float32, 6, 0.1)
    for _ in range(2):
        assert mx.array_equal(lora_delta.apply(y, x, a, b, 2.0), lora_delta.reference(y, x, a, b, 2.0))
    path, reason = kernels.status()["lora_delta"]
    assert path == "reference" and reason.startswith("self-check mismatch (float32: difference")
    (line,) = warnings_in(capsys.readouterr().err)
    assert "lora_delta" in line and "self-check mismatch" in line


def test_sampler_mismatch_falls_back(on_metal, monkeypatch, capsys):
    mismatch(monkeypatch, sample_filter)
    lp = mx.log(mx.softmax(parity.rand((1, 300), mx.float32, 7, 2.0), axis=-1))
    key = mx.random.key(3)
    want = sample_filter.reference(lp, sample_filter.uniforms(lp, key), 0.8, 20, 0.9, 0.0)
    assert sample_filter.apply(lp, 0.8, 20, 0.9, 0.0, key=key).item() == want.item()
    assert kernels.status()["sample_filter"][0] == "reference"
    assert len(warnings_in(capsys.readouterr().err)) == 1


def test_good_kernel_is_used_after_the_check(on_metal, monkeypatch, capsys):
    calls = good_kernel(monkeypatch, residual_rms_norm)
    x, r, w, eps = norm_inputs()
    residual_rms_norm.apply(x, r, w, eps)
    assert len(calls) == 2 * len(parity.DTYPES) + 1  # the check (two small cases per dtype), then the call
    residual_rms_norm.apply(x, r, w, eps)
    assert len(calls) == 2 * len(parity.DTYPES) + 2  # no second check
    assert kernels.status()["residual_rms_norm"] == ("metal", "self-check passed")
    assert warnings_in(capsys.readouterr().err) == []


def test_prefill_sizes_never_trigger_the_check(on_metal, monkeypatch):
    calls = good_kernel(monkeypatch, residual_rms_norm)
    x = parity.rand((1, 9, 64), mx.float32, 1)  # more rows than decode: the reference, no gate
    residual_rms_norm.apply(x, x, mx.ones((64,)), 1e-5)
    assert calls == [] and kernels.status()["residual_rms_norm"][0] == gate.UNDECIDED


def test_references_only_skips_kernels_and_checks(on_metal, monkeypatch):
    calls = good_kernel(monkeypatch, residual_rms_norm)
    with kernels.references_only():
        residual_rms_norm.apply(*norm_inputs())
    assert calls == [] and kernels.status()["residual_rms_norm"][0] == gate.UNDECIDED


def test_mode_on_skips_the_comparison_but_not_the_build(on_metal, monkeypatch, capsys):
    monkeypatch.setenv(gate.ENV, "on")
    mismatch(monkeypatch, lora_delta)
    fail_to_build(monkeypatch, residual_rms_norm)
    good_kernel(monkeypatch, sample_filter)
    status = kernels.decide_all()
    assert status["lora_delta"][0] == "metal" and "self-check skipped" in status["lora_delta"][1]
    assert status["residual_rms_norm"][0] == "reference" and "failed to build" in status["residual_rms_norm"][1]
    assert len(warnings_in(capsys.readouterr().err)) == 1


def test_mode_off_on_metal(on_metal, monkeypatch, capsys):
    monkeypatch.setenv(gate.ENV, "off")
    calls = good_kernel(monkeypatch, residual_rms_norm)
    residual_rms_norm.apply(*norm_inputs())
    assert calls == [] and kernels.status()["residual_rms_norm"] == ("reference", "MACLLM_KERNELS=off")
    assert warnings_in(capsys.readouterr().err) == []


# --- doctor ------------------------------------------------------------------------------------------
def test_doctor_shows_each_path_and_why(on_metal, monkeypatch, capsys):
    fail_to_build(monkeypatch, residual_rms_norm)
    mismatch(monkeypatch, lora_delta)
    good_kernel(monkeypatch, sample_filter)
    assert doctor_cmd.run(SimpleNamespace(kernels=False, json=True)) == 0
    info = json.loads(capsys.readouterr().out)["kernels"]
    assert info["sample_filter"] == {"path": "metal", "reason": "self-check passed"}
    assert info["lora_delta"]["path"] == "reference" and "mismatch" in info["lora_delta"]["reason"]
    assert info["residual_rms_norm"]["path"] == "reference" and "failed to build" in info["residual_rms_norm"]["reason"]
    assert doctor_cmd.run(SimpleNamespace(kernels=False, json=False)) == 0
    out = capsys.readouterr().out
    assert "sample_filter: metal (self-check passed)" in out
    assert "lora_delta: reference (self-check mismatch" in out
    assert "residual_rms_norm: reference (kernel failed to build or run" in out


def test_doctor_without_metal_and_with_a_bad_mode(monkeypatch, capsys):
    if mx.metal.is_available():
        pytest.skip("Metal is available")
    assert doctor_cmd.run(SimpleNamespace(kernels=False, json=False)) == 0
    assert "lora_delta: reference (no Metal)" in capsys.readouterr().out
    monkeypatch.setenv(gate.ENV, "sometimes")
    gate.forget()  # as in a fresh process
    assert doctor_cmd.run(SimpleNamespace(kernels=False, json=True)) == 0
    assert "not valid: use one of auto, on, off" in json.loads(capsys.readouterr().out)["kernels"]


# --- generation still gives the reference's tokens ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_llama_gguf):
    return load_model(str(tiny_llama_gguf), progress=False)


PARAMS = [GenerationParams(max_tokens=8), GenerationParams(max_tokens=10, temperature=1.2, top_k=40, top_p=0.9,
                                                           min_p=0.01, seed=5)]


def tokens(tiny) -> list[list[int]]:
    ids = tiny.tokenizer.encode("hello world user")
    return [generate(tiny.model, tiny.tokenizer, ids, p).token_ids for p in PARAMS]


@pytest.mark.parametrize("kernel_kind", ["build_error", "mismatch", "good"])
def test_generation_gives_the_reference_tokens(tiny, on_metal, monkeypatch, capsys, kernel_kind):
    with monkeypatch.context() as plain:
        plain.setattr(gate, "metal_available", lambda: False)
        want = tokens(tiny)
    gate.forget()
    for module in KERNELS.values():
        {"build_error": fail_to_build, "mismatch": mismatch, "good": good_kernel}[kernel_kind](monkeypatch, module)
    assert tokens(tiny) == want
    used = {name for name, (path, _) in kernels.status().items() if path != gate.UNDECIDED}
    assert used == {"sample_filter", "residual_rms_norm"}  # no adapter: lora_delta never ran
    paths = {kernels.status()[name][0] for name in used}
    assert paths == ({"metal"} if kernel_kind == "good" else {"reference"})
    assert len(warnings_in(capsys.readouterr().err)) == (0 if kernel_kind == "good" else 2)


def test_the_check_runs_on_the_engine_thread(tiny_llama_gguf, on_metal, monkeypatch):
    calls = good_kernel(monkeypatch, residual_rms_norm)
    engine = Engine(str(tiny_llama_gguf), progress=False)
    try:
        assert calls == []  # loading uses no kernel
        list(engine.generate("hello world", GenerationParams(max_tokens=3)))
    finally:
        engine.close()
    assert calls and set(calls) == {"macllm-engine"}
    assert kernels.status()["residual_rms_norm"] == ("metal", "self-check passed")
