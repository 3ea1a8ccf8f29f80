"""Scheduler: HTTP requests become engine jobs; it owns the server's adapter state and the in-flight streams.

Every generation is an `Engine.complete` request: they start in arrival order on the engine thread (fair: nobody
overtakes), each under exactly its own adapter blend, and those running at once share each decode step
(engine/batch.py). With `serve --draft-model` or `--prompt-lookup` (`Speculation`) every request asks for
speculative decoding, which the engine uses while that request runs alone (engine/solo_guesses.py). The
engine's TokenStream is read by a small thread per request and handed to the event loop, so no MLX call and no
blocking wait ever runs on the loop. A client that goes away cancels its stream (at the next token, or before it
starts if still queued); shutdown cancels them all, and each ends with a final event.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, replace
from typing import AsyncIterator

from macllm.engine import Engine, TokenStream
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult, TokenEvent
from macllm.lora import store
from macllm.server.errors import ApiError

_END = object()


@dataclass(frozen=True)
class Speculation:
    """The server's speculative decoding, asked for on every request (same output, faster alone)."""

    draft_model: str | None = None
    prompt_lookup: bool = False
    draft_tokens: int = 0  # 0: adapt

    def apply(self, params: GenerationParams) -> GenerationParams:
        if not self.draft_model and not self.prompt_lookup:
            return params
        return replace(params, draft_model=self.draft_model, prompt_lookup=self.prompt_lookup,
                       draft_tokens=self.draft_tokens)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Scheduler:
    def __init__(self, engine: Engine, default_adapters: dict[str, float] | None = None,
                 speculation: Speculation | None = None):
        self.engine = engine
        self.speculation = speculation or Speculation()
        self._default: dict[str, float] = dict(default_adapters or {})
        self._loaded: set[str] = {a["name"] for a in engine.adapters["loaded"]}
        self._fitting = _fitting_adapters(engine)  # in the store and made for this model: loadable on first use
        self._loading = asyncio.Lock()  # one adapter load at a time: two requests never load the same twice
        self._inflight: set[TokenStream] = set()
        self._lock = threading.Lock()
        self.shutting_down = threading.Event()
        self.finished = 0  # generations ended (any way), for /health

    # --- adapters ----------------------------------------------------------------------------
    @property
    def default_adapters(self) -> dict[str, float]:
        return dict(self._default)

    @property
    def loaded_adapters(self) -> list[str]:
        return sorted(self._loaded)

    @property
    def usable_adapters(self) -> list[str]:
        """Loaded ones, and those in the store made for this model (read once, at start)."""
        return sorted(self._loaded | self._fitting)

    async def ensure_loaded(self, names) -> None:
        """Load the adapters not yet in memory (store names or bundled examples); unknown -> 404."""
        missing = [n for n in names if n not in self._loaded]
        if not missing:
            return
        async with self._loading:
            for name in missing:
                if name in self._loaded:
                    continue
                try:
                    store.resolve(name)
                except MacllmError as e:
                    raise ApiError(404, str(e), f"adapters.{name}", "adapter_not_found") from None
                try:
                    await asyncio.to_thread(self.engine.load_adapter, name)
                except MacllmError as e:
                    raise ApiError(400, f"adapter {name!r} cannot be used with this model: {e}",
                                   f"adapters.{name}", "adapter_mismatch") from None
                self._loaded.add(name)

    async def set_default(self, scales: dict[str, float]) -> None:
        await self.ensure_loaded(scales)
        self._default = dict(scales)

    def blend_for(self, requested: dict[str, float] | None) -> dict[str, float]:
        return dict(self._default) if requested is None else dict(requested)

    # --- generation --------------------------------------------------------------------------
    async def generate(self, prompt: list[int], params: GenerationParams,
                       adapters: dict[str, float]) -> AsyncIterator[TokenEvent | GenerationResult]:
        """Yield the generation's TokenEvents then its GenerationResult. Leaving the loop early (the client
        went away, the task was cancelled) cancels the generation."""
        await self.ensure_loaded(adapters)
        if self.shutting_down.is_set():
            raise ApiError(503, "the server is shutting down; retry on its next start", code="server_shutdown")
        stream = self.engine.complete(prompt, self.speculation.apply(params), adapters)
        with self._lock:
            self._inflight.add(stream)
        try:
            async for event in _events(stream):
                yield event
        finally:
            stream.cancel()
            with self._lock:
                self._inflight.discard(stream)
                self.finished += 1

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def begin_shutdown(self) -> None:
        """Refuse new generations and cancel the running and queued ones (safe from a signal handler)."""
        self.shutting_down.set()
        with self._lock:
            streams = list(self._inflight)
        for stream in streams:
            stream.cancel()


def _fitting_adapters(engine: Engine) -> set[str]:
    loaded = engine.loaded
    if loaded is None:
        return set()
    wanted = store.fingerprint(loaded.config)
    return {row["name"] for row in store.list_adapters() if row.get("base_fingerprint") == wanted}


async def _events(stream: TokenStream) -> AsyncIterator:
    """A TokenStream (blocking) as an async iterator: a thread reads it and hands each event to the loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def hand(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed (shutdown): nobody is listening any more
            stream.cancel()

    def pump() -> None:
        try:
            for event in stream:
                hand(event)
            hand(_END)
        except BaseException as e:  # delivered to the request, never lost in the thread
            hand(_Failed(e))

    threading.Thread(target=pump, name="macllm-serve-stream", daemon=True).start()
    while True:
        item = await queue.get()
        if item is _END:
            return
        if isinstance(item, _Failed):
            raise item.error
        yield item
