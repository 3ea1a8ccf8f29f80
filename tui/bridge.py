"""The one place the app talks to the macllm Engine.

The Engine owns all MLX work on its own thread. Here, thread workers wait on its futures and token
streams and post Textual messages back, so the UI thread never blocks and never touches MLX.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from macllm.engine import Engine, PrefillProgress, TokenStream
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult
from macllm.loaded import ModelInfo
from macllm.lora.store import fingerprint
from macllm.prompt_cache import limit
from macllm.rag.answer import ask
from macllm.rag.store import Store, index_path
from tui.events import (
    AdaptersChanged,
    AdaptersFailed,
    AnswerFailed,
    AnswerFinished,
    AnswerPrefill,
    AnswerSources,
    AnswerToken,
    IndexFailed,
    IndexFinished,
    IndexProgress,
    ModelLoaded,
    ModelLoadFailed,
)

if TYPE_CHECKING:
    from textual.app import App


def _one_line(error: BaseException) -> str:
    if isinstance(error, MacllmError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class EngineBridge:
    def __init__(self, app: "App", engine: Engine | None = None):
        self.app = app
        self.engine = engine or Engine()
        self.model_source: str | None = None
        self.active_adapters: dict[str, float] = {}  # as last applied; read on the UI thread
        self._retrievers: dict = {}  # notes index -> Retriever, opened on first question
        self.loading = False
        self._stream: TokenStream | None = None
        self._answer_ids = itertools.count(1)
        self._conversations: dict[str, str] = {}  # stored chat id -> engine conversation id
        self._notes_context: dict[str, int] = {}  # stored chat id -> tokens its last notes answer used
        self._swapping = threading.Lock()  # one adapter swap at a time, so the recorded set is the last applied
        self._watch: tuple[tuple[str, str | None], threading.Event] | None = None  # (folder, index), stop
        self._embedders: dict = {}  # embedder source -> Embedder, made and used on the engine thread

    # --- model ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.engine.loaded is not None and not self.loading

    @property
    def info(self) -> ModelInfo | None:
        return self.engine.info

    def load_model(self, source: str, keep_quantized: bool = False) -> None:
        """Start loading `source`; the app hears ModelLoaded or ModelLoadFailed. Loading begins after the
        next frame: it imports the model code on the engine thread, which would otherwise hold the
        interpreter while the first screen is drawn."""
        self.loading = True
        self.model_source = source

        def wait() -> None:
            try:
                info = self.engine.load(source, keep_quantized=keep_quantized, progress=False).result()
            except BaseException as e:  # any failure becomes a notification + model picker
                self.loading = False
                self.app.post_message(ModelLoadFailed(source, _one_line(e)))
                return
            self.loading = False
            for conv_id in self._conversations.values():  # their caches belong to the old model
                self.engine.close_conversation(conv_id)
            self._conversations.clear()
            self.active_adapters = {}  # a new model starts without adapters
            self.app.post_message(ModelLoaded(info))

        self.app.call_after_refresh(self.app.run_worker, wait, thread=True, group="model", exit_on_error=False)

    # --- conversations -------------------------------------------------------------------
    def sync_conversation(self, chat_id: str, system: str | None, messages: list[dict]) -> str:
        """Make the engine's copy of a chat match what is stored (keeps its KV cache when it can). Queued on
        the engine thread; never waits, so the UI thread may call it."""
        conv_id = self._conversations.get(chat_id)
        if conv_id is None:
            conv_id = self.engine.new_conversation(system=system, messages=messages)
            self._conversations[chat_id] = conv_id
        else:
            self.engine.set_messages(conv_id, messages, system=system)
        return conv_id

    def forget(self, chat_id: str, system: str | None = None, messages: list[dict] | None = None) -> None:
        """A chat was deleted: drop it from the engine, and its prompt cache from disk (given its messages)."""
        self._notes_context.pop(chat_id, None)
        conv_id = self._conversations.pop(chat_id, None)
        if conv_id:
            self.engine.close_conversation(conv_id, keep_on_disk=False)
        if messages:
            self.engine.forget_on_disk(system, messages)

    def context_used(self, chat_id: str) -> int:
        """Tokens of context the chat's latest answer used: a notes answer's own prompt, or the chat's cache."""
        if chat_id in self._notes_context:
            return self._notes_context[chat_id]
        conv_id = self._conversations.get(chat_id)
        return self.engine.context_used(conv_id) if conv_id is not None else 0

    # --- answers -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._stream is not None

    def answer(self, chat_id: str, system: str | None, messages: list[dict], params: GenerationParams,
               target=None) -> int:
        """Stream an answer to `messages` (which end with the user's turn). Token messages are posted
        to `target` (the chat screen; default the app). Returns the answer id."""
        target = target or self.app
        self._notes_context.pop(chat_id, None)
        conv_id = self.sync_conversation(chat_id, system, messages)
        answer_id = next(self._answer_ids)
        stream = self._stream = self.engine.reply(conv_id, params)

        def pump() -> None:
            try:
                self._pump(stream, answer_id, target)
            except BaseException as e:
                target.post_message(AnswerFailed(answer_id, _one_line(e)))

        self.app.run_worker(pump, thread=True, group="answer", exit_on_error=False)
        return answer_id

    def _pump(self, stream: TokenStream, answer_id: int, target, notes_chat_id: str | None = None) -> None:
        """Forward a token stream's events as messages (runs in a thread worker)."""
        self._stream = stream
        try:
            for event in stream.with_progress():
                if isinstance(event, PrefillProgress):
                    target.post_message(AnswerPrefill(answer_id, event.done, event.total))
                elif isinstance(event, GenerationResult):
                    if notes_chat_id is not None:
                        self._notes_context[notes_chat_id] = len(event.fed_tokens)
                    target.post_message(AnswerFinished(answer_id, event))
                else:
                    target.post_message(AnswerToken(answer_id, event))
        finally:
            if self._stream is stream:
                self._stream = None

    # --- notes ---------------------------------------------------------------------------
    def index_folder(self, folder: str, index: str | None, target, embedder: str | None = None) -> None:
        """(Re)index a notes folder on the engine thread (the embedder is MLX work too), posting
        IndexProgress per file, then IndexFinished or IndexFailed. `embedder`: for a new index (an
        existing one keeps the embedder it was built with); default MiniLM."""
        def run() -> None:
            # Start-up time: the notes machinery (embedder, indexer, tqdm, markdown) loads on first use.
            from macllm.rag.embedder import Embedder
            from macllm.rag.indexer import index_notes

            def job():
                store = Store(index_path(index))
                try:
                    source = store.meta("embedder_source") or embedder
                    model = Embedder.load(source or None, progress=False)
                    return index_notes(store, model, [folder],
                                       on_file=lambda d, t, p: target.post_message(IndexProgress(d, t, p)))
                finally:
                    store.close()

            try:
                summary = self.engine.submit(job).result()
            except BaseException as e:
                target.post_message(IndexFailed(_one_line(e)))
                return
            self._retrievers.pop(index, None)  # reopen: the index changed
            target.post_message(IndexFinished(summary))

        self.app.run_worker(run, thread=True, group="index", exit_on_error=False)

    def watch_notes(self, folder: str, index: str | None, catch_up: bool = False) -> None:
        """Keep `folder` indexed while the app runs: each batch of changes (rag/watch.py) is one incremental
        pass on the engine thread, reported as a notification. Watching another folder ends the last watch.
        `catch_up` (at launch): one pass first, for what changed while the app was closed."""
        key = (str(Path(folder).expanduser().resolve()), index)
        if self._watch is not None:
            if self._watch[0] == key:
                return
            self._watch[1].set()
        stop = threading.Event()
        self._watch = (key, stop)

        def run() -> None:
            from macllm.rag.embedder import Embedder  # start-up time: see index_folder
            from macllm.rag.indexer import index_notes
            from macllm.rag.watch import describe_batch, describe_pass, watch_changes

            def one_pass():
                store = Store(index_path(index))
                try:
                    source = store.meta("embedder_source") or ""
                    if source not in self._embedders:
                        self._embedders[source] = Embedder.load(source or None, progress=False)
                    return index_notes(store, self._embedders[source], [key[0]])
                finally:
                    store.close()

            if catch_up:
                try:
                    summary = self.engine.submit(one_pass).result()
                except BaseException as e:
                    self.app.notify(_one_line(e), title="Notes: re-indexing failed", severity="error")
                else:
                    self._retrievers.pop(index, None)
                    if summary.added or summary.changed or summary.removed:
                        self.app.notify(describe_pass(summary), title="Notes re-indexed since last time")
            for changes in watch_changes([key[0]], index_path(index), stop):
                try:
                    summary = self.engine.submit(one_pass).result()
                except BaseException as e:
                    self.app.notify(_one_line(e), title="Notes: re-indexing failed", severity="error")
                    continue
                self._retrievers.pop(index, None)  # reopen: the index changed
                self.app.notify(describe_batch(changes, summary), title="Notes re-indexed")

        # A daemon thread, not a Textual worker: the app's exit would wait for a worker, and this one only
        # ends when `stop` is set (shutdown, or another folder).
        threading.Thread(target=run, name="notes-watch", daemon=True).start()

    def ask_notes(self, question: str, index: str | None, params: GenerationParams, target,
                  chat_id: str | None = None) -> int:
        """Answer from the notes index with numbered citations; sources are posted before the tokens, and
        AnswerPrefill while the notes are read. `chat_id`: whose status shows the context the answer used."""
        answer_id = next(self._answer_ids)
        placeholder = self._stream = TokenStream()  # busy (and stoppable) from now on

        def run() -> None:
            from macllm.rag.session import open_retriever  # start-up time: see index_folder

            try:
                retriever = self._retrievers.get(index)
                if retriever is None:
                    retriever = self._retrievers[index] = self.engine.submit(open_retriever, index, False).result()
                answer = ask(self.engine, retriever, question, params=params)
                if placeholder.cancelled.is_set():  # Esc while we were retrieving
                    answer.stream.cancel()
                target.post_message(AnswerSources(answer_id, answer.sources))
                self._pump(answer.stream, answer_id, target, notes_chat_id=chat_id)
            except BaseException as e:
                self._stream = None
                target.post_message(AnswerFailed(answer_id, _one_line(e)))

        self.app.run_worker(run, thread=True, group="answer", exit_on_error=False)
        return answer_id

    # --- the prompt cache on disk ------------------------------------------------------------
    def prompt_cache_mb(self) -> int:
        """The cap new engines get: $MACLLM_PROMPT_CACHE_MB (or `chat --prompt-cache-mb`), else the saved setting."""
        return limit.resolve_mb()

    def set_prompt_cache_mb(self, mb: int) -> str | None:
        """Save the cap as the setting and apply it to the engine (evicting to fit). A one-line problem or None."""
        try:
            limit.save_mb(mb)
        except (OSError, MacllmError) as e:
            return f"The prompt cache cap could not be saved: {e}"
        if os.environ.get(limit.ENV, "").strip():
            return f"${limit.ENV} (or --prompt-cache-mb) is set and keeps its cap until macllm restarts without it"
        self.engine.set_prompt_cache_mb(mb)
        return None

    # --- adapters ------------------------------------------------------------------------
    def set_kv_bits(self, bits: int | None) -> None:
        """Caches made from now on store keys/values at `bits` (an engine job; never waits)."""
        self.engine.set_kv_bits(bits)

    def model_fingerprint(self) -> str | None:
        """Which base shapes the loaded model has (adapters made for others are refused)."""
        loaded = self.engine.loaded
        return fingerprint(loaded.config) if loaded is not None else None

    def apply_adapters(self, scales: dict[str, float], reload: tuple[str, ...] = (),
                       refs: dict[str, str] | None = None) -> None:
        """Make exactly `scales` active ({} = the base model), loading adapters from the store first as
        needed (`reload`: names to read from disk again, e.g. just retrained; `refs`: a folder for a
        name that is not in the store). Off the UI thread, one swap at a time; posts AdaptersChanged with the
        swap time, or AdaptersFailed, after recording the set the engine really has active (a reload may
        already have unloaded an adapter when a later step failed)."""
        scales = {name: float(scale) for name, scale in scales.items()}

        def swap() -> None:
            with self._swapping:
                try:
                    loaded = {a["name"] for a in self.engine.adapters["loaded"]}
                    for name in scales:
                        if name in reload and name in loaded:
                            self.engine.unload_adapter(name)
                            loaded.discard(name)
                        if name not in loaded:
                            self.engine.load_adapter((refs or {}).get(name, name), name=name)
                    started = time.perf_counter()
                    self.engine.set_adapters(scales)
                    elapsed_ms = (time.perf_counter() - started) * 1000
                except BaseException as e:
                    self.active_adapters = self._engine_active_adapters()
                    self.app.post_message(AdaptersFailed(_one_line(e)))
                    return
                self.active_adapters = dict(scales)
            self.app.post_message(AdaptersChanged(dict(scales), elapsed_ms))

        self.app.run_worker(swap, thread=True, group="adapters", exit_on_error=False)

    def _engine_active_adapters(self) -> dict[str, float]:
        try:
            return dict(self.engine.adapters["active"])
        except BaseException:  # no model (or no engine): nothing is active
            return {}

    def use_adapter(self, name: str) -> None:
        """Make `name` (read from the store again, e.g. just trained) the only active adapter."""
        self.apply_adapters({name: 1.0}, reload=(name,))

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def shutdown(self) -> None:
        self.stop()
        if self._watch is not None:
            self._watch[1].set()
        self.engine.close()
