"""TokenStream: how a caller on any thread receives one generation's events from the engine thread."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

from macllm.generation import GenerationResult, TokenEvent

_DONE = object()


@dataclass(frozen=True)
class PrefillProgress:
    """A long prompt is being read: `done` of `total` prompt tokens computed so far."""

    done: int
    total: int


class TokenStream:
    """Iterate to receive TokenEvents then a GenerationResult; `cancel()` from any thread.

    `with_progress()` also yields PrefillProgress events while a long prompt is prefilled."""

    def __init__(self):
        self._events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, event) -> None:
        if isinstance(event, GenerationResult):
            self._result = event
        self._events.put(event)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._events.put(_DONE)
        self._finished.set()

    def _close(self) -> None:
        self._events.put(_DONE)
        self._finished.set()

    def with_progress(self) -> Iterator[PrefillProgress | TokenEvent | GenerationResult]:
        while True:
            event = self._events.get()
            if event is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield event

    def __iter__(self) -> Iterator[TokenEvent | GenerationResult]:
        return (event for event in self.with_progress() if not isinstance(event, PrefillProgress))

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until generation ends (consumes nothing; events stay available to iterate)."""
        if not self._finished.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self._error is not None:
            raise self._error
        assert self._result is not None, "a stream that finished without error has a result"
        return self._result
