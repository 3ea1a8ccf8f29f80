"""Sentence embeddings from a sentence-transformers folder: a BERT (MiniLM) or EmbeddingGemma encoder, its
pooling, dense projections and prompts as modules.json and config_sentence_transformers.json say, L2
normalised, batched. Queries and documents may take different prompts (EmbeddingGemma's "task: search
result | query: " and "title: none | text: "), so the retriever embeds queries with `embed_query`.

BERT: on Apple silicon the MLX model runs on the GPU, in length-sorted padded batches. On CPUs the numpy
evaluation (models/bert_cpu.py) runs packed batches of ~`TOKENS_PER_BATCH` tokens on one worker thread
per core, each with a single BLAS thread: OpenBLAS's own threads spin while they wait for each other,
and on a busy 2-core machine (load 15) a 2-thread product ran 9x slower than a 1-thread one.
EmbeddingGemma runs in MLX everywhere (rag/embedder_gemma.py), in padded batches of at most
`BATCH_TOKENS` tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

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
from macllm.rag.embedder_gemma import MODEL_TYPES as GEMMA_TYPES
from macllm.rag.embedder_gemma import GemmaEncoder

_Json = TypeVar("_Json", dict, list)
Encoder = Callable[[mx.array, mx.array], mx.array]  # (ids (B, L), mask (B, L) 1/0) -> hidden (B, L, D)
Dense = tuple[mx.array, "mx.array | None", Callable[[mx.array], mx.array]]  # weight (out, in), bias, activation

DEFAULT_MAX_TOKENS = 256  # sentence-transformers' usual max_seq_length for MiniLM-style models
CHUNK_TOKENS = 256  # a chunk's budget, prompt and special tokens included, whatever the embedder's own limit
_BATCH = 32  # texts per padded batch (MLX)
BATCH_TOKENS = 32 * 256  # padded tokens per MLX batch: 24 EmbeddingGemma texts of 1,578 tokens at once held ~10 GB
TOKENS_PER_BATCH = 4096  # per packed CPU batch: big products for BLAS, a few MB of activations
_ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "torch.nn.modules.linear.Identity": lambda x: x, "torch.nn.modules.activation.Tanh": mx.tanh}


class Embedder:
    """Turns texts into unit vectors. `truncated` counts inputs cut at `max_tokens` so far."""

    def __init__(self, folder: Path | str, batch_size: int = _BATCH, source: str | None = None):
        self.folder = Path(folder)
        self.source = source or str(self.folder)  # what to load it by again (a catalog name stays a name)
        model_dir = self.folder / _transformer_subfolder(self.folder)
        config = _read_json(model_dir / "config.json", dict)
        if config is None:
            raise MacllmError(f"{model_dir} has no config.json; pass a sentence-transformers folder")
        weights_file = model_dir / "model.safetensors"
        if not weights_file.is_file():
            raise MacllmError(f"{model_dir} has no model.safetensors")
        model_type = config.get("model_type")
        self.encoder: Encoder  # the MLX model
        self.cpu: BertCpu | None = None  # BERT's numpy evaluation, used instead on CPUs
        if model_type in ("bert", None):
            self.config = BertConfig.from_dict(config)
            self.model = _bert_model(self.config, weights_file)
            parameters: list[tuple[str, mx.array]] = tree_flatten(self.model.parameters())  # type: ignore[assignment]
            if not is_metal():
                self.cpu = BertCpu(self.config, {name: np.array(value) for name, value in parameters})
            self.encoder, hidden, positions = self.model, self.config.hidden_size, self.config.max_position_embeddings
        elif model_type in GEMMA_TYPES:
            gemma = GemmaEncoder(model_dir, config, weights_file)
            self.encoder, hidden, positions = gemma, gemma.hidden_size, gemma.max_positions
        else:
            raise MacllmError(f"{model_dir} is a {model_type} model; embeddings need a BERT or EmbeddingGemma model")
        self.workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

        self.max_tokens = _max_seq_length(self.folder, positions)
        self.pooling = _pooling_mode(self.folder)
        self.dense = _dense_layers(self.folder)
        self.dim = self.dense[-1][0].shape[0] if self.dense else hidden
        self.query_prompt, self.document_prompt = _prompts(self.folder)
        self.tokenizer = _load_tokenizer(model_dir, self.max_tokens)
        # Counting (chunking) switches truncation off for a moment; the indexer counts on its reader thread
        # while embedding on another, so both take this lock (a copy of EmbeddingGemma's tokenizer took 11 s).
        self._tokenizing = threading.Lock()
        self.pad_id = _pad_id(model_dir, self.tokenizer)
        self.batch_size = batch_size
        self.id = f"{self.folder.name}:{_fingerprint(model_dir, weights_file)}"
        self.truncated = 0

    @classmethod
    def load(cls, source: str | None = None, progress: bool = True) -> "Embedder":
        """A catalog name (default minilm-l6), a model folder or a Hugging Face repo id."""
        path = hub.resolve_model(source or DEFAULT_EMBEDDER, progress=progress)
        if not path.is_dir():
            raise MacllmError(f"{source} is a single file; embeddings need a sentence-transformers folder")
        return cls(path, source=source or DEFAULT_EMBEDDER)

    # Content tokens only (no [CLS]/[SEP]); chunking budgets against `content_limit`.
    def count_tokens(self, texts: list[str]) -> list[int]:
        with self._tokenizing:
            self.tokenizer.no_truncation()
            try:
                return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
            finally:
                self.tokenizer.enable_truncation(self.max_tokens)

    @property
    def content_limit(self) -> int:
        """A chunk's text budget: CHUNK_TOKENS (or the model's limit) less special and prompt tokens."""
        overhead = len(self.tokenizer.encode(self.document_prompt).ids)  # [CLS] [SEP] / <bos> <eos>, the prompt
        return min(self.max_tokens, CHUNK_TOKENS) - overhead

    def embed_query(self, query: str) -> np.ndarray:
        """(dim,) float32 unit vector of a search query (with the model's query prompt, if it has one)."""
        return self._embed([self.query_prompt + query])[0]

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length: documents (the model's document prompt, if any)."""
        return self._embed([self.document_prompt + t for t in texts])

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._tokenizing:
            encodings = self.tokenizer.encode_batch(texts)
        self.truncated += sum(1 for e in encodings if e.overflowing)
        rows = [e.ids for e in encodings]
        if self.cpu is not None:
            return self._embed_cpu(self.cpu, rows, out)
        order = sorted(range(len(texts)), key=lambda i: len(rows[i]))  # like lengths share a batch
        for batch in _batches(order, [len(r) for r in rows], self.batch_size):
            out[batch] = self._embed_batch([rows[i] for i in batch])
        return out

    def _embed_cpu(self, cpu: BertCpu, rows: list[list[int]], out: np.ndarray) -> np.ndarray:
        """Packed batches of whole texts of about TOKENS_PER_BATCH tokens, spread over the worker threads."""
        batches = _balanced_batches([len(r) for r in rows], self.workers)

        def run(batch: list[int]) -> None:
            ids = np.fromiter((t for i in batch for t in rows[i]), dtype=np.int64)
            pooled = self._project_numpy(cpu.pooled(ids, [len(rows[i]) for i in batch], self.pooling))
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
        hidden = self.encoder(mx.array(ids), mask_mx)
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            summed = (hidden * mask_mx[:, :, None]).sum(axis=1)
            pooled = summed / mx.maximum(mask_mx.sum(axis=1, keepdims=True), 1e-9)
        for weight, bias, activation in self.dense:
            pooled = activation(pooled @ weight.T + bias if bias is not None else pooled @ weight.T)
        norm = mx.maximum(mx.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.array(pooled / norm, dtype=np.float32)

    def _project_numpy(self, pooled: np.ndarray) -> np.ndarray:
        """The Dense modules (if any) on the CPU path's pooled rows."""
        if not self.dense:
            return pooled
        x = mx.array(pooled)
        for weight, bias, activation in self.dense:
            x = activation(x @ weight.T + bias if bias is not None else x @ weight.T)
        return np.array(x, dtype=np.float32)


def _bert_model(config: BertConfig, weights_file: Path) -> BertModel:
    model = BertModel(config)
    try:
        model.load_weights(list(checkpoint_weights(load_arrays(weights_file)).items()), strict=True)
    except ValueError as e:
        raise MacllmError(f"{weights_file} does not fit a BERT model: {str(e).splitlines()[0]}") from None
    model.eval()
    mx.eval(model.parameters())
    return model


def _balanced_batches(lengths: list[int], workers: int) -> list[list[int]]:
    """Consecutive texts in batches of about TOKENS_PER_BATCH tokens, as many batches as a multiple of
    `workers`, of about equal tokens: greedy cuts at the 4,096-token limit left the last round of a call
    to one worker while the other core idled."""
    total = sum(lengths)
    rounds = max(1, -(-total // (TOKENS_PER_BATCH * workers)))
    target = total / (rounds * workers)
    batches: list[list[int]] = [[]]
    tokens = 0
    for i, n in enumerate(lengths):
        if batches[-1] and tokens + n / 2 > target * len(batches):  # cut where the running total crosses
            batches.append([])
        batches[-1].append(i)
        tokens += n
    return batches


def _batches(order: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """Consecutive runs of `order` (sorted by length) of at most `size` rows and BATCH_TOKENS padded tokens."""
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < size and (len(batches[-1]) + 1) * lengths[i] <= BATCH_TOKENS:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


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


def _max_seq_length(folder: Path, positions: int) -> int:
    st = _read_json(folder / "sentence_bert_config.json", dict) or {}
    limit = int(st.get("max_seq_length") or DEFAULT_MAX_TOKENS)
    return min(limit, positions)


def _modules(folder: Path, kind: str) -> list[Path]:
    """The folders of modules.json's modules of one kind ("Pooling", "Dense"), in pipeline order."""
    modules = sorted(_read_json(folder / "modules.json", list) or [], key=lambda m: m.get("idx", 0))
    return [folder / m.get("path", "") for m in modules if str(m.get("type", "")).endswith(f".{kind}")]


def _pooling_mode(folder: Path) -> str:
    for path in _modules(folder, "Pooling"):
        cfg = _read_json(path / "config.json", dict) or {}
        if cfg.get("include_prompt") is False:
            raise MacllmError(f"{path}: pooling that leaves out the prompt tokens is not supported")
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def _dense_layers(folder: Path) -> list[Dense]:
    """sentence-transformers Dense modules after pooling: (weight (out, in), bias or None, activation)."""
    layers: list[Dense] = []
    for path in _modules(folder, "Dense"):
        cfg = _read_json(path / "config.json", dict) or {}
        activation = _ACTIVATIONS.get(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
        weights_file = path / "model.safetensors"
        if activation is None or not weights_file.is_file():
            raise MacllmError(f"{path}: a Dense module needs model.safetensors and an Identity or Tanh activation")
        try:
            arrays = load_arrays(weights_file)
        except ValueError as e:
            raise MacllmError(f"{weights_file}: {e}") from None
        if "linear.weight" not in arrays:
            raise MacllmError(f"{weights_file} has no linear.weight")
        layers.append((arrays["linear.weight"], arrays.get("linear.bias"), activation))
    return layers


def _prompts(folder: Path) -> tuple[str, str]:
    """(query prompt, document prompt) from config_sentence_transformers.json; empty when it has none."""
    prompts = (_read_json(folder / "config_sentence_transformers.json", dict) or {}).get("prompts") or {}
    return str(prompts.get("query", "")), str(prompts.get("document", ""))


def _pad_id(model_dir: Path, tokenizer: Tokenizer) -> int:
    token = (_read_json(model_dir / "tokenizer_config.json", dict) or {}).get("pad_token")
    for name in (token if isinstance(token, str) else None, "[PAD]", "<pad>"):
        found = tokenizer.token_to_id(name) if name else None
        if found is not None:
            return found
    return 0  # padding is masked out anyway


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
