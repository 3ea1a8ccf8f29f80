"""Engine: owns the model, tokenizer and conversations on ONE thread.

MLX streams belong to the thread that created them, so every MLX call for a model happens on the
engine thread. Callers on any thread submit work and receive token events through a TokenStream.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable

import mlx.core as mx

from macllm.cache import make_cache
from macllm.engine.conversation import Conversation
from macllm.engine.token_stream import TokenStream
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult, stream_generate
from macllm.loader import load_model
from macllm.lora import formats, store
from macllm.lora.manager import AdapterManager


class Engine:
    def __init__(self, model: str | None = None, keep_quantized: bool = False, progress: bool = True):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="macllm-engine", daemon=True)
        self._thread.start()
        self.loaded = None
        self._adapters = None  # AdapterManager for the loaded model, made on first use
        self.conversations: dict[str, Conversation] = {}
        if model is not None:
            try:
                self.load(model, keep_quantized=keep_quantized, progress=progress).result()
            except BaseException:
                self.close()
                raise

    # --- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                self._release_streams()
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # delivered to the caller, never kills the thread
                future.set_exception(e)

    @staticmethod
    def _release_streams() -> None:
        """MLX keeps per-thread streams; a thread that ends with them alive aborts the process at exit
        ("terminate called without an active exception"). Release them on this thread first."""
        clear = getattr(mx, "clear_streams", None)
        if clear is not None:
            clear()

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Run fn on the engine thread; the Future carries its result or exception."""
        future: Future = Future()
        self._jobs.put((lambda: fn(*args, **kwargs), future))
        return future

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=10)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- model ----------------------------------------------------------------------------
    def load(self, source: str, keep_quantized: bool = False, progress: bool = True) -> Future:
        def job():
            loaded = load_model(source, keep_quantized=keep_quantized, progress=progress)
            self.loaded = loaded
            self._adapters = None  # adapters belong to the model they were loaded onto
            self._invalidate_caches()
            return loaded.info

        return self.submit(job)

    def _require_model(self):
        if self.loaded is None:
            raise MacllmError("no model is loaded")
        return self.loaded

    @property
    def info(self) -> dict:
        return dict(self.loaded.info) if self.loaded else {}

    @property
    def tokenizer(self):
        return self._require_model().tokenizer

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        return self.submit(lambda: self._require_model().tokenizer.encode(text, add_bos=add_bos)).result()

    # --- adapters ---------------------------------------------------------------------------
    # Synchronous: each runs on the engine thread (after any generation in flight) and returns or raises.
    def _adapter_manager(self):
        if self._adapters is None:
            loaded = self._require_model()
            self._adapters = AdapterManager(loaded.model, loaded.config, loaded.info.get("source"))
        return self._adapters

    def load_adapter(self, ref: str, name: str | None = None) -> dict:
        """Read an adapter (store name or folder) and keep it in memory, inactive. Returns its summary."""
        def job():
            manager = self._adapter_manager()
            adapter = formats.read_adapter(store.resolve(ref), name=name)
            manager.load(adapter)
            return next(a for a in manager.describe()["loaded"] if a["name"] == adapter.name)

        return self.submit(job).result()

    def set_adapters(self, scales: dict[str, float] | None) -> None:
        """Activate exactly these loaded adapters ({} or None: none). KV caches computed under the
        previous set are dropped, so the next turn of every conversation is prefilled again."""
        def job():
            if self._adapter_manager().activate(dict(scales or {})):
                self._invalidate_caches()

        self.submit(job).result()

    def unload_adapter(self, name: str) -> None:
        def job():
            if self._adapter_manager().unload(name):
                self._invalidate_caches()

        self.submit(job).result()

    @property
    def adapters(self) -> dict:
        """{"loaded": [summaries], "active": {name: scale}}."""
        return self.submit(lambda: self._adapter_manager().describe()).result()

    def _invalidate_caches(self) -> None:
        for conv in self.conversations.values():
            conv.invalidate_cache()

    # --- generation -----------------------------------------------------------------------
    def _stream_job(self, make_prompt: Callable, params: GenerationParams, conv: Conversation | None
                    ) -> TokenStream:
        stream = TokenStream()

        def job():
            try:
                loaded = self._require_model()
                prompt = make_prompt(loaded.tokenizer)
                cache = conv.cache if conv is not None else None
                cached = conv.cached_tokens if conv is not None else None
                if conv is not None and cache is None:
                    cache = conv.cache = make_cache(loaded.model, getattr(loaded.model, "kv_bits", None))
                for event in stream_generate(loaded.model, loaded.tokenizer, prompt, params, cache=cache,
                                             cached=cached, cancel=stream.cancelled):
                    if isinstance(event, GenerationResult) and conv is not None:
                        conv.cached_tokens = event.fed_tokens
                        conv.messages.append({"role": "assistant", "content": event.text,
                                              "finish_reason": event.finish_reason})
                    stream._put(event)
                stream._close()
            except BaseException as e:
                if conv is not None:
                    conv.invalidate_cache()  # a failed step may have left the cache half-updated
                stream._fail(e)

        self.submit(job)
        return stream

    def generate(self, prompt: str | list[int], params: GenerationParams | None = None) -> TokenStream:
        """Raw completion: a string is tokenized as-is (special-token strings honoured)."""
        params = params or GenerationParams()

        def make_prompt(tok):
            return list(prompt) if isinstance(prompt, list) else tok.encode(prompt)

        return self._stream_job(make_prompt, params, None)

    def new_conversation(self, system: str | None = None, messages: list[dict] | None = None) -> str:
        """Start a conversation, optionally with earlier messages (e.g. restored from disk)."""
        conv = Conversation(system=system, messages=[dict(m) for m in messages or []])
        self.conversations[conv.id] = conv
        return conv.id

    def conversation(self, conv_id: str) -> Conversation:
        try:
            return self.conversations[conv_id]
        except KeyError:
            raise MacllmError(f"no conversation with id {conv_id}") from None

    def chat(self, conv_id: str, text: str, params: GenerationParams | None = None) -> TokenStream:
        """Add a user message and stream the assistant's answer; the reply is appended when done."""
        conv = self.conversation(conv_id)
        conv.messages.append({"role": "user", "content": text})
        return self.reply(conv_id, params)

    def reply(self, conv_id: str, params: GenerationParams | None = None) -> TokenStream:
        """Answer the conversation as it stands (after a regenerate or an edit)."""
        conv = self.conversation(conv_id)
        params = params or GenerationParams()

        def make_prompt(tok):
            rendered = tok.apply_chat_template(conv.template_messages(), add_generation_prompt=True)
            return tok.encode(rendered)

        return self._stream_job(make_prompt, params, conv)

    def close_conversation(self, conv_id: str) -> None:
        """Forget a conversation and free its KV cache."""
        self.conversations.pop(conv_id, None)

    def context_used(self, conv_id: str) -> int:
        return len(self.conversation(conv_id).cached_tokens)

    def chat_tokens(self, conv_id: str) -> list[int]:
        return list(self.conversation(conv_id).cached_tokens)
