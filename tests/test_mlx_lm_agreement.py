"""Our model against mlx-lm on the real SmolLM2, through an mlx-lm folder that we write ourselves.

mlx-lm runs the same MLX kernels on the same quantized weights, so our keep_quantized path should pick
the same greedy tokens almost everywhere; the float32 path differs only by rounding. This also shows
that folders from save_mlx_folder load in mlx-lm with the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest

from tests.conftest import SMOLLM_PATHS, quantized_subset, took_path
from tests.test_reference_llamacpp import load_reference, teacher_forced_argmax

MIN_AGREEMENT = 0.99
GENERATED_TOKENS = 20
GENERATION_PROMPTS = ("prose", "chat_code")  # raw text and chat markup; neither ends within 20 tokens

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def reference(smollm_gguf) -> dict:
    return load_reference(smollm_gguf)


def write_mlx_lm_folder(gguf: Path, out: Path, dequantize: bool) -> Path:
    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.loader import read_model_files
    from macllm.quant.weights import dequantize_all

    cfg, weights, tokenizer, rope_periods = read_model_files(gguf)
    assert rope_periods is None, "mlx-lm could not be given custom RoPE periods"
    if dequantize:  # the same values in float32: what our CPU fast path computes with
        weights = dequantize_all(weights, cfg.quantization)
        cfg.quantization = None
    return save_mlx_folder(cfg, weights, tokenizer, out)


@pytest.fixture(scope="module")
def mlx_lm_folder(smollm_gguf, tmp_path_factory) -> Path:
    return write_mlx_lm_folder(Path(smollm_gguf), tmp_path_factory.mktemp("mlx-lm") / "smollm2", False)


@pytest.fixture(scope="module")
def mlx_lm_model(mlx_lm_folder):
    """(model, tokenizer) as mlx-lm loads our folder (weights as stored, 4-bit)."""
    import mlx_lm

    return mlx_lm.load(str(mlx_lm_folder))


@pytest.fixture(scope="module")
def mlx_lm_float32_model(smollm_gguf, tmp_path_factory):
    import mlx_lm

    folder = write_mlx_lm_folder(Path(smollm_gguf), tmp_path_factory.mktemp("mlx-lm-f32") / "smollm2", True)
    return mlx_lm.load(str(folder))


_PICKS: dict[tuple[int, str], list[int]] = {}  # (peer model, prompt) -> its picks: mlx-lm's 4-bit run is slow


def mlx_lm_picks(model, prompts) -> list[list[int]]:
    """mlx-lm's teacher-forced argmax per prompt, computed once per model and prompt for the module (the
    default and quantized paths both compare with the 4-bit peer; its CPU quantized matmul is ~0.5 Gparam/s)."""
    for p in prompts:
        key = (id(model), p["name"])
        if key not in _PICKS:
            _PICKS[key] = teacher_forced_argmax(model, p["prompt_ids"], p["continuation_ids"])
    return [_PICKS[(id(model), p["name"])] for p in prompts]


def test_mlx_lm_tokenizer_matches_ours(mlx_lm_model, smollm, reference):
    _, mlx_tokenizer = mlx_lm_model
    for p in reference["prompts"]:
        # encode() with its defaults is what mlx-lm itself does with a raw prompt.
        assert mlx_tokenizer.encode(p["text"]) == smollm.tokenizer.encode(p["text"]), p["name"]


@pytest.mark.parametrize("path", sorted(SMOLLM_PATHS))
def test_teacher_forced_agreement_with_mlx_lm(path, request, reference):
    """Like with like: our 4-bit paths (MLX's quantized matmul; the default, our CPU kernel where built)
    vs mlx-lm on the 4-bit weights, our float32 path vs mlx-lm on the same weights dequantized to float32."""
    loaded = request.getfixturevalue(SMOLLM_PATHS[path])
    assert took_path(path, loaded.info.compute), loaded.info.compute
    float_peer = loaded.info.compute.startswith("float32")
    peer = request.getfixturevalue("mlx_lm_float32_model" if float_peer else "mlx_lm_model")[0]
    prompts = quantized_subset(reference["prompts"]) if path == "quantized" else reference["prompts"]
    lines, matched, total = [], 0, 0
    for p, theirs in zip(prompts, mlx_lm_picks(peer, prompts), strict=True):
        ours = teacher_forced_argmax(loaded.model, p["prompt_ids"], p["continuation_ids"])
        misses = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        lines.append(f"  {p['name']:11s} {len(ours) - len(misses):2d}/{len(ours)}"
                     + (f"  differs at {misses}" if misses else ""))
        matched, total = matched + len(ours) - len(misses), total + len(ours)
    overall = matched / total
    table = "\n".join(lines + [f"  overall     {matched}/{total} = {overall:.2%}"])
    print(f"\nours ({loaded.info.compute}) vs mlx-lm ({path}), teacher forced:\n{table}")
    assert overall >= MIN_AGREEMENT, f"agreement {overall:.2%} < {MIN_AGREEMENT:.0%}\n{table}"


def mlx_lm_greedy(model, prompt_ids: list[int], n: int, eos: set[int]) -> list[int]:
    """mlx-lm's greedy tokens (its default sampler is argmax), cut after the first end-of-sequence token
    as our generation loop stops there."""
    from mlx_lm.generate import generate_step

    out = []
    for token, _ in generate_step(mx.array(prompt_ids), model, max_tokens=n):
        out.append(int(token))
        if out[-1] in eos:
            break
    return out


@pytest.mark.parametrize("path", ["quantized", "default"])
@pytest.mark.parametrize("name", GENERATION_PROMPTS)
def test_greedy_generation_matches_mlx_lm(name, path, reference, request):
    """The decode loop: MLX's quantized matmul and the default path (our CPU kernel where built) against
    mlx-lm on the 4-bit weights; a default path without the kernel (float32) against mlx-lm in float32."""
    from macllm.generation import GenerationParams, generate

    loaded = request.getfixturevalue(SMOLLM_PATHS[path])
    prompt = next(p for p in reference["prompts"] if p["name"] == name)
    tokenizer = loaded.tokenizer
    ours = generate(loaded.model, tokenizer, prompt["prompt_ids"],
                    GenerationParams(max_tokens=GENERATED_TOKENS)).token_ids
    peer = "mlx_lm_float32_model" if loaded.info.compute.startswith("float32") else "mlx_lm_model"
    theirs = mlx_lm_greedy(request.getfixturevalue(peer)[0], prompt["prompt_ids"], GENERATED_TOKENS,
                           tokenizer.eos_token_ids)
    assert ours == theirs, f"{name}: ours {tokenizer.decode(ours)!r} vs mlx-lm {tokenizer.decode(theirs)!r}"
