"""Reranking with the chat model: the top passages reordered by the model's yes/no log-odds, the rest kept."""

from __future__ import annotations

import math

import pytest

from macllm.loader import load_model
from macllm.rag.rerank import relevance, rerank
from macllm.rag.retrieve import SearchResult


@pytest.fixture(scope="module")
def loaded(tiny_llama_folder):
    return load_model(str(tiny_llama_folder), progress=False)


def result(i: int, text: str) -> SearchResult:
    return SearchResult(f"/notes/{i}.md", "Title > Part", 1, 3, 1.0 / (i + 1), text, i)


def test_top_results_are_reordered_by_the_models_log_odds_and_the_rest_kept(loaded):
    results = [result(i, f"note {i} says hello world {'x ' * i}") for i in range(6)]
    ranked = rerank(loaded, "what does the note say?", results, top=4)
    assert sorted(r.chunk_id for r in ranked[:4]) == [0, 1, 2, 3] and ranked[4:] == results[4:]
    scores = [r.score for r in ranked[:4]]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
    assert scores[0] == pytest.approx(relevance(loaded, "what does the note say?", ranked[0]))


def test_log_odds_come_from_the_next_token_distribution(loaded):
    """Same prompt, same number: the score is the model's own (deterministic) next-token verdict."""
    r = result(0, "hello world")
    first = relevance(loaded, "hello?", r)
    assert first == relevance(loaded, "hello?", r) and first != relevance(loaded, "a different question", r)
