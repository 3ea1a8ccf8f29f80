"""JobThread: one daemon thread that runs submitted jobs in order; each job's outcome arrives in a Future."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable

import mlx.core as mx

from macllm.errors import MacllmError

_STOP = None


class JobThread:
    def __init__(self, name: str, on_stop: Callable[[], None] | None = None):
        self._jobs: queue.Queue = queue.Queue()
        self._on_stop = on_stop  # runs on the thread, after the last job
        self._closed = False
        self._lock = threading.Lock()  # no job is queued behind the stop marker
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise MacllmError("the engine is closed; start a new one")
            self._jobs.put((lambda: fn(*args, **kwargs), future))
        return future

    def close(self, timeout: float = 10) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._jobs.put(_STOP)
        if self._thread.is_alive() and not self.is_current:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # delivered to the caller, never kills the thread
                future.set_exception(e)
        try:
            if self._on_stop is not None:
                self._on_stop()
        finally:
            self._release_streams()

    @staticmethod
    def _release_streams() -> None:
        """MLX keeps per-thread streams; a thread that ends with them alive aborts the process at exit
        ("terminate called without an active exception"). Release them on this thread first."""
        clear = getattr(mx, "clear_streams", None)
        if clear is not None:
            clear()
