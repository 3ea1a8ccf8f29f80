"""BERT encoder and Embedder on a tiny random model: pooling, batching, truncation, folder checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from macllm.errors import MacllmError
from tests.tiny_bert import write_tiny_bert


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory):
    from macllm.rag.embedder import Embedder

    return Embedder(write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert"))


def _reference_mean_pool(embedder, text: str) -> np.ndarray:
    """One text alone, no padding: the plain definition of mean pooling + L2 norm."""
    import mlx.core as mx

    ids = embedder.tokenizer.encode(text).ids
    hidden = np.array(embedder.encoder(mx.array([ids]), mx.ones((1, len(ids)))))[0]
    pooled = hidden.mean(axis=0)
    return pooled / np.linalg.norm(pooled)


def test_vectors_are_unit_length_and_batching_does_not_change_them(tiny_embedder):
    texts = ["the cat", "a much longer note about python code and sqlite search", "dog", "x y z " * 5]
    batched = tiny_embedder.embed(texts)
    assert batched.shape == (4, tiny_embedder.dim) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    for text, row in zip(texts, batched, strict=True):
        np.testing.assert_allclose(row, _reference_mean_pool(tiny_embedder, text), atol=1e-5)


def test_padding_mask_is_respected(tiny_embedder):
    short = tiny_embedder.embed(["cat"])[0]
    with_long_neighbour = tiny_embedder.embed(["cat", "dog " * 40])[0]
    np.testing.assert_allclose(short, with_long_neighbour, atol=1e-5)


def test_long_inputs_are_truncated_and_counted(tiny_embedder):
    tiny_embedder.truncated = 0
    long_text = "note " * 500
    vectors = tiny_embedder.embed([long_text, "short"])
    assert tiny_embedder.truncated == 1
    assert tiny_embedder.max_tokens == 64 and tiny_embedder.content_limit == 62
    assert tiny_embedder.count_tokens([long_text]) == [500]  # counting never truncates
    assert np.isfinite(vectors).all()


def test_empty_input_and_empty_text(tiny_embedder):
    assert tiny_embedder.embed([]).shape == (0, tiny_embedder.dim)
    assert np.isfinite(tiny_embedder.embed([""])).all()


def test_id_tells_models_apart(tmp_path, tiny_embedder):
    from macllm.rag.embedder import Embedder

    other = Embedder(write_tiny_bert(tmp_path / "other", seed=1))
    same = Embedder(tiny_embedder.folder)
    assert same.id == tiny_embedder.id
    assert other.id != tiny_embedder.id


def test_bad_folders_are_clear_errors(tmp_path):
    from macllm.rag.embedder import Embedder

    with pytest.raises(MacllmError, match="no config.json"):
        Embedder(tmp_path)
    folder = write_tiny_bert(tmp_path / "llama-ish")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(MacllmError, match="BERT"):
        Embedder(folder)
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(MacllmError, match="does not fit"):
        Embedder(folder)


def test_cpu_evaluation_matches_the_mlx_model_on_packed_sequences(tiny_embedder):
    """models/bert_cpu.py against models/bert.py: each packed sequence equals the MLX model's run on it alone."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from macllm.models.bert_cpu import BertCpu

    cpu = BertCpu(tiny_embedder.config, {k: np.array(v) for k, v in tree_flatten(tiny_embedder.model.parameters())})
    rng = np.random.default_rng(1)
    lengths = [1, 2, 17, 64, 5, 33]
    ids = rng.integers(5, tiny_embedder.config.vocab_size, sum(lengths))
    packed = cpu.hidden(ids, lengths)
    start = 0
    for n in lengths:
        alone = np.array(tiny_embedder.model(mx.array(ids[start:start + n][None]), mx.ones((1, n))))[0]
        np.testing.assert_allclose(packed[start:start + n], alone, atol=2e-5)
        start += n
    pooled = cpu.pooled(ids, lengths)
    np.testing.assert_allclose(pooled[2], packed[3:20].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(cpu.pooled(ids, lengths, "cls")[3], packed[20], atol=0)


def test_cpu_gelu_is_the_exact_erf_gelu():
    import math

    from macllm.models.bert_cpu import _gelu

    x = np.linspace(-12, 12, 20001, dtype=np.float32)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    ours = x.copy()
    _gelu(ours)
    np.testing.assert_allclose(ours, exact, atol=3e-7 * 12, rtol=2e-6)


def test_many_texts_spread_over_workers_equal_each_text_alone(tiny_embedder, monkeypatch):
    from macllm.rag import embedder as embedder_module

    monkeypatch.setattr(embedder_module, "TOKENS_PER_BATCH", 40)  # many small batches, several workers
    monkeypatch.setattr(tiny_embedder, "workers", 3)
    texts = [f"note {i} " + "python sqlite code " * (i % 7) for i in range(40)]
    together = tiny_embedder.embed(texts)
    for text, row in zip(texts, together, strict=True):
        np.testing.assert_allclose(row, _reference_mean_pool(tiny_embedder, text), atol=1e-5)
