"""Sentence embeddings from a sentence-transformers BERT folder: mean pooling, L2 normalised, batched.

On Apple silicon the MLX model runs on the GPU, in length-sorted padded batches. On CPUs the numpy
evaluation (models/bert_cpu.py) runs packed batches of ~`TOKENS_PER_BATCH` tokens on one worker thread
per core, each with a single BLAS thread: OpenBLAS's own threads spin while they wait for each other,
and on a busy 2-core machine (load 15) a 2-thread product ran 9x slower than a 1-thread one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from threadpoolctl import ThreadpoolController
from tokenizers import Tokenizer

from macllm import hub
from macllm.backend import is_metal
from macllm.errors import MacllmError
from macllm.formats.arrays import load_arrays
from macllm.hub.catalog import DEFAULT_EMBEDDER
from macllm.models.bert import BertConfig, BertModel, checkpoint_weights
from macllm.models.bert_cpu import BertCpu

_Json = TypeVar("_Json", dict, list)

DEFAULT_MAX_TOKENS = 256  # sentence-transformers' usual max_seq_length for MiniLM-style models
_BATCH = 32  # texts per padded batch on the GPU
TOKENS_PER_BATCH = 4096  # per packed CPU batch: big products for BLAS, a few MB of activations


class Embedder:
    """Turns texts into unit vectors. `truncated` counts inputs cut at `max_tokens` so far."""

    def __init__(self, folder: Path | str, batch_size: int = _BATCH, source: str | None = None):
        self.folder = Path(folder)
        self.source = source or str(self.folder)  # what to load it by again (a catalog name stays a name)
        model_dir = self.folder / _transformer_subfolder(self.folder)
        config = _read_json(model_dir / "config.json", dict)
        if config is None:
            raise MacllmError(f"{model_dir} has no config.json; pass a sentence-transformers BERT folder")
        if config.get("model_type") not in ("bert", None):
            raise MacllmError(f"{model_dir} is a {config.get('model_type')} model; embeddings need a BERT model")
        weights_file = model_dir / "model.safetensors"
        if not weights_file.is_file():
            raise MacllmError(f"{model_dir} has no model.safetensors")
        self.config = BertConfig.from_dict(config)
        self.model = BertModel(self.config)
        try:
            self.model.load_weights(list(checkpoint_weights(load_arrays(weights_file)).items()), strict=True)
        except ValueError as e:
            raise MacllmError(f"{weights_file} does not fit a BERT model: {str(e).splitlines()[0]}") from None
        self.model.eval()
        mx.eval(self.model.parameters())
        parameters: list[tuple[str, mx.array]] = tree_flatten(self.model.parameters())  # type: ignore[assignment]
        self.cpu = None if is_metal() else BertCpu(self.config, {name: np.array(value) for name, value in parameters})
        self.workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

        self.max_tokens = _max_seq_length(self.folder, self.config)
        self.pooling = _pooling_mode(self.folder)
        self.tokenizer = _load_tokenizer(model_dir, self.max_tokens)
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.dim = self.config.hidden_size
        self.batch_size = batch_size
        self.id = f"{self.folder.name}:{_fingerprint(model_dir, weights_file)}"
        self.truncated = 0

    @classmethod
    def load(cls, source: str | None = None, progress: bool = True) -> "Embedder":
        """A catalog name (default minilm-l6), a model folder or a Hugging Face repo id."""
        path = hub.resolve_model(source or DEFAULT_EMBEDDER, progress=progress)
        if not path.is_dir():
            raise MacllmError(f"{source} is a single file; embeddings need a sentence-transformers BERT folder")
        return cls(path, source=source or DEFAULT_EMBEDDER)

    # Content tokens only (no [CLS]/[SEP]); chunking budgets against `content_limit`.
    def count_tokens(self, texts: list[str]) -> list[int]:
        self.tokenizer.no_truncation()
        try:
            return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        finally:
            self.tokenizer.enable_truncation(self.max_tokens)

    @property
    def content_limit(self) -> int:
        return self.max_tokens - 2

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        self.truncated += sum(1 for e in encodings if e.overflowing)
        rows = [e.ids for e in encodings]
        if self.cpu is not None:
            return self._embed_cpu(self.cpu, rows, out)
        order = sorted(range(len(texts)), key=lambda i: len(rows[i]))  # like lengths share a batch
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            out[batch] = self._embed_batch([rows[i] for i in batch])
        return out

    def _embed_cpu(self, cpu: BertCpu, rows: list[list[int]], out: np.ndarray) -> np.ndarray:
        """Packed batches of whole texts up to TOKENS_PER_BATCH tokens, spread over the worker threads."""
        batches: list[list[int]] = [[]]
        tokens = 0
        for i, row in enumerate(rows):
            if batches[-1] and tokens + len(row) > TOKENS_PER_BATCH:
                batches.append([])
                tokens = 0
            batches[-1].append(i)
            tokens += len(row)

        def run(batch: list[int]) -> None:
            ids = np.fromiter((t for i in batch for t in rows[i]), dtype=np.int64)
            pooled = cpu.pooled(ids, [len(rows[i]) for i in batch], self.pooling)
            out[batch] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

        with _single_threaded_blas():
            if len(batches) == 1 or self.workers == 1:
                for batch in batches:
                    run(batch)
            else:
                with ThreadPoolExecutor(min(self.workers, len(batches)), thread_name_prefix="embed") as pool:
                    list(pool.map(run, batches))
        return out

    def _embed_batch(self, rows: list[list[int]]) -> np.ndarray:
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(rows), length), dtype=np.float32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        mask_mx = mx.array(mask)
        hidden = self.model(mx.array(ids), mask_mx)
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            summed = (hidden * mask_mx[:, :, None]).sum(axis=1)
            pooled = summed / mx.maximum(mask_mx.sum(axis=1, keepdims=True), 1e-9)
        norm = mx.maximum(mx.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.array(pooled / norm, dtype=np.float32)


@functools.cache
def _numpy_blas() -> ThreadpoolController:
    """numpy's own BLAS library (MLX's OpenBLAS is another one, left alone); found once, the scan costs ms."""
    controller = ThreadpoolController()
    numpy_blas = [lib.filepath for lib in controller.lib_controllers if "numpy" in lib.filepath]
    return controller.select(filepath=numpy_blas)


def _single_threaded_blas():
    """numpy's BLAS limited to one thread while the workers run; restored afterwards."""
    return _numpy_blas().limit(limits=1)


