"""With the real MiniLM: meaning-based search finds a note that shares few words with the query."""

from __future__ import annotations

import pytest

from tests.test_bert_reference import minilm_folder  # noqa: F401  (session fixture: pulls minilm-l6 once)


@pytest.mark.real_model
def test_dense_search_by_meaning(tmp_path, minilm_folder, notes_dir):  # noqa: F811
    from macllm.rag.embedder import Embedder
    from macllm.rag.indexer import index_notes
    from macllm.rag.retrieve import Retriever
    from macllm.rag.store import Store

    folder = notes_dir / "aws"
    if not (folder / "s3-cors.md").is_file():
        pytest.skip("the sample notes changed")
    store = Store(tmp_path / "i.sqlite")
    summary = index_notes(store, Embedder(minilm_folder), [folder])
    assert summary.added >= 2 and summary.truncated == 0
    retriever = Retriever(store, Embedder(minilm_folder))
    top = retriever.search("let another website's javascript fetch files from my storage bucket", k=3, mode="dense")
    assert top[0].path.endswith("s3-cors.md")
    assert retriever.search("let another website fetch files from my bucket", k=3)[0].path.endswith("s3-cors.md")
