"""An Engine for the length of one command, shut down so the process can exit cleanly."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def running_engine(model: str, keep_quantized: bool = False, progress: bool = True) -> Iterator:
    from macllm.engine import Engine

    engine = Engine(model, keep_quantized=keep_quantized, progress=progress)
    try:
        yield engine
    finally:
        shut_down(engine)


def shut_down(engine) -> None:
    """MLX keeps per-thread streams; if the engine thread ends with them alive, the process aborts at
    exit ("terminate called without an active exception", code 134). Release them on that thread first."""
    import mlx.core as mx

    engine.submit(mx.clear_streams).result()
    engine.close()