def _read_json(path: Path, kind: type[_Json]) -> _Json | None:
    """The file's JSON when it parses to a `kind` (dict or list); None when absent, broken or another shape."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, kind) else None


def _transformer_subfolder(folder: Path) -> str:
    """sentence-transformers' modules.json says where the Transformer module lives ('' = the folder)."""
    for module in _read_json(folder / "modules.json", list) or []:
        if str(module.get("type", "")).endswith("Transformer"):
            return module.get("path", "")
    return ""


def _max_seq_length(folder: Path, config) -> int:
    st = _read_json(folder / "sentence_bert_config.json", dict) or {}
    limit = int(st.get("max_seq_length") or DEFAULT_MAX_TOKENS)
    return min(limit, config.max_position_embeddings)


def _pooling_mode(folder: Path) -> str:
    for module in _read_json(folder / "modules.json", list) or []:
        if str(module.get("type", "")).endswith("Pooling"):
            cfg = _read_json(folder / module.get("path", "") / "config.json", dict) or {}
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
    return "mean"


def _load_tokenizer(model_dir: Path, max_tokens: int) -> Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise MacllmError(f"{model_dir} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # some folders ship fixed padding; we pad per batch
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


def _fingerprint(model_dir: Path, weights: Path) -> str:
    """Tells embedders apart without hashing all the weights: configs, tokenizer, size and weight samples."""
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        try:
            digest.update((model_dir / name).read_bytes())
        except OSError:
            pass
    size = weights.stat().st_size
    digest.update(str(size).encode())
    with open(weights, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:12]
