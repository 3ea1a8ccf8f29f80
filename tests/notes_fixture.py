"""A small notes index searched with the tiny random BERT, built on an engine's thread (as the app does)."""

from __future__ import annotations

from pathlib import Path

from macllm.rag.embedder import Embedder
from macllm.rag.indexer import index_notes
from macllm.rag.retrieve import Retriever
from macllm.rag.store import Store
from tests.tiny_bert import write_tiny_bert

NOTES = {
    "cats.md": "# Cats\n\nCats purr and sleep all day.\n\n## Food\n\nCats eat fish.\n",
    "dogs.txt": "Dogs bark at the mailman.\n",
    "birds.md": "# Birds\n\nBirds sing at dawn and fly south in winter.\n",
}
QUESTIONS = ("what do cats eat?", "who barks?", "when do birds sing?", "where do birds fly?")


def notes_retriever(engine, root: Path) -> Retriever:
    folder = root / "notes"
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    bert = write_tiny_bert(root / "tiny-bert")

    def build() -> Retriever:
        store = Store(root / "notes.sqlite")
        embedder = Embedder(bert)
        index_notes(store, embedder, [folder])
        return Retriever(store, embedder)

    return engine.submit(build).result()
