"""Record reference sentence embeddings from sentence-transformers, for tests/test_bert_reference.py and
tests/test_embeddinggemma.py, so the tests need no torch.

Run it with a Python that has torch (CPU) and sentence-transformers (dev tools, not dependencies):
    pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install sentence-transformers
    python scripts/record_embeddings.py --model ~/.local/share/macllm/models/minilm-l6
    python scripts/record_embeddings.py --model ~/.local/share/macllm/models/embeddinggemma-300m \
        --out tests/data/embeddinggemma_reference.npz
The model folder is the one `macllm pull NAME` writes. A model with prompts (EmbeddingGemma) is recorded
twice: texts as documents (`embeddings`, its "document" prompt) and as queries (`query_embeddings`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# Varied on purpose: short/long, code, Markdown, numbers, accents, CJK, emoji, empty-ish, over-long.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I undo the last git commit without losing my changes?",
    "SQLite's write-ahead log lets readers continue while a writer commits.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "# Deploying with Docker\n\nBuild the image, then run it with `docker run -p 8000:8000 app`.",
    "| column | type |\n|---|---|\n| id | integer |\n| name | text |",
    "Meeting notes 2024-03-14: budget approved, launch moved to Q3.",
    "Café, naïve façade, São Paulo and Zürich: accents should not break tokenisation.",
    "注意力機制讓每個詞都能看到句子中的其他詞。",
    "日本語のテキストも埋め込みできるか確認します。",
    "Embeddings map sentences to vectors so similar meanings land close together.",
    "I love this! 🎉🚀 Best day ever.",
    "a",
    "   leading and trailing spaces   ",
    "UPPERCASE TEXT SHOULD MATCH LOWERCASE TEXT AFTER NORMALISATION",
    "https://example.com/path?query=1&other=two#fragment",
    "Error: ModuleNotFoundError: No module named 'numpy'",
    "The mitochondria is the powerhouse of the cell.",
    "Reciprocal rank fusion combines keyword and vector search results.",
    "SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > 1;",
    "Tab\tseparated\tvalues\nand new lines\r\nmixed together",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    " ".join(f"word{i} is part of a very long note that goes on" for i in range(120)),  # > 256 tokens
]


def main() -> None:
    from sentence_transformers import SentenceTransformer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a sentence-transformers model folder")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/data/minilm_reference.npz"))
    args = parser.parse_args()
    model = SentenceTransformer(args.model, device="cpu")
    arrays = {"texts": np.array(TEXTS), "max_seq_length": np.array(model.max_seq_length)}
    prompts = {"embeddings": "document", "query_embeddings": "query"} if model.prompts.get("query") else \
        {"embeddings": None}
    for key, prompt_name in prompts.items():
        vectors = model.encode(TEXTS, batch_size=1, normalize_embeddings=True, convert_to_numpy=True,  # no padding
                               prompt_name=prompt_name)
        arrays[key] = vectors.astype(np.float32)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {len(TEXTS)} x {len(prompts)} embeddings of {vectors.shape[1]} dims to {args.out}")


if __name__ == "__main__":
    main()
