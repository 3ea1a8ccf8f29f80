"""Record llama.cpp's tokenization and greedy continuations of Gemma 3 270M as a reference for our tests.

Same method as scripts/record_reference.py (whose prompts and helpers it reuses), on the catalog's
Gemma 3 270M Q4_K_M GGUF, with BOS added as the file's metadata asks (tokenizer.ggml.add_bos_token).

    cd /work/main
    .venv/bin/python scripts/record_reference_gemma.py                # pulls gemma3-270m via macllm.hub
    .venv/bin/python scripts/record_reference_gemma.py path/to/gemma-3-270m-q4_k_m.gguf

It rewrites tests/data/gemma3_llamacpp_reference.json (use --out to write elsewhere).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record_reference as base  # noqa: E402

DEFAULT_OUT = base.REPO / "tests" / "data" / "gemma3_llamacpp_reference.json"

GEMMA_CHAT = ("<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n")

# SmolLM2's raw prompts minus its ChatML ones, plus Gemma's own turn markers.
PROMPTS = [(n, t) for n, t in base.PROMPTS if "<|im_start|>" not in t] + [
    ("gemma_chat", GEMMA_CHAT),
    ("long_words", "Antidisestablishmentarianism and pneumonoultramicroscopicsilicovolcanoconiosis are"),
    ("leading_space", "  two leading spaces, a trailing one "),
]


def record(model_path: Path) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=base.N_CTX, n_threads=base.N_THREADS,
                          n_threads_batch=base.N_THREADS, seed=base.SEED, logits_all=True, verbose=False)
    prompts = []
    for name, text in PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        cont = base.greedy_continuation(llm, ids, base.CONTINUATION_TOKENS)
        prompts.append({"name": name, "text": text, "prompt_ids": ids, "continuation_ids": cont})
        print(f"{name:13s} {len(ids):3d} prompt ids -> {llm.detokenize(cont).decode('utf-8', 'replace')!r}")
    # A long, varied text checks the tokenizer far beyond the prompts (no model run needed).
    sample = (base.REPO.parent / "shared" / "data" / "notes")
    notes = sorted(sample.rglob("*.md"))[:40] if sample.is_dir() else []
    tokenized_notes = [{"file": str(p.relative_to(sample)), "ids": llm.tokenize(
        p.read_text(encoding="utf-8").encode("utf-8"), add_bos=True, special=True)} for p in notes]
    return {
        "model": model_path.name,
        "model_sha256": base.sha256_of(model_path),
        "llama_cpp_python_version": llama_cpp.__version__,
        "settings": {"n_ctx": base.N_CTX, "n_threads": base.N_THREADS, "seed": base.SEED,
                     "decoding": "greedy argmax", "continuation_tokens": base.CONTINUATION_TOKENS,
                     "add_bos": True, "special": True},
        "prompts": prompts,
        "tokenized_notes": tokenized_notes,
    }


def main(argv: list[str] | None = None) -> int:
    return base.run_cli(argv, __doc__.split("\n")[0], "gemma3-270m", DEFAULT_OUT, record)


if __name__ == "__main__":
    sys.exit(main())
