"""Our model against mlx-lm on the real SmolLM2, through an mlx-lm folder that we write ourselves.

mlx-lm runs the same MLX kernels on the same quantized weights, so our keep_quantized path should pick
the same greedy tokens almost everywhere; the float32 path differs only by rounding. This also shows
that folders from save_mlx_folder load in mlx-lm with the same tokenizer.

mlx-lm's teacher-forced picks and greedy tokens come from tests/data/smollm2_mlx_lm_reference.json (its 4-bit
CPU path is slow; see tests/mlx_lm_reference.py); the tokenizer, one prompt per peer and one greedy generation
run mlx-lm live against the recording.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SMOLLM_PATHS, quantized_subset, took_path
from tests.mlx_lm_reference import (
    GENERATED_TOKENS,
    GENERATION_PROMPTS,
    PEERS,
    RERUN,
    load_recording,
    mlx_lm_greedy,
    mlx_lm_picks,
    write_mlx_lm_folder,
)
from tests.test_reference_llamacpp import agreement_table, load_reference, smollm_picks

MIN_AGREEMENT = 0.99
# Greedy texts may part where the two best tokens are this close in our logits: summation order alone moves
# logits by this much. On the chat_code prompt the first token's two best are 0.12 apart, and the prompt's
# matmuls (OpenBLAS) pick one or the other depending on the CPU: Zen 4 gave mlx-lm's, Zen 5 the other.
NEAR_TIE = 0.25
PEER_MODELS = {"4-bit": "mlx_lm_model", "float32": "mlx_lm_float32_model"}

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def reference(smollm_gguf) -> dict:
    return load_reference(smollm_gguf)


@pytest.fixture(scope="module")
def recording(reference) -> dict:
    return load_recording(reference)


@pytest.fixture(scope="module")
def mlx_lm_model(smollm_gguf, tmp_path_factory):
    """(model, tokenizer) as mlx-lm loads our folder (weights as stored, 4-bit)."""
    import mlx_lm

    folder = write_mlx_lm_folder(Path(smollm_gguf), tmp_path_factory.mktemp("mlx-lm") / "smollm2", PEERS["4-bit"])
    return mlx_lm.load(str(folder))


@pytest.fixture(scope="module")
def mlx_lm_float32_model(smollm_gguf, tmp_path_factory):
    import mlx_lm

    folder = write_mlx_lm_folder(Path(smollm_gguf), tmp_path_factory.mktemp("mlx-lm-f32") / "smollm2",
                                 PEERS["float32"])
    return mlx_lm.load(str(folder))


def peer_of(compute: str) -> str:
    """Like with like: a float32 path against mlx-lm in float32, a 4-bit path against mlx-lm on 4-bit."""
    return "float32" if compute.startswith("float32") else "4-bit"


def test_mlx_lm_tokenizer_matches_ours(mlx_lm_model, smollm, reference):
    _, mlx_tokenizer = mlx_lm_model
    for p in reference["prompts"]:
        # encode() with its defaults is what mlx-lm itself does with a raw prompt.
        assert mlx_tokenizer.encode(p["text"]) == smollm.tokenizer.encode(p["text"]), p["name"]


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_the_recorded_picks_are_what_the_installed_mlx_lm_computes(peer, request, reference, recording):
    """The shortest prompt live, on folders written by this checkout: a new mlx-lm, or a change to our folder
    writer or dequantizer that moves mlx-lm's picks, fails here instead of leaving the recording stale."""
    prompt = min(reference["prompts"], key=lambda p: len(p["prompt_ids"]))
    live = mlx_lm_picks(request.getfixturevalue(PEER_MODELS[peer])[0], [prompt])[prompt["name"]]
    recorded = recording["peers"][peer][prompt["name"]]
    assert live == recorded, (f"{peer} mlx-lm on {prompt['name']!r}: live {live} vs recorded {recorded} "
                              f"(mlx-lm {recording['mlx_lm_version']}, mlx {recording['mlx_version']}): {RERUN}")


