"""Record reference sentence embeddings from sentence-transformers, for tests/test_bert_reference.py.

Run it with a Python that has torch and sentence-transformers (kept out of the project's venv), e.g.:
    python3 -m venv /tmp/st-venv && /tmp/st-venv/bin/pip install torch sentence-transformers
    /tmp/st-venv/bin/python scripts/record_embeddings.py --model ~/.local/share/macllm/models/minilm-l6
The model folder is the one `macllm pull minilm-l6` writes. Output: tests/data/minilm_reference.npz.
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
    vectors = model.encode(TEXTS, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    np.savez_compressed(args.out, texts=np.array(TEXTS), embeddings=vectors.astype(np.float32),
                        max_seq_length=np.array(model.max_seq_length))
    print(f"wrote {len(TEXTS)} embeddings of {vectors.shape[1]} dims to {args.out}")


if __name__ == "__main__":
    main()
