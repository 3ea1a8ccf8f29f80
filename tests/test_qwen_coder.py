"""The real Qwen2.5-Coder Instruct models of the catalog against llama.cpp, an independent implementation.

The references (tests/data/qwen_coder_*_llamacpp_reference.json) come from
`scripts/record_reference.py --catalog qwen2.5-coder-0.5b` (and -1.5b). Tokenization must match exactly.
The model is checked by teacher forcing, as tests/test_reference_llamacpp.py does for SmolLM2: on llama.cpp's
own greedy continuations and on a fixed code text, our argmax must pick llama.cpp's token at >= 95% of
positions. Only the 0.5B runs here (its one-time import is cached in the test cache, so later loads are
quick); the 1.5B shares its tokenizer, so its recorded ids are checked with the 0.5B's tokenizer.

The 1.5B is llama.cpp's usual Q4_K_M mix (Q4_K and Q6_K only): mx.load reads that file without complaint but
decodes Q4_K wrongly, so such files must take the import too; a tiny file written here checks that (unit).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from macllm.formats.gguf_model import NeedsImport, load_gguf_model
from macllm.hub.catalog import CATALOG
from macllm.loader import load_model
from tests.conftest import took_path
from tests.test_qwen3 import QWEN3, mlx_lm_model, vocab_config
from tests.test_qwen3_gguf import write_gguf
from tests.test_reference_llamacpp import continuation_agreement

DATA = Path(__file__).resolve().parent / "data"
REFERENCES = {"qwen2.5-coder-0.5b": DATA / "qwen_coder_0.5b_llamacpp_reference.json",
              "qwen2.5-coder-1.5b": DATA / "qwen_coder_1.5b_llamacpp_reference.json"}
MIN_AGREEMENT = 0.95
# Q4_K / Q6_K blocks hold 256 weights: every k-quant matrix's rows must be a multiple of that.
KQUANT_QWEN3 = dict(QWEN3, hidden_size=256, head_dim=64, intermediate_size=256)


def load_reference(name: str) -> dict:
    path = REFERENCES[name]
    if not path.is_file():
        pytest.skip(f"no llama.cpp reference recorded for {name}")
    data = json.loads(path.read_text(encoding="utf-8"))
    # pull() checks the file against the catalog's sha256, so this ties the reference to the tested bytes.
    assert data["model_sha256"] == CATALOG[name].sha256, f"{path.name} was recorded from another file"
    return data


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_reference("qwen2.5-coder-0.5b")


@pytest.mark.real_model
def test_reference_covers_chat_fim_and_code(reference):
    names = {p["name"] for p in reference["prompts"]}
    assert {"qwen_chat", "fim", "code", "cjk", "emoji"} <= names
    assert all(len(p["continuation_ids"]) == 32 for p in reference["prompts"])
    text = reference["teacher_forced_text"]
    assert len(text["ids"]) == len(text["argmax_ids"]) >= 200


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_tokenizer_matches_llamacpp(name, qwen_coder_gguf):
    """Both sizes share one tokenizer: the 0.5B's must give llama.cpp's ids for each model's reference."""
    from macllm.loader import read_tokenizer

    data = load_reference(name)
    tokenizer = read_tokenizer(qwen_coder_gguf)
    for p in data["prompts"]:
        assert tokenizer.encode(p["text"]) == p["prompt_ids"], f"prompt {p['name']!r}: {p['text']!r}"
    assert tokenizer.encode(data["teacher_forced_text"]["text"]) == data["teacher_forced_text"]["ids"]


@pytest.mark.real_model
def test_runs_our_own_qwen2_on_the_default_cpu_path(qwen_coder):
    """Its 4/5/8-bit layers through our CPU kernel where it is built, else float32."""
    info = qwen_coder.info
    assert (info.architecture, info.implementation) == ("qwen2", "own")
    assert took_path("default", info.compute), info.compute


@pytest.mark.real_model
def test_teacher_forced_agreement_on_llamacpp_continuations(qwen_coder, reference):
    overall, table = continuation_agreement(qwen_coder.model, reference["prompts"])
    print(f"\nQwen2.5-Coder 0.5B ({qwen_coder.info.compute}) vs llama.cpp, teacher forced:\n{table}")
    assert overall >= MIN_AGREEMENT, f"agreement {overall:.2%} < {MIN_AGREEMENT:.0%}\n{table}"


@pytest.mark.real_model
def test_teacher_forced_agreement_on_a_code_text(qwen_coder, reference):
    text = reference["teacher_forced_text"]
    logits = qwen_coder.model(mx.array([text["ids"]]))
    ours = mx.argmax(logits[0], axis=-1).tolist()
    misses = [i for i, (a, b) in enumerate(zip(ours, text["argmax_ids"], strict=True)) if a != b]
    agreement = 1 - len(misses) / len(ours)
    print(f"\ncode text: {len(ours) - len(misses)}/{len(ours)} = {agreement:.2%}, differs at {misses}")
    assert agreement >= MIN_AGREEMENT, f"agreement {agreement:.2%}, differs at {misses}"


def test_a_q4_k_m_file_is_imported_not_decoded_by_mlx(tmp_path, monkeypatch):
    """Q4_K and Q6_K only, no type mx.load refuses: still imported, and every weight is what the file holds."""
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    config = vocab_config(KQUANT_QWEN3)
    path = tmp_path / "q4_k_m.gguf"
    stored = write_gguf(mlx_lm_model(config), config, path, "F32", {"attn_q": "Q4_K", "ffn_down": "Q6_K"})
    with pytest.raises(NeedsImport, match="Q4_K, Q6_K"):
        load_gguf_model(path)
    # The float32 path: its parameters are the imported values themselves (the kernel path keeps them packed).
    ours = dict(tree_flatten(load_model(str(path), progress=False, cpu_kernel=False).model.parameters()))
    for name, value in stored.items():
        error = np.abs(np.array(ours[name]) - value).max() / max(np.abs(value).max(), 1e-30)
        # Q4_K moves across with float16 group scales; Q6_K and F32 matrices are re-quantized at 8 bits.
        assert error <= (1e-3 if "q_proj" in name else 5e-3), (name, error)