@pytest.mark.parametrize("path", sorted(SMOLLM_PATHS))
def test_teacher_forced_agreement_with_mlx_lm(path, request, reference, recording, float_activations):
    """Like with like: our 4-bit paths (MLX's quantized matmul; the default, our CPU kernel where built)
    vs mlx-lm on the 4-bit weights, our float32 path vs mlx-lm on the same weights dequantized to float32.
    Our kernel runs on float activations here, as mlx-lm does: teacher forcing is one prompt, which on int8
    activations (the default below 160 rows on AVX-512 VNNI CPUs) rounds like llama.cpp, and is held to
    llama.cpp by tests/test_reference_llamacpp.py (98.56% against mlx-lm that way, under this test's 99%)."""
    loaded = request.getfixturevalue(SMOLLM_PATHS[path])
    assert took_path(path, loaded.info.compute), loaded.info.compute
    peer = peer_of(loaded.info.compute)
    prompts = quantized_subset(reference["prompts"]) if path == "quantized" else reference["prompts"]
    overall, table = agreement_table(prompts, smollm_picks(path, loaded, prompts),
                                     [recording["peers"][peer][p["name"]] for p in prompts])
    print(f"\nours ({loaded.info.compute}) vs mlx-lm ({peer}, recorded), teacher forced:\n{table}")
    assert overall >= MIN_AGREEMENT, f"agreement {overall:.2%} < {MIN_AGREEMENT:.0%}\n{table}"


def test_the_recorded_greedy_tokens_are_what_the_installed_mlx_lm_generates(mlx_lm_float32_model, smollm,
                                                                          reference, recording):
    """mlx-lm's generate_step live on the float32 peer (its 4-bit path is too slow to rerun each time): a change
    in its decode loop fails here instead of leaving the recorded generations stale."""
    prompt = next(p for p in reference["prompts"] if p["name"] == GENERATION_PROMPTS[0])
    live = mlx_lm_greedy(mlx_lm_float32_model[0], prompt["prompt_ids"], smollm.tokenizer.eos_token_ids)
    recorded = recording["greedy"]["float32"][prompt["name"]]
    assert live == recorded, f"float32 mlx-lm greedy on {prompt['name']!r}: live {live} vs recorded {recorded}: {RERUN}"


@pytest.mark.parametrize("path", ["quantized", "default"])
@pytest.mark.parametrize("name", GENERATION_PROMPTS)
def test_greedy_generation_matches_mlx_lm(name, path, reference, recording, request):
    """The decode loop: MLX's quantized matmul and the default path (our CPU kernel where built) against
    mlx-lm on the 4-bit weights; a default path without the kernel (float32) against mlx-lm in float32.
    Identical, or parting only where our own logits call it a near tie (see NEAR_TIE)."""
    from macllm.generation import GenerationParams, TokenEvent, stream_generate

    loaded = request.getfixturevalue(SMOLLM_PATHS[path])
    prompt = next(p for p in reference["prompts"] if p["name"] == name)
    tokenizer = loaded.tokenizer
    events = [e for e in stream_generate(loaded.model, tokenizer, prompt["prompt_ids"],
                                         GenerationParams(max_tokens=GENERATED_TOKENS, top_alternatives=5))
              if isinstance(e, TokenEvent)]
    ours = [e.token_id for e in events]
    theirs = recording["greedy"][peer_of(loaded.info.compute)][name]
    if ours == theirs:
        return
    at = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    margin = events[at].logprob - dict(events[at].alternatives or []).get(theirs[at], float("-inf"))
    assert margin <= NEAR_TIE, (f"{name}: ours {tokenizer.decode(ours)!r} vs mlx-lm {tokenizer.decode(theirs)!r}: "
                                f"they part at token {at}, where mlx-lm's pick is {margin:.3f} logits below ours")
