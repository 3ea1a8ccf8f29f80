"""The LoRA training loop: AdamW with warmup + cosine, gradient clipping, one compiled step.

The base model is frozen and never differentiated: the trainable (A, B) pairs live in a small module
of their own (`LoRAParams`), and each targeted layer is wrapped in the same `LoRALinear` that serves
adapters at inference, with the pair being trained as its active slot. So what is trained computes
exactly what is later loaded. The loss is a sum over real target tokens divided by their count across
the whole (global) batch: padding weighs nothing, and N data-parallel ranks equal one rank.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from macllm.errors import MacllmError
from macllm.kernels import references_only
from macllm.lora.adapter import Adapter
from macllm.lora.layers import LoRALinear
from macllm.lora.manager import find_module
from macllm.lora.store import fingerprint
from macllm.tuner.batches import batches_per_epoch, collate, epoch_batches
from macllm.tuner.distributed import Group
from macllm.tuner.examples import TrainingData
from macllm.tuner.recompute import checkpoint_layers
from macllm.tuner.schedule import warmup_cosine

TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


@dataclass
class TrainConfig:
    rank: int = 8
    scale: float = 20.0
    dropout: float = 0.0
    layers: int | None = None  # the last N decoder layers; None: all
    targets: tuple[str, ...] = tuple(TARGETS)
    epochs: float = 2.0
    iters: int | None = None  # overrides epochs
    batch: int = 4  # examples per rank per step
    max_seq: int = 512
    lr: float = 2e-4
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    grad_checkpoint: bool = False
    eval_every: int | None = None  # default: about 8 evaluations per run
    save_every: int | None = None  # default: with every evaluation
    patience: int = 3  # evaluations without a better validation loss before stopping early


@dataclass
class Progress:
    """What survives a checkpoint besides the weights and the optimizer."""
    step: int = 0
    losses: list[float] = field(default_factory=list)  # recent train losses
    val_before: float | None = None
    best_val: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    last_val: float | None = None
    elapsed_s: float = 0.0
    tokens: int = 0


class LoRAParams(nn.Module):
    """The trainable pairs, one {"a", "b"} per targeted layer. A uniform(+-1/sqrt(in)), B zero: training
    starts exactly at the base model."""

    def __init__(self, dims: list[tuple[int, int]], rank: int, seed: int):
        super().__init__()
        key = mx.random.key(seed)
        self.pairs = []
        for in_dims, out_dims in dims:
            key, sub = mx.random.split(key)
            bound = in_dims ** -0.5
            self.pairs.append({"a": mx.random.uniform(-bound, bound, (in_dims, rank), key=sub),
                               "b": mx.zeros((rank, out_dims))})


def check_layers(cfg: TrainConfig, num_layers: int) -> None:
    """Refused, not clamped: asking for more layers than the model has means the run was planned for another
    model, and a clamp would record (and --resume would compare) a number that was never trained."""
    if cfg.layers is not None and cfg.layers > num_layers:
        raise MacllmError(f"--layers {cfg.layers}: this model has {num_layers} layers; use at most "
                          f"{num_layers}, or all")


def target_paths(num_layers: int, cfg: TrainConfig) -> list[str]:
    unknown = [t for t in cfg.targets if t not in TARGETS]
    if unknown or not cfg.targets:
        raise MacllmError(f"--targets: unknown {', '.join(unknown) or '(none given)'}; choose from "
                          f"{','.join(TARGETS)}")
    check_layers(cfg, num_layers)
    count = num_layers if cfg.layers is None else cfg.layers
    return [f"model.layers.{i}.{TARGETS[t]}" for i in range(num_layers - count, num_layers) for t in cfg.targets]


def data_digest(data: TrainingData) -> str:
    h = hashlib.sha256()
    for e in data.train + data.valid:
        h.update(np.asarray(e.tokens, dtype=np.int32).tobytes() + bytes([e.prompt_len % 256]))
    return h.hexdigest()[:16]


class Trainer:
    def __init__(self, loaded, data: TrainingData, cfg: TrainConfig, group: Group | None = None,
                 emit=None, base_model: str = "", name: str = "adapter"):
        self.model, self.model_config = loaded.model, loaded.config
        self.data, self.cfg, self.name, self.base_model = data, cfg, name, base_model
        self.group = group or Group()
        self.emit = emit if (emit and self.group.is_main) else (lambda event: None)
        self.paths = target_paths(self.model_config.num_hidden_layers, cfg)
        if hasattr(self.model, "lora_paths"):  # mlx-lm's model classes name their linear layers their own way
            self.paths = self.model.lora_paths(cfg.layers, [TARGETS[t] for t in cfg.targets])
        self.wrappers = self._install()
        self.lora = LoRAParams([w.dims for w in self.wrappers], cfg.rank, cfg.seed)
        global_batch = cfg.batch * self.group.size
        if len(data.train) < global_batch:
            raise MacllmError(f"only {len(data.train)} training example(s), fewer than one batch of {global_batch}; "
                              f"use a smaller --batch or add more notes")
        self.per_epoch = batches_per_epoch(len(data.train), global_batch)
        self.total = cfg.iters if cfg.iters else max(1, math.ceil(cfg.epochs * self.per_epoch))
        self.eval_every = cfg.eval_every or max(1, self.total // 8)
        self.save_every = cfg.save_every or self.eval_every
        warmup = int(cfg.warmup * self.total)
        self.optimizer = optim.AdamW(learning_rate=warmup_cosine(cfg.lr, self.total, warmup),
                                     weight_decay=cfg.weight_decay)
        self.optimizer.init(self.lora.trainable_parameters())
        self.progress = Progress()
        self.best = None  # LoRA parameters at the best validation loss
        self.stop = threading.Event()  # set by Ctrl-C: checkpoint and leave
        self._step_fn: Callable[[mx.array, mx.array], mx.array] | None = None  # built on the first run
        self.model.train(cfg.dropout > 0)

    # --- model surgery ---------------------------------------------------------------------
    def _install(self) -> list[LoRALinear]:
        wrappers = []
        for path in self.paths:
            found = find_module(self.model, path)
            if found is None:
                raise MacllmError(f"this model has no {path} to train")
            parent, key, layer = found
            if not isinstance(layer, LoRALinear):
                if not isinstance(layer, (nn.Linear, nn.QuantizedLinear)):
                    raise MacllmError(f"{path} is a {type(layer).__name__}, not a linear layer")
                layer = LoRALinear(layer, dropout=self.cfg.dropout)
                setattr(parent, key, layer) if not isinstance(parent, list) else parent.__setitem__(int(key), layer)
            wrappers.append(layer)
        if self.cfg.grad_checkpoint:
            checkpoint_layers(self.model, self.wrappers_by_layer(wrappers))
        return wrappers

    def wrappers_by_layer(self, wrappers) -> dict[int, list[LoRALinear]]:
        out: dict[int, list[LoRALinear]] = {}
        for path, w in zip(self.paths, wrappers, strict=True):
            out.setdefault(int(path.split(".")[2]), []).append(w)
        return out

    def _activate(self, pairs) -> None:
        for w, p in zip(self.wrappers, pairs, strict=True):
            w.set_trainable_slot(p["a"], p["b"], self.cfg.scale)

    # --- loss and step ---------------------------------------------------------------------
    def _loss_sums(self, tokens: mx.array, mask: mx.array):
        """(sum of target cross-entropies, number of targets); the LoRA pairs come from self.lora."""
        self._activate(self.lora.pairs)
        logits = self.model(tokens[:, :-1]).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, tokens[:, 1:]) * mask
        return ce.sum(), mask.sum()

    def _build_step(self):
        loss_and_grad = nn.value_and_grad(self.lora, self._loss_sums)
        state = [self.lora.state, self.optimizer.state, mx.random.state]

        @partial(mx.compile, inputs=[self.model.state, *state], outputs=state)
        def step(tokens, mask):
            (loss_sum, count), grads = loss_and_grad(tokens, mask)
            loss_sum, count, grads = self.group.sum((loss_sum, count, grads))
            count = mx.maximum(count, 1.0)
            grads = tree_map(lambda g: g / count, grads)
            grads, _ = optim.clip_grad_norm(grads, self.cfg.clip)
            self.optimizer.update(self.lora, grads)
            return loss_sum / count

        return step

    def evaluate(self, examples) -> float | None:
        """Mean loss per target token over examples (split across ranks), or None without any."""
        if not examples:
            return None
        was_training = self.model.training
        self.model.eval()
        total, count = mx.array(0.0), mx.array(0.0)
        rows = self.group.share(list(range(len(examples))))
        order = sorted(rows, key=lambda i: len(examples[i].tokens))
        for i in range(0, len(order), self.cfg.batch):
            tokens, mask, _ = collate([examples[j] for j in order[i:i + self.cfg.batch]])
            s, c = self._loss_sums(tokens, mask)
            total, count = total + s, count + c
            mx.eval(total, count)
        total, count = self.group.sum((total, count))
        self.model.train(was_training)
        return (total / mx.maximum(count, 1.0)).item()

    def batch_rows(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.per_epoch)
        return epoch_batches(self.data.train, self.cfg.batch * self.group.size, self.cfg.seed, epoch)[index]

    # --- checkpoints -----------------------------------------------------------------------
    def adapter(self, params=None) -> Adapter:
        pairs = (params or self.lora.parameters())["pairs"]
        weights = {p: (pair["a"], pair["b"]) for p, pair in zip(self.paths, pairs, strict=True)}
        return Adapter(name=self.name, rank=self.cfg.rank, scale=self.cfg.scale, weights=weights,
                       dropout=self.cfg.dropout, keys=[TARGETS[t] for t in self.cfg.targets],
                       base_model=self.base_model, base_fingerprint=fingerprint(self.model_config),
                       created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def run_signature(self) -> dict:
        """What must match for --resume to continue this run."""
        keep = ("rank", "scale", "dropout", "layers", "targets", "epochs", "iters", "batch", "max_seq", "lr",
                "warmup", "weight_decay", "seed")
        return {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()
                           if k in keep},
                "base_fingerprint": fingerprint(self.model_config), "data": data_digest(self.data),
                "ranks": self.group.size}

    def state_for_checkpoint(self) -> tuple[dict, dict, dict | None]:
        """(optimizer state, progress, best weights flattened). Random state needs no saving: each
        step reseeds from (seed, step)."""
        extra = {"progress": asdict(self.progress)}
        best = dict(tree_flatten(self.best)) if self.best is not None else None
        return self.optimizer.state, extra, best

    def restore(self, adapter: Adapter, optimizer_state: dict, extra: dict, best: dict | None) -> None:
        pairs = [{"a": adapter.weights[p][0], "b": adapter.weights[p][1]} for p in self.paths]
        self.lora.update({"pairs": pairs})
        self.optimizer.state = tree_map(lambda x: x, optimizer_state)
        self.progress = Progress(**extra["progress"])
        if best:
            self.best = tree_unflatten(list(best.items()))
        mx.eval(self.lora.parameters(), self.optimizer.state)

    def warm_start(self, adapter: Adapter) -> None:
        """Start from a finished adapter's weights (a retrain): same layers, projections and rank, or refused."""
        missing = [p for p in self.paths if p not in adapter.weights]
        if missing or adapter.rank != self.cfg.rank:
            raise MacllmError(f"adapter {adapter.name!r} does not match this run's layers, projections and rank "
                              f"(missing {missing[0] if missing else 'none'}, rank {adapter.rank}); train a new one")
        pairs = [{"a": adapter.weights[p][0], "b": adapter.weights[p][1]} for p in self.paths]
        self.lora.update({"pairs": pairs})
        mx.eval(self.lora.parameters())

    # --- the loop --------------------------------------------------------------------------
    def run(self, on_checkpoint=None) -> str:
        """Train until done, early stop or self.stop; returns "done", "early_stop" or "interrupted".
        `on_checkpoint(trainer)` writes a checkpoint (rank 0) and returns its path."""
        # Custom Metal kernels have no gradient: a small batch must not reach one inside the traced step.
        with references_only():
            return self._run(on_checkpoint)

    def _run(self, on_checkpoint) -> str:
        cfg, p = self.cfg, self.progress
        step_fn = self._step_fn
        if step_fn is None:
            step_fn = self._step_fn = self._build_step()
        if p.step == 0 and p.val_before is None and self.data.valid:
            p.val_before = p.best_val = p.last_val = self.evaluate(self.data.valid)
            self.best = self.lora.parameters()
            self.emit({"event": "eval", "iteration": 0, "val_loss": p.val_before, "val_ppl": _ppl(p.val_before)})
        session_start, session_steps = time.perf_counter(), 0
        mx.reset_peak_memory()
        while p.step < self.total:
            if self.stop.is_set():
                return "interrupted"
            started = time.perf_counter()
            rows = [self.data.train[i] for i in self.batch_rows(p.step)]
            tokens, mask, _ = collate(self.group.share(rows))
            mx.random.seed(cfg.seed * 1_000_003 + p.step)  # dropout: the same masks after a resume
            loss = step_fn(tokens, mask)
            mx.eval(loss, self.lora.state, self.optimizer.state)
            took = time.perf_counter() - started
            batch_tokens = sum(len(e.tokens) for e in rows)  # real tokens, all ranks
            p.step += 1
            session_steps += 1
            p.elapsed_s += took
            p.tokens += batch_tokens
            p.losses = (p.losses + [float(loss.item())])[-50:]  # type: ignore[arg-type]  # a float32 scalar
            per_step = (time.perf_counter() - session_start) / session_steps
            self.emit({"event": "step", "iteration": p.step, "total": self.total,
                       "epoch": round(p.step / self.per_epoch, 3), "train_loss": round(p.losses[-1], 5),
                       "learning_rate": float(self.optimizer.learning_rate.item()),
                       "tokens": batch_tokens, "tokens_per_sec": round(batch_tokens / took, 1),
                       "peak_memory_mb": peak_memory_mb(),
                       "eta_s": round(per_step * (self.total - p.step), 1), "elapsed_s": round(p.elapsed_s, 1)})
            stop_early = False
            if self.data.valid and (p.step % self.eval_every == 0 or p.step == self.total):
                val = self.evaluate(self.data.valid)  # not None: there are validation examples
                stop_early = val is not None and self._after_eval(val)
            if on_checkpoint and (p.step % self.save_every == 0 or self.stop.is_set()) and p.step < self.total:
                on_checkpoint(self)
            if stop_early:
                return "early_stop"
        return "done"

    def _after_eval(self, val: float) -> bool:
        p = self.progress
        p.last_val = val
        if p.best_val is None or val < p.best_val:
            p.best_val, p.best_step, p.bad_evals = val, p.step, 0
            self.best = self.lora.parameters()
        else:
            p.bad_evals += 1
        self.emit({"event": "eval", "iteration": p.step, "val_loss": round(val, 5), "val_ppl": _ppl(val),
                   "best_val_loss": round(p.best_val, 5)})
        return p.bad_evals >= self.cfg.patience

    def final_adapter(self, outcome: str, data_stats: dict) -> Adapter:
        """The adapter to keep: the best validation weights when there is validation, else the last."""
        p = self.progress
        params = self.best if (self.best is not None and self.data.valid) else None
        adapter = self.adapter(params)
        val_after = p.best_val if params is not None else None
        tail = p.losses[-10:]
        train_loss = sum(tail) / len(tail) if tail else None
        stats = {k: v for k, v in data_stats.items() if k != "valid_file_names"}
        adapter.training = {
            "base_model": self.base_model, "base_fingerprint": fingerprint(self.model_config),
            "data": stats, "examples": stats.get("train_chunks"),
            "steps": p.step, "best_step": p.best_step if params is not None else p.step,
            "epochs": round(p.step / self.per_epoch, 2), "outcome": outcome,
            "time_s": round(p.elapsed_s, 1),
            "tokens_per_sec": round(p.tokens / p.elapsed_s, 1) if p.elapsed_s else None,
            "final_loss": round(train_loss, 4) if train_loss is not None else None,
            "train_loss": round(train_loss, 4) if train_loss is not None else None,
            "val_loss": round(val_after, 4) if val_after is not None else None,
            "val_ppl_before": _ppl(p.val_before), "val_ppl_after": _ppl(val_after),
            "ranks": self.group.size, "peak_memory_mb": peak_memory_mb(),
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()},
            "description": f"fine-tuned on {stats.get('source')}",
        }
        return adapter


def _ppl(loss: float | None) -> float | None:
    return None if loss is None else round(math.exp(min(loss, 50.0)), 3)


def peak_memory_mb() -> float:
    peak = mx.get_peak_memory()
    if not peak:  # backends that do not track it: the process's resident peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return round(peak / 2**20, 1)
