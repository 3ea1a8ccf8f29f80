"""Search a notes index: BM25 (FTS5), exact dense search, or both fused by reciprocal rank fusion."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass

import mlx.core as mx
import numpy as np

from macllm.errors import MacllmError
from macllm.rag.cjk import has_cjk, has_search_terms
from macllm.rag.pdf import cited_page
from macllm.rag.store import Store

MODES = ("hybrid", "bm25", "dense")
RRF_K = 60  # the usual constant from the RRF paper: damps the head of each list
CANDIDATES = 50  # per list, before fusion
# Each list's weight in the fusion (bm25, dense). Dense counts double: on our hand-written questions
# hybrid nDCG@10 rose from 0.978 to 0.989 (direct) and 0.706 to 0.724 (paraphrased); see docs/rag.md.
FUSION_WEIGHTS = (1.0, 2.0)
# The tuning above is English. On Chinese, MiniLM's vectors are close to noise and doubling them pushed exact
# phrases out of the top (hybrid nDCG@10 0.622 -> 0.559 on notes-zh), so CJK queries keep equal weights.
CJK_FUSION_WEIGHTS = (1.0, 1.0)


@dataclass(frozen=True)
class SearchResult:
    path: str
    heading: str
    line_start: int
    line_end: int
    score: float
    text: str
    chunk_id: int

    def as_json(self) -> dict:
        row = asdict(self)
        row.pop("chunk_id")
        return row

    @property
    def location(self) -> str:
        page = cited_page(self.path, self.heading)
        where = f" (page {page})" if page else ""
        return f"{self.path}{where}:{self.line_start}-{self.line_end}"


class Retriever:
    """Holds the store, the embedder and the embedding matrix (reloaded when the store changes)."""

    def __init__(self, store: Store, embedder):
        self.store = store
        self.embedder = embedder
        self._check_embedder()
        self._cache_generation = -1
        self._ids = np.zeros(0, dtype=np.int64)
        self._matrix: mx.array | None = None  # (chunks, dim), loaded on first dense search
        self._paths: list[str] = []

    def is_empty(self) -> bool:
        return self.store.counts()[1] == 0

    def search(self, query: str, k: int = 10, mode: str = "hybrid", path: str | None = None) -> list[SearchResult]:
        if mode not in MODES:
            raise MacllmError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
        if k < 1:
            raise MacllmError(f"-k must be at least 1, got {k}")
        check_query(query)
        glob = _as_glob(path)
        n = max(CANDIDATES, k)
        ranked: list[list[tuple[int, float]]] = []
        if mode in ("bm25", "hybrid"):
            ranked.append(self.store.bm25(query, n, glob))
        if mode in ("dense", "hybrid"):
            ranked.append(self.dense(query, n, glob))
        weights = CJK_FUSION_WEIGHTS if has_cjk(query) else FUSION_WEIGHTS
        hits = ranked[0][:k] if len(ranked) == 1 else rrf(ranked, weights=weights)[:k]
        rows = self.store.chunks([i for i, _ in hits])
        return [SearchResult(r.path, r.heading, r.line_start, r.line_end, score, r.text, r.id)
                for i, score in hits if (r := rows.get(i))]

    def dense(self, query: str, n: int, glob: str | None = None) -> list[tuple[int, float]]:
        """Exact nearest chunks by cosine: one matrix-vector product over every embedding."""
        self._refresh()
        if self._matrix is None or not len(self._ids):
            return []
        vector = self.embedder.embed_query(query)
        # The product runs in MLX, like the query embedding just before it: a numpy (OpenBLAS) product
        # right after MLX work made both thread pools contend, ~100 ms instead of ~20 at 100k chunks.
        scores = np.array(self._matrix @ mx.array(vector))
        if glob:
            scores = np.where(self._path_mask(glob), scores, -np.inf)
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top])]
        return [(int(self._ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def _check_embedder(self) -> None:
        """Query vectors from another embedder than the index's would rank chunks by noise: refuse them."""
        built_with = self.store.embedder_id
        if built_with and self.embedder is not None and built_with != self.embedder.id:  # None: keywords only
            raise MacllmError(f"{self.store.path} was built with the embedder {built_with}, not {self.embedder.id}; "
                              f"search it with that one, or re-embed it: `macllm index DIR --index {self.store.path} "
                              f"--embedder {self.embedder.source}`")

    def _refresh(self) -> None:
        generation = self.store.generation
        if generation != self._cache_generation:
            self._check_embedder()
            self._ids, matrix, self._paths = self.store.embedding_matrix(self.embedder.id)
            self._matrix = mx.array(matrix)
            self._cache_generation = generation
            self._mask_cache: dict[str, np.ndarray] = {}

    def _path_mask(self, glob: str) -> np.ndarray:
        if glob not in self._mask_cache:
            self._mask_cache[glob] = np.array([fnmatch.fnmatchcase(p, glob) for p in self._paths], dtype=bool)
        return self._mask_cache[glob]


def check_query(query: str, where: str = "") -> None:
    """Refuse a query of blanks or punctuation: dense search would return arbitrary chunks for it."""
    if not has_search_terms(query):
        shown = repr(query[:40]) + ("…" if len(query) > 40 else "")
        raise MacllmError(f"{where}the query {shown} has nothing to search for; use words that occur in your notes")


def rrf(lists: list[list[tuple[int, float]]], k: int = RRF_K,
        weights: tuple[float, ...] | None = None) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each list adds weight / (k + rank); best first."""
    scores: dict[int, float] = {}
    for ranked, weight in zip(lists, weights or (1.0,) * len(lists), strict=True):
        for rank, (item, _) in enumerate(ranked, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _as_glob(path: str | None) -> str | None:
    """A path filter: a glob as given, or plain text matching anywhere in the path."""
    if not path:
        return None
    return path if any(ch in path for ch in "*?[") else f"*{path}*"
