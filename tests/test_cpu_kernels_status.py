"""What `macllm doctor` says about the CPU kernels, built or not, and the MACLLM_CPU_KERNEL switch."""

from __future__ import annotations

import json
import types

import pytest

from macllm import cpu_kernels
from tui.main import main


def doctor_json(capsys) -> dict:
    assert main(["doctor", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_doctor_says_in_one_line_why_the_kernel_is_not_used(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "extension", None)
    monkeypatch.setattr(cpu_kernels, "build_status", "build failed: no C++ compiler: install g++")
    line = doctor_json(capsys)["cpu_kernel"]
    assert line == "not used: build failed: no C++ compiler: install g++"
    assert main(["doctor"]) == 0
    assert "cpu kernel" in capsys.readouterr().out


def test_the_switch_turns_the_kernel_off_and_rejects_bad_values(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "extension", object())
    monkeypatch.setattr(cpu_kernels, "build_status", "built, test")
    monkeypatch.setenv(cpu_kernels.ENV, "off")
    assert cpu_kernels.status() == (False, "MACLLM_CPU_KERNEL=off (built, test)")
    monkeypatch.setenv(cpu_kernels.ENV, "fast")
    assert doctor_json(capsys)["cpu_kernel"] == "MACLLM_CPU_KERNEL='fast' is not valid: use one of auto, off"


@pytest.mark.parametrize(("bits", "group_size", "mode", "dims", "ok"), [
    (4, 32, "affine", 576, True), (8, 128, "affine", 1536, True), (7, 64, "affine", 512, False),
    (5, 32, "affine", 896, True),
    (4, 16, "affine", 512, False), (4, 32, "mxfp4", 512, False), (4, 64, "affine", 64 * 5000, False),
])
def test_which_layers_the_kernel_takes(monkeypatch, bits, group_size, mode, dims, ok):
    monkeypatch.setattr(cpu_kernels, "extension", object())
    assert cpu_kernels.handles(bits, group_size, mode, dims) == ok


def test_a_module_built_from_older_sources_is_not_used(monkeypatch):
    # A failed rebuild leaves the previous module: one lacking an op of these sources is refused whole.
    stale = types.SimpleNamespace(**{name: None for name in cpu_kernels.OPS if name != "causal_softmax"},
                                  isa=lambda: "avx2", threads=lambda: 1)
    monkeypatch.setattr(cpu_kernels, "_cpu_quant", stale, raising=False)
    module, why = cpu_kernels._import()
    assert module is None
    assert why == "built from older sources, without causal_softmax (scripts/setup.sh rebuilds it)"
