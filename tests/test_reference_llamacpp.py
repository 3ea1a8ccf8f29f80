"""Our tokenizer and model against llama.cpp, an independent implementation, on the real SmolLM2.

The reference (tests/data/smollm2_llamacpp_reference.json) comes from scripts/record_reference.py.
Tokenization must match exactly. The model is checked by teacher forcing: feed prompt + llama.cpp's
greedy continuation once and ask whether our argmax picks llama.cpp's token at each step. llama.cpp
quantizes activations inside its Q4_1 matmuls, so near-ties may flip; a real bug drops far below 95%.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import pytest

from macllm import cpu_kernels
from tests.conftest import SMOLLM_PATHS, quantized_subset, took_path

REFERENCE = Path(__file__).resolve().parent / "data" / "smollm2_llamacpp_reference.json"
MIN_AGREEMENT = 0.95

pytestmark = pytest.mark.real_model


def teacher_forced_argmax(model, prompt_ids: list[int], continuation_ids: list[int]) -> list[int]:
    """Our greedy pick at each continuation position, given the true tokens before it (one forward)."""
    logits = model(mx.array([prompt_ids + continuation_ids]))
    # Position i predicts token i + 1: the picks for the continuation start at the prompt's last token.
    start = len(prompt_ids) - 1
    return mx.argmax(logits[0, start:start + len(continuation_ids)], axis=-1).tolist()


def model_picks(model, prompts: list[dict]) -> list[list[int]]:
    """Our teacher-forced picks for each prompt's continuation."""
    return [teacher_forced_argmax(model, p["prompt_ids"], p["continuation_ids"]) for p in prompts]


# (SMOLLM_PATHS key, "int8" or "float" activations, prompt name) -> our picks on the session's SmolLM2: the
# same forwards serve both oracles where they run on the same activations.
_SMOLLM_PICKS: dict[tuple[str, str, str], list[int]] = {}


def smollm_picks(path: str, loaded, prompts: list[dict]) -> list[list[int]]:
    """Our picks on the session-scoped SmolLM2 of `path` (tests/conftest.py's SMOLLM_PATHS), computed once per
    prompt and kind of activations for the session: this file and tests/test_mlx_lm_agreement.py compare them
    with two peers (llama.cpp on the default int8 activations, mlx-lm on float ones)."""
    activations = "int8" if cpu_kernels.int8_active() else "float"
    missing = [p for p in prompts if (path, activations, p["name"]) not in _SMOLLM_PICKS]
    for p, picks in zip(missing, model_picks(loaded.model, missing), strict=True):
        _SMOLLM_PICKS[(path, activations, p["name"])] = picks
    return [_SMOLLM_PICKS[(path, activations, p["name"])] for p in prompts]


def agreement_table(prompts: list[dict], ours: list[list[int]], theirs: list[list[int]]) -> tuple[float, str]:
    """Overall fraction of positions where our pick equals theirs, and a per-prompt table."""
    lines, matched, total = [], 0, 0
    for p, mine, other in zip(prompts, ours, theirs, strict=True):
        misses = [i for i, (a, b) in enumerate(zip(mine, other, strict=True)) if a != b]
        hits = len(mine) - len(misses)
        lines.append(f"  {p['name']:11s} {hits:2d}/{len(mine)}" + (f"  differs at {misses}" if misses else ""))
        matched, total = matched + hits, total + len(mine)
    overall = matched / total
    lines.append(f"  overall     {matched}/{total} = {overall:.2%}")
    return overall, "\n".join(lines)


def continuation_agreement(model, prompts: list[dict]) -> tuple[float, str]:
    """agreement_table of the model's picks against the recorded llama.cpp continuations."""
    return agreement_table(prompts, model_picks(model, prompts), [p["continuation_ids"] for p in prompts])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_reference(model_path: Path) -> dict:
    """The recorded reference; skips the test when `model_path` is not the file it was recorded from."""
    data = json.loads(REFERENCE.read_text(encoding="utf-8"))
    if _sha256(Path(model_path)) != data["model_sha256"]:
        pytest.skip(f"{model_path} is not the model the llama.cpp reference was recorded from")
    return data


@pytest.fixture(scope="module")
def reference(smollm_gguf) -> dict:
    return load_reference(smollm_gguf)


def test_reference_covers_varied_prompts(reference):
    prompts = reference["prompts"]
    assert len(prompts) >= 10
    assert all(len(p["continuation_ids"]) == 32 for p in prompts)
    assert any("<|im_start|>" in p["text"] for p in prompts)


def test_tokenizer_matches_llamacpp(smollm, reference):
    for p in reference["prompts"]:
        assert smollm.tokenizer.encode(p["text"]) == p["prompt_ids"], f"prompt {p['name']!r}: {p['text']!r}"


@pytest.mark.parametrize("path", sorted(SMOLLM_PATHS))
def test_teacher_forced_agreement_with_llamacpp(path, request, reference):
    """float32 fast path, MLX's quantized matmul, and the default (our CPU kernel where built)."""
    loaded = request.getfixturevalue(SMOLLM_PATHS[path])
    # Make sure each case really runs the path it names.
    assert took_path(path, loaded.info.compute), loaded.info.compute
    prompts = quantized_subset(reference["prompts"]) if path == "quantized" else reference["prompts"]
    overall, table = agreement_table(prompts, smollm_picks(path, loaded, prompts),
                                     [p["continuation_ids"] for p in prompts])
    print(f"\nours ({loaded.info.compute}) vs llama.cpp, teacher forced:\n{table}")
    assert overall >= MIN_AGREEMENT, f"agreement {overall:.2%} < {MIN_AGREEMENT:.0%}\n{table}"


def test_teacher_forced_agreement_on_the_decode_kernels(smollm, reference):
    """The default path with every position on the CPU kernel's row kernels, which decoding uses (int8
    activations where the CPU has AVX-512 VNNI), instead of the sgemm prefill that whole prompts take above."""
    from macllm import cpu_kernels

    if not cpu_kernels.enabled():
        pytest.skip(f"the CPU kernel is not in use: {cpu_kernels.status()[1]}")
    ext = cpu_kernels.extension
    before = ext.prefill_rows()
    ext.set_prefill_rows(0)  # no sgemm prefill: every row through the decode kernels
    try:
        picks = model_picks(smollm.model, reference["prompts"])
    finally:
        ext.set_prefill_rows(before)
    overall, table = agreement_table(reference["prompts"], picks, [p["continuation_ids"] for p in reference["prompts"]])
    print(f"\nours ({cpu_kernels.summary()}, row kernels only) vs llama.cpp, teacher forced:\n{table}")
    assert overall >= MIN_AGREEMENT, f"agreement {overall:.2%} < {MIN_AGREEMENT:.0%}\n{table}"
