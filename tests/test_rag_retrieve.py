"""Retrieval: BM25, dense and hybrid (RRF) on a tiny model; path filters; CJK keyword search."""

from __future__ import annotations

import random
import re

import pytest

from macllm.errors import MacllmError
from macllm.rag.cjk import cjk_terms, fts_query
from macllm.rag.indexer import index_notes
from macllm.rag.retrieve import Retriever, rrf
from macllm.rag.store import Store
from tests.conftest import shared_data
from tests.tiny_bert import write_tiny_bert


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from macllm.rag.embedder import Embedder

    return Embedder(write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert"))


@pytest.fixture
def retriever(tmp_path, embedder) -> Retriever:
    root = tmp_path / "notes"
    (root / "pets").mkdir(parents=True)
    (root / "pets" / "cats.md").write_text("# Cats\n\nCats purr and sleep all day.\n")
    (root / "pets" / "dogs.md").write_text("# Dogs\n\nDogs bark at the mailman.\n")
    (root / "db.md").write_text("# Databases\n\nSQLite runs searches with full-text indexes.\n")
    store = Store(tmp_path / "i.sqlite")
    index_notes(store, embedder, [root])
    return Retriever(store, embedder)


def test_bm25_finds_words_with_stemming(retriever):
    top = retriever.search("searching index", k=3, mode="bm25")
    assert top[0].path.endswith("db.md") and top[0].heading == "Databases"
    assert top[0].line_start == 3 and top[0].line_end == 3
    assert retriever.search("barking", k=3, mode="bm25")[0].path.endswith("dogs.md")  # porter stemmer


def test_dense_is_exact_nearest_neighbour(retriever, embedder):
    import numpy as np

    hits = retriever.search("cats purr", k=3, mode="dense")
    ids, matrix, _ = retriever.store.embedding_matrix(embedder.id)
    expected = ids[np.argsort(-(matrix @ embedder.embed_query("cats purr")))]
    assert [h.chunk_id for h in hits] == list(expected[:3])
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_hybrid_fuses_both_lists(retriever):
    hybrid = retriever.search("dogs bark", k=3)
    assert hybrid[0].path.endswith("dogs.md") and len(hybrid) == 3
    assert rrf([[(1, 9.0), (2, 5.0)], [(2, 0.9), (3, 0.8)]])[0][0] == 2  # in both lists: first


def test_fusion_weights_favour_one_list():
    bm25, dense = [(1, 9.0), (2, 5.0)], [(2, 0.9), (1, 0.8)]
    assert rrf([bm25, dense], weights=(1.0, 1.0))[0][1] == rrf([bm25, dense], weights=(1.0, 1.0))[1][1]  # a tie
    assert rrf([bm25, dense], weights=(1.0, 1.5))[0][0] == 2
    assert rrf([bm25, dense], weights=(1.5, 1.0))[0][0] == 1


def test_an_index_refuses_a_query_embedder_it_was_not_built_with(retriever, tmp_path):
    from macllm.rag.embedder import Embedder

    other = Embedder(write_tiny_bert(tmp_path / "other-bert", seed=3))
    with pytest.raises(MacllmError, match=r"was built with the embedder .*re-embed it: `macllm index DIR"):
        Retriever(retriever.store, other)
    # Re-embedded under the open retriever's feet: its next search refuses too, rather than ranking by noise.
    index_notes(retriever.store, other, [tmp_path / "notes"])
    with pytest.raises(MacllmError, match="was built with the embedder"):
        retriever.search("cats", mode="dense")
    assert Retriever(retriever.store, other).search("cats purr", k=1)[0].path.endswith("cats.md")


def test_path_filter_and_json_shape(retriever):
    hits = retriever.search("notes", k=10, mode="hybrid", path="pets/")
    assert hits and all("/pets/" in h.path for h in hits)
    assert all(h.path.endswith("cats.md") for h in retriever.search("sleep", k=5, mode="dense", path="*/cats.md"))
    assert set(hits[0].as_json()) == {"path", "heading", "line_start", "line_end", "score", "text"}


def test_bad_arguments_and_new_chunks_seen(retriever, tmp_path, embedder):
    with pytest.raises(MacllmError, match="unknown search mode"):
        retriever.search("x", mode="fuzzy")
    with pytest.raises(MacllmError, match="-k"):
        retriever.search("x", k=0)
    with pytest.raises(MacllmError, match="nothing to search for"):
        retriever.search("", k=3, mode="bm25")
    before = len(retriever.search("zebra", k=50, mode="dense"))
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "z.md").write_text("# Zebra\n\nstripes\n")
    index_notes(retriever.store, embedder, [extra])
    assert len(retriever.search("zebra", k=50, mode="dense")) == before + 1  # the cached matrix reloads


def test_cjk_terms_and_query():
    assert cjk_terms("RAG 與注意力 ok") == "與注 注意 意力"
    query = fts_query("注意力 RAG")
    assert 'cjk : "注意 意力"' in query and '"RAG"' in query


def test_chinese_phrase_mid_sentence_is_found(tmp_path, embedder):
    folder = shared_data("notes-zh")
    store = Store(tmp_path / "zh.sqlite")
    index_notes(store, embedder, [folder])
    retriever = Retriever(store, embedder)
    text = next(folder.glob("*.txt")).read_text(encoding="utf-8")
    runs = [r for r in re.findall(r"[\u4e00-\u9fff]{8,}", text)]
    assert len(runs) >= 5
    rng = random.Random(0)
    for run in rng.sample(runs, 5):
        start = rng.randrange(1, len(run) - 4)  # strictly inside the run: not a token boundary
        phrase = run[start:start + 3 + rng.randrange(2)]
        top = retriever.search(phrase, k=3, mode="bm25")
        assert top and phrase in top[0].text, phrase
        # hybrid keeps it near the top even with this random embedder's noise in the other list
        assert any(phrase in hit.text for hit in retriever.search(phrase, k=5))
    # FTS5's own tokenizer alone would have missed it: the run is a single token there
    plain = store.conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?",
                               (f'text : "{phrase}"',)).fetchone()[0]
    assert plain == 0


def test_large_index_leaves_very_common_words_out_of_the_keyword_query(tmp_path, embedder, monkeypatch):
    from macllm.rag import store as store_module

    root = tmp_path / "many"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.txt").write_text(f"common words running everywhere {'rare zebra' if i == 3 else 'plain'}\n")
    store = Store(tmp_path / "i.sqlite")
    index_notes(store, embedder, [root])
    assert store._common_words("common zebra") == frozenset()  # a small index: every word counts
    monkeypatch.setattr(store_module, "LARGE_INDEX_CHUNKS", 1)
    monkeypatch.setattr(store_module, "COMMON_WORD_SHARE", 0.5)
    store._counted = (None, 0)
    assert store._common_words("common RUNS zebra") == {"common", "runs"}  # stems compared: runs ~ running
    assert store._common_words("common everywhere") in ({"common"}, {"everywhere"})  # the rarest one stays
    hits = store.bm25("common zebra", 10)
    assert len(hits) == 1 and hits[0][0] in {r[0] for r in store.conn.execute("SELECT id FROM chunks")}
    assert len(store.bm25("common", 10)) == 6
