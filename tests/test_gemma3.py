"""Gemma 3: our model against mlx-lm's gemma3_text on the same tiny weights, the sliding-window cache,
k-quant GGUF import (cached), the SentencePiece tokenizer; and the real Gemma 3 270M against llama.cpp."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlx.core as mx
import pytest

from tests import tiny_gemma3
from tests.conftest import TEST_HOME, env_set, optional_shared_data, pull_for_tests

REFERENCE = Path(__file__).resolve().parent / "data" / "gemma3_llamacpp_reference.json"
TOKENS = [2, 270, 280, 290, 275, 285, 262, 293, 281, 289, 265, 271, 295, 288, 277, 268, 291, 284, 279, 296]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return tiny_gemma3.write_folder(tmp_path_factory.mktemp("gemma") / "tiny-gemma3")


@pytest.fixture(scope="module")
def ours(tiny_folder):
    from macllm.loader import load_model

    return load_model(str(tiny_folder), progress=False)


def test_matches_mlx_lm_gemma3_text(tiny_folder, ours):
    """20 tokens with a window of 8: sliding and global layers both matter."""
    from mlx_lm import load

    theirs, _ = load(str(tiny_folder))
    # mlx-lm rounds sqrt(hidden) to bfloat16; we keep float32 like llama.cpp. Compare like with like.
    body = ours.model.model
    saved = body.embed_scale
    body.embed_scale = mx.array(tiny_gemma3.DIMS["hidden_size"] ** 0.5, mx.bfloat16).item()
    try:
        a = ours.model(mx.array([TOKENS]))
    finally:
        body.embed_scale = saved
    b = theirs(mx.array([TOKENS])).astype(mx.float32)
    assert mx.allclose(a, b, atol=2e-4, rtol=1e-4).item(), mx.abs(a - b).max().item()


def test_cached_decoding_equals_one_pass(ours):
    """Prefill 5, then one token at a time past the window: same logits as the full forward."""
    from macllm.cache import make_cache
    from macllm.cache.sliding import SlidingWindowCache

    model = ours.model
    full = model(mx.array([TOKENS]))[0]
    cache = make_cache(model)
    assert isinstance(cache[0], SlidingWindowCache) and not isinstance(cache[5], SlidingWindowCache)
    steps = [model(mx.array([TOKENS[:5]]), cache=cache)[0]]
    for t in TOKENS[5:]:
        steps.append(model(mx.array([[t]]), cache=cache)[0])
    assert mx.allclose(mx.concatenate(steps), full, atol=1e-4).item()


def test_sliding_cache_stays_bounded_and_trims():
    from macllm.cache.sliding import SlidingWindowCache

    c = SlidingWindowCache(window=8)
    for _ in range(2000):
        k, _ = c.update(mx.zeros((1, 1, 1, 4)), mx.zeros((1, 1, 1, 4)))
        assert k.shape[2] <= 8
    assert c.offset == 2000 and c.keys.shape[2] <= 8 + c.slack + 2 * c.step
    assert c.can_trim(10) and not c.can_trim(1000)


@pytest.mark.usefixtures("float_activations")
def test_kquant_gguf_imports_once_and_agrees_with_exact_dequantization(tmp_path, monkeypatch):
    from macllm.formats.gguf_import import import_cache_path
    from macllm.formats.gguf_model import load_gguf_dequantized
    from macllm.loader import build_model, load_model

    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    path = tiny_gemma3.write_gguf(tmp_path / "tiny-gemma3.gguf")
    stale = import_cache_path(path).parent / import_cache_path(path).name.rsplit("-", 1)[0]
    (stale / "model.safetensors").parent.mkdir(parents=True)  # an import by the first recipe
    (stale / "config.json").write_text("{}")
    t0 = time.perf_counter()
    first = load_model(str(path), progress=False)
    t1 = time.perf_counter()
    assert (import_cache_path(path) / "config.json").is_file()
    assert not stale.exists()  # replaced, not left behind
    second = load_model(str(path), progress=False)
    t2 = time.perf_counter()
    print(f"\ntiny gemma3 GGUF: first load {t1 - t0:.2f}s, second {t2 - t1:.2f}s")
    quant = json.loads((import_cache_path(path) / "config.json").read_text())["quantization"]
    assert quant["group_size"] == 32

    def bits(layer):
        return quant.get(f"model.layers.0.{layer}", quant)["bits"]

    # Affine types move across exactly at their own width; Q6_K is re-quantized to 8 bits.
    assert bits("self_attn.q_proj") == 5  # Q5_0
    assert bits("self_attn.o_proj") == 4  # Q4_K
    assert bits("mlp.up_proj") == 5  # Q5_K
    assert bits("self_attn.v_proj") == 8  # Q8_0
    assert bits("mlp.down_proj") == 8  # Q6_K -> 8 bits

    cfg, weights, _, _ = load_gguf_dequantized(path)
    exact, _ = build_model(cfg, weights)
    ids = mx.array([TOKENS])
    a, b, c = exact(ids), first.model(ids), second.model(ids)
    assert mx.array_equal(b, c).item()
    assert mx.argmax(a, -1).tolist() == mx.argmax(b, -1).tolist()

    # Weight by weight: Q5_0 and Q8_0 come across bit-exact; Q4_K and Q5_K up to their float16 scales;
    # only Q6_K (groups of 16, no exact MLX layout) is re-quantized.
    from macllm.loader import read_model_files
    from macllm.quant.weights import dequantize_all

    icfg, iweights, _, _ = read_model_files(import_cache_path(path))
    imported = dequantize_all(iweights, icfg.quantization)

    def error(layer):
        key = f"model.layers.0.{layer}.weight"
        return (mx.abs(imported[key] - weights[key]).max() / mx.abs(weights[key]).max()).item()

    assert error("self_attn.q_proj") == error("self_attn.v_proj") == 0.0
    assert mx.array_equal(imported["model.embed_tokens.weight"], weights["model.embed_tokens.weight"]).item()
    assert error("self_attn.o_proj") < 1e-3 and error("mlp.up_proj") < 1e-3
    assert 0 < error("mlp.down_proj") < 1 / 255
    # Norms are read back as Gemma's w (the file stores 1 + w).
    assert abs(weights["model.norm.weight"].mean().item()) < 0.1


def test_spm_tokenizer_merges_by_score_and_falls_back_to_bytes():
    from macllm.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf_metadata(tiny_gemma3.gguf_tokenizer_metadata())
    pieces = lambda text: [tok.token_string(i) for i in tok.encode(text)]  # noqa: E731
    assert pieces(" the cat") == ["<bos>", "▁the", "▁cat"]
    assert pieces("é") == ["<bos>", "<0xC3>", "<0xA9>"]  # not in the vocabulary: UTF-8 bytes
    assert pieces("<start_of_turn>hello") == ["<bos>", "<start_of_turn>", "he", "ll", "o"]
    assert tok.decode(tok.encode(" the cat é"), skip_special=True) == " the cat é"


# ---------------------------------------------------------------- the real Gemma 3 270M vs llama.cpp


@pytest.fixture(scope="module")
def gemma_gguf() -> Path:
    return pull_for_tests("gemma3-270m")


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.mark.real_model
def test_real_tokenizer_matches_llamacpp(gemma_gguf, reference):
    from macllm.loader import read_tokenizer

    tok = read_tokenizer(gemma_gguf)
    assert len(reference["prompts"]) >= 8
    for p in reference["prompts"]:
        assert tok.encode(p["text"]) == p["prompt_ids"], p["name"]
    notes = optional_shared_data("notes")  # the prompts alone suffice when the notes are absent
    for n in reference["tokenized_notes"] if notes is not None else []:
        assert tok.encode((notes / n["file"]).read_text(encoding="utf-8")) == n["ids"], n["file"]


@pytest.mark.real_model
def test_real_teacher_forced_agreement_with_llamacpp(gemma_gguf, reference):
    """Float path: weights dequantized exactly as llama.cpp does; llama.cpp's quantized matmuls flip near-ties."""
    from macllm.formats.gguf_model import load_gguf_dequantized
    from macllm.loader import build_model
    from tests.test_reference_llamacpp import continuation_agreement

    cfg, weights, _, _ = load_gguf_dequantized(gemma_gguf)
    model, _ = build_model(cfg, weights)
    overall, table = continuation_agreement(model, reference["prompts"])
    print(f"\nGemma 3 270M, exact dequantized float32 vs llama.cpp, teacher forced:\n{table}")
    assert overall >= 0.95, table


@pytest.mark.real_model
def test_real_imported_model_agrees_with_llamacpp(gemma_gguf, reference):
    """The default load path (the cached import: affine types carried over exactly, Q6_K at 8 bits)."""
    from macllm.loader import load_model
    from tests.test_reference_llamacpp import continuation_agreement

    with env_set("MACLLM_HOME", str(TEST_HOME)):  # the one-time import is kept in the test cache, across runs
        loaded = load_model(str(gemma_gguf), progress=False)
    overall, table = continuation_agreement(loaded.model, reference["prompts"])
    print(f"\nGemma 3 270M as imported on load vs llama.cpp, teacher forced:\n{table}")
    assert overall >= 0.95, table
