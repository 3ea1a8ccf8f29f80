"""mlx-lm's teacher-forced picks and greedy tokens on the real SmolLM2, recorded once
(tests/data/smollm2_mlx_lm_reference.json).

mlx-lm's 4-bit matmul on the CPU backend runs ~0.5 Gparam/s: computing its picks for the 13 prompts took ~2 min
of every suite run. scripts/record_mlx_lm_reference.py records them; tests/test_mlx_lm_agreement.py compares our
side with the recording, and recomputes one prompt per peer live (picks; greedy tokens on the float32 peer) on
the folders written in that run, so the recording cannot drift unseen from the installed mlx-lm or from our
folder writer and dequantizer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.test_reference_llamacpp import teacher_forced_argmax

RECORDING = Path(__file__).resolve().parent / "data" / "smollm2_mlx_lm_reference.json"
# The two peers: mlx-lm on the weights as stored (4-bit), and on the same weights dequantized to float32.
PEERS = {"4-bit": False, "float32": True}  # name -> dequantize
RERUN = "rerun scripts/record_mlx_lm_reference.py"
GENERATED_TOKENS = 20
GENERATION_PROMPTS = ("prose", "chat_code")  # raw text and chat markup; neither ends within 20 tokens


def write_mlx_lm_folder(gguf: Path, out: Path, dequantize: bool) -> Path:
    """An mlx-lm folder of the GGUF, written by our save_mlx_folder (float32 when `dequantize`)."""
    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.loader import read_model_files
    from macllm.quant.weights import dequantize_all

    cfg, weights, tokenizer, rope_periods = read_model_files(gguf)
    assert rope_periods is None, "mlx-lm could not be given custom RoPE periods"
    if dequantize:  # the same values in float32: what our CPU fast path computes with
        weights = dequantize_all(weights, cfg.quantization)
        cfg.quantization = None
    return save_mlx_folder(cfg, weights, tokenizer, out)


def prompts_sha256(prompts: list[dict]) -> str:
    """The token ids the peer is fed (prompt + the llama.cpp continuation it is teacher-forced on)."""
    fed = [[p["name"], p["prompt_ids"], p["continuation_ids"]] for p in prompts]
    return hashlib.sha256(json.dumps(fed).encode()).hexdigest()


def mlx_lm_picks(model, prompts: list[dict]) -> dict[str, list[int]]:
    """mlx-lm's argmax at each continuation position of each prompt, live (one forward per prompt)."""
    return {p["name"]: teacher_forced_argmax(model, p["prompt_ids"], p["continuation_ids"]) for p in prompts}


def mlx_lm_greedy(model, prompt_ids: list[int], eos: set[int], n: int = GENERATED_TOKENS) -> list[int]:
    """mlx-lm's greedy tokens (its default sampler is argmax), cut after the first end-of-sequence token
    as our generation loop stops there."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    out: list[int] = []
    for token, _ in generate_step(mx.array(prompt_ids), model, max_tokens=n):
        out.append(int(token))
        if out[-1] in eos:
            break
    return out


def load_recording(reference: dict) -> dict:
    """The recording; the test fails when it was made from another model or other prompts than the llama.cpp
    reference's (the reference itself is checked against the tested GGUF)."""
    recording = json.loads(RECORDING.read_text(encoding="utf-8"))
    if (recording["model_sha256"], recording["prompts_sha256"]) != (reference["model_sha256"],
                                                                     prompts_sha256(reference["prompts"])):
        pytest.fail(f"{RECORDING.name} was recorded from another model or other prompts than the llama.cpp "
                    f"reference's: {RERUN}", pytrace=False)
    if recording["greedy_tokens"] != GENERATED_TOKENS or set(recording["greedy"]["4-bit"]) != set(GENERATION_PROMPTS):
        pytest.fail(f"{RECORDING.name} holds other greedy generations than the test asks for: {RERUN}",
                    pytrace=False)
    return recording
