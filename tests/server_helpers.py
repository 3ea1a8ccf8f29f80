"""A `macllm serve` app on a loopback port in a background thread, for tests driving it with real clients."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import uvicorn

from macllm.server.app import ServerConfig, build_app
from macllm.server.scheduler import Scheduler
from tests import tiny_models


def write_talkative_folder(folder: Path, seed: int = 0, context: int = 512) -> Path:
    """The tiny llama with its own LM head: the tied one repeats a single token, so answers made under
    different adapters or prompts would all look alike; this one says something different each time."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_models.write_tokenizer_files(folder)
    config = tiny_models.hf_config(tied=False, max_position_embeddings=context)
    (folder / "config.json").write_text(json.dumps(config))
    weights = tiny_models.random_weights(seed=seed, tied=False)
    mx.save_safetensors(str(folder / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()})
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(scheduler: Scheduler, config: ServerConfig):
    """Yields the base URL (http://127.0.0.1:PORT) while the app serves in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(scheduler, config), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def long_and_slow(engine, monkeypatch, seconds: float = 0.01) -> None:
    """Generations that never meet an end-of-text token and take `seconds` per decode step (the batched one, and
    the one-at-a-time one), so one of a few hundred tokens outlasts a client's patience or a stop signal."""
    from macllm.engine import batch
    from macllm.generation import steps

    real_steps, real_forward = steps.decode_steps, batch.decode_forward

    def slow_steps(*args, **kwargs):
        for step in real_steps(*args, **kwargs):
            time.sleep(seconds)
            yield step

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(steps, "decode_steps", slow_steps)
    monkeypatch.setattr(batch, "decode_forward", slow_forward)
    monkeypatch.setattr(engine.loaded.tokenizer, "eos_token_ids", set())
