"""Engine: owns the model, tokenizer, KV caches and conversations on ONE thread.

MLX streams belong to the thread that created them, so every MLX call for a model happens on the
engine thread. Every change of engine state is a job on that thread too: callers on any thread submit
work and get a Future or a TokenStream back, and only ever see copies (ModelInfo, ConversationView).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable

from macllm.cache import make_cache
from macllm.engine import adapter_swap
from macllm.engine.batch import BatchRunner
from macllm.engine.batch import Request as BatchRequest
from macllm.engine.conversation import Conversation, ConversationView, new_conversation_id
from macllm.engine.disk_prefix import DiskPrefixes
from macllm.engine.draft_slot import DraftSlot
from macllm.engine.job_thread import JobThread
from macllm.engine.prompt_slots import PromptSlots, blend_key
from macllm.engine.token_stream import PrefillProgress, TokenStream
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult, stream_generate
from macllm.generation.speculative import DraftModel
from macllm.generation.steps import common_prefix_length
from macllm.loaded import LoadedModel, ModelInfo
from macllm.lora import formats, store
from macllm.lora.manager import AdapterManager
from macllm.models.decoder import DecoderStack
from macllm.prompt_cache import PromptCache, given_limit_bytes, resolve_limit_bytes

KV_BITS = (None, 8, 4)


def check_kv_bits(bits: int | None) -> int | None:
    if bits not in KV_BITS:
        raise MacllmError(f"KV cache bits must be 8 or 4 (or none for full precision), got {bits!r}")
    return bits


class Engine:
    def __init__(self, model: str | None = None, keep_quantized: bool = False, progress: bool = True,
                 kv_bits: int | None = None, prompt_cache_mb: int | None = None):
        self._kv_bits = check_kv_bits(kv_bits)  # caches made from now on store keys/values at this width
        # Long prefixes saved on disk across restarts, under a cap (MiB; None: the environment's or the setting).
        self._disk = DiskPrefixes(PromptCache(given_limit_bytes(prompt_cache_mb)))
        self._loaded: LoadedModel | None = None
        self._adapters: AdapterManager | None = None  # for the loaded model, made on first use
        self._draft = DraftSlot()  # speculative decoding's draft model, touched only on the engine thread
        self._conversations: dict[str, Conversation] = {}  # touched only on the engine thread
        self._slots = PromptSlots()  # one-off requests' caches kept for prefix reuse (engine thread only)
        self._batch = BatchRunner(self, self._slots)  # complete()'s requests, decoded together
        # What callers may read without waiting for the engine: replaced whole, never mutated in place.
        self._context_used: dict[str, int] = {}
        self._published = threading.Lock()
        self._thread = JobThread("macllm-engine", on_stop=self._forget_everything)
        if model is not None:
            try:
                self.load(model, keep_quantized=keep_quantized, progress=progress).result()
            except BaseException:
                self.close()
                raise

    # --- the engine thread ---------------------------------------------------------------
    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Run fn on the engine thread; the Future carries its result or exception."""
        return self._thread.submit(fn, *args, **kwargs)

    def close(self) -> None:
        """Finish the queued jobs, free every cache and stop the engine thread."""
        self._thread.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _forget_everything(self) -> None:
        for conv in self._conversations.values():
            self._save_conversation(conv)
        self._conversations.clear()
        self._batch.fail_all(MacllmError("the engine stopped while this answer was generated"), pending=True)
        self._slots.clear()
        self._publish_context()
        self._adapters = None
        self._draft.drop()
        self._loaded = None

    # --- model ----------------------------------------------------------------------------
    def load(self, source: str, keep_quantized: bool = False, progress: bool = True) -> Future:
        """Load a model (replacing the current one); the Future carries its ModelInfo."""
        def job() -> ModelInfo:
            # Start-up time: the loader brings in GGUF, numpy and the hub (~0.3 s); the app draws its first
            # screen without waiting for them.
            from macllm.loader import load_model

            for conv in self._conversations.values():  # their caches belong to the model being replaced
                self._save_conversation(conv)
            loaded = load_model(source, keep_quantized=keep_quantized, progress=progress)
            self._loaded = loaded
            self._adapters = None  # adapters belong to the model they were loaded onto
            self._batch.fail_all(MacllmError("the model was replaced while this answer was generated"))
            self._slots.clear()
            self._invalidate_caches()
            return loaded.info

        return self.submit(job)

    @property
    def loaded(self) -> LoadedModel | None:
        """The loaded model; use its `model` only inside a job (`submit`), on the engine thread."""
        return self._loaded

    def _require_model(self) -> LoadedModel:
        if self._loaded is None:
            raise MacllmError("no model is loaded")
        return self._loaded

    @property
    def info(self) -> ModelInfo | None:
        """Facts about the loaded model (frozen), or None before one is loaded."""
        loaded = self._loaded
        return loaded.info if loaded is not None else None

    @property
    def tokenizer(self):
        return self._require_model().tokenizer

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        return self.submit(lambda: self._require_model().tokenizer.encode(text, add_bos=add_bos)).result()

    # --- draft model (speculative decoding) ---------------------------------------------------
    def load_draft(self, source: str, keep_quantized: bool = False) -> Future:
        """Load a draft model for the loaded one (same tokenizer, else a one-line MacllmError); the Future
        carries its ModelInfo. Generations that name it in `GenerationParams.draft_model` use it bare."""
        return self.submit(lambda: self._ensure_draft(source, self._require_model(), keep_quantized).info)

    def drop_draft(self) -> Future:
        """Forget the draft model and its caches."""
        def job() -> None:
            if self._draft.drop():
                self._batch.guesses.drop()
                for conv in self._conversations.values():
                    conv.drop_draft_cache()

        return self.submit(job)

    @property
    def draft_info(self) -> ModelInfo | None:
        """Facts about the held draft model, or None."""
        draft = self._draft.loaded
        return draft.info if draft is not None else None

    def _ensure_draft(self, source: str, target: LoadedModel, keep_quantized: bool = False) -> LoadedModel:
        draft, changed = self._draft.ensure(source, target, keep_quantized)
        if changed:  # caches of the previous draft mean nothing to this one
            for conv in self._conversations.values():
                conv.drop_draft_cache()
        return draft

    def _draft_for(self, loaded: LoadedModel, params: GenerationParams, conv: Conversation | None) -> DraftModel | None:
        if not params.draft_model:
            return None
        draft = self._ensure_draft(params.draft_model, loaded)
        if conv is None:
            return DraftModel(draft.model, draft.tokenizer, kv_bits=self._kv_bits)
        if conv.draft_cache is None:
            conv.draft_cache, conv.draft_cached_tokens = make_cache(draft.model, self._kv_bits), []
        return DraftModel(draft.model, draft.tokenizer, conv.draft_cache, conv.draft_cached_tokens)

    # --- KV cache ---------------------------------------------------------------------------
    @property
    def kv_bits(self) -> int | None:
        return self._kv_bits

    def set_kv_bits(self, bits: int | None) -> Future:
        """Store keys/values at `bits` (8, 4; None = full precision) from the next turn on: caches made at
        another width are dropped, so each conversation is prefilled again."""
        check_kv_bits(bits)

        def job() -> None:
            if bits != self._kv_bits:
                self._kv_bits = bits
                self._slots.clear()
                self._invalidate_caches()

        return self.submit(job)

    # --- the prompt cache on disk -----------------------------------------------------------
    @property
    def prompt_cache(self) -> PromptCache:
        return self._disk.store

    def set_prompt_cache_mb(self, mb: int) -> Future:
        """Cap the prompt cache on disk at `mb` MiB (0: off) from the next generation on; evicts to fit."""
        limit = resolve_limit_bytes(mb)

        def job() -> None:
            self._disk.store.limit_bytes = limit
            if limit and self._disk.store.folder.is_dir():
                self._disk.store.evict()

        return self.submit(job)

    def _disk_key(self, loaded: LoadedModel) -> dict:
        return self._disk.key(loaded, self._adapters, self._kv_bits)

    def _save_conversation(self, conv: Conversation) -> None:
        """Keep a conversation's cache on disk if it grew since it was last saved (close, exit, model switch)."""
        loaded = self._loaded
        if loaded is None or conv.cache is None:
            return
        if self._disk.save_grown(loaded, self._disk_key(loaded), conv.saved_tokens, conv.cached_tokens, conv.cache):
            conv.saved_tokens = len(conv.cached_tokens)

    def _invalidate_caches(self) -> None:
        for conv in self._conversations.values():
            conv.invalidate_cache()
        self._publish_context()

    def _publish_context(self) -> None:
        snapshot = {conv_id: len(conv.cached_tokens) for conv_id, conv in self._conversations.items()}
        with self._published:
            self._context_used = snapshot

    # --- adapters ---------------------------------------------------------------------------
    # Synchronous: each runs on the engine thread (after any generation in flight) and returns or raises.
    def _adapter_manager(self) -> AdapterManager:
        if self._adapters is None:
            loaded = self._require_model()
            self._adapters = AdapterManager(loaded.model, loaded.config, loaded.info.source)
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
        previous set are dropped, so the next turn of every conversation is prefilled again. On failure
        the previous set stays active; if the swap had got part-way, caches are dropped too."""
        self.submit(self._swap, dict(scales or {})).result()

    def _swap(self, scales: dict[str, float]) -> None:
        """On the engine thread: make `scales` the active set. Conversations' caches computed under another set
        are dropped; the prompt slots keep theirs, each is tagged with its blend."""
        try:
            changed = adapter_swap.swap(self._adapter_manager(), scales)
        except MacllmError:
            raise  # refused before any layer changed: caches stay valid
        except BaseException:
            self._invalidate_caches()  # some layers may have computed under the new set
            raise
        if changed:
            self._invalidate_caches()

    def unload_adapter(self, name: str) -> None:
        def job():
            if self._adapter_manager().unload(name):
                self._invalidate_caches()
            self._slots.clear()  # a later adapter of the same name is another adapter

        self.submit(job).result()

    @property
    def adapters(self) -> dict:
        """{"loaded": [summaries], "active": {name: scale}}."""
        return self.submit(lambda: self._adapter_manager().describe()).result()

    # --- generation -----------------------------------------------------------------------
    def _stream_job(self, prepare: Callable[[LoadedModel], tuple[list[int], Conversation | None]],
                    params: GenerationParams) -> TokenStream:
        """Queue a generation; `prepare` runs on the engine thread and returns (prompt, conversation or None)."""
        stream = TokenStream()

        def job() -> None:
            conv = None
            try:
                loaded = self._require_model()
                prompt, conv = prepare(loaded)
                self._generate_into(stream, loaded, prompt, params, conv)
                stream._close()
            except BaseException as e:
                if conv is not None:
                    conv.invalidate_cache()  # a failed step may have left the cache half-updated
                    self._publish_context()
                stream._fail(e)

        self.submit(job)
        return stream

    def _generate_into(self, stream: TokenStream, loaded: LoadedModel, prompt: list[int],
                       params: GenerationParams, conv: Conversation | None) -> None:
        if conv is None:  # one-off: a fresh cache, freed when the job ends
            cache, cached = make_cache(loaded.model, self._kv_bits), []
        else:
            if conv.cache is None:
                conv.cache, conv.cached_tokens = make_cache(loaded.model, self._kv_bits), []
            cache, cached = conv.cache, conv.cached_tokens
        key = self._disk_key(loaded)
        found = self._disk.find(loaded, key, self._kv_bits, prompt, common_prefix_length(cached, prompt))
        if found is not None:  # a longer prefix on disk than in memory (a restart, a reopened chat)
            cache, cached = found.cache, found.tokens
            if conv is not None:
                conv.cache, conv.cached_tokens, conv.saved_tokens = cache, cached, len(cached)
        result = None
        draft = self._draft_for(loaded, params, conv)
        draft_reads = 0
        if draft is not None and self._draft.loaded is not None:
            draft_reads = self._disk.resume_draft(self._draft.loaded, self._kv_bits, draft, prompt)
            if conv is not None:
                conv.draft_cache, conv.draft_cached_tokens = draft.cache, draft.cached
        events = stream_generate(loaded.model, loaded.tokenizer, prompt, params, cache=cache, cached=cached,
                                 cancel=stream.cancelled,
                                 on_prefill=lambda done, total: stream._put(PrefillProgress(done, total)),
                                 draft=draft)
        for event in events:
            if isinstance(event, GenerationResult):
                result = event
            if isinstance(event, GenerationResult) and conv is not None:
                conv.cached_tokens = event.fed_tokens
                if draft is not None:
                    conv.draft_cached_tokens = draft.cached
                answer = {"role": "assistant", "content": event.text, "finish_reason": event.finish_reason}
                if event.reasoning:
                    answer["reasoning_content"] = event.reasoning
                conv.messages.append(answer)
                self._publish_context()
            stream._put(event)
        if result is not None and self._disk.save_after_prefill(loaded, key, result.stats.prefilled_tokens,
                                                                result.fed_tokens, cache) and conv is not None:
            conv.saved_tokens = len(result.fed_tokens)
        if result is not None and draft is not None and self._draft.loaded is not None:
            self._disk.save_draft(self._draft.loaded, self._kv_bits, draft, draft_reads)

    def generate(self, prompt: str | list[int], params: GenerationParams | None = None) -> TokenStream:
        """Raw completion: a string is tokenized as-is (special-token strings honoured). No cache is kept."""
        params = params or GenerationParams()
        tokens = list(prompt) if isinstance(prompt, list) else None  # copied now: the caller may reuse its list
        text = prompt if isinstance(prompt, str) else ""

        def prepare(loaded: LoadedModel):
            return (tokens if tokens is not None else loaded.tokenizer.encode(text)), None

        return self._stream_job(prepare, params)

    def complete(self, prompt: list[int], params: GenerationParams | None = None,
                 adapters: dict[str, float] | None = None) -> TokenStream:
        """A one-off generation after `prompt` (token ids) under exactly `adapters` ({}: the bare base; None: the
        active set); no other request's adapters are ever in force while it computes. Its KV cache is
        kept in a small pool tagged with the blend: a later request that starts with the same tokens (the next
        turn of a conversation, resent whole by an HTTP client) computes only the rest. A stream cancelled
        before its turn comes ends at once, without computing anything. Concurrent requests under the same blend
        are decoded together, one forward pass for all (engine/batch.py)."""
        stream = TokenStream()
        self._batch.submit(BatchRequest(list(prompt), params or GenerationParams(),
                                        dict(adapters) if adapters is not None else None, stream))
        return stream

    # Used by the batch runner (engine/batch.py), on the engine thread.
    def _batchable(self) -> bool:
        """Whether several sequences can share a decode forward: our own decoder stack (its attention splits
        RowCaches), not Gemma's sliding-window body or an mlx-lm model class."""
        loaded = self._loaded
        return loaded is not None and isinstance(getattr(loaded.model, "model", None), DecoderStack)

    def _active_blend(self) -> tuple:
        return blend_key(self._adapters.active if self._adapters is not None else {})

    def _new_cache(self, loaded: LoadedModel) -> list:
        return make_cache(loaded.model, self._kv_bits)

    # --- conversations --------------------------------------------------------------------
    # Each is a job, queued in order: a chat() right after new_conversation() finds the conversation.
    def _conversation(self, conv_id: str) -> Conversation:
        try:
            return self._conversations[conv_id]
        except KeyError:
            raise MacllmError(f"no conversation with id {conv_id}") from None

    def new_conversation(self, system: str | None = None, messages: list[dict] | None = None) -> str:
        """Start a conversation, optionally with earlier messages (e.g. restored from disk)."""
        conv = Conversation(system=system, messages=[dict(m) for m in messages or []], id=new_conversation_id())

        def job() -> None:
            self._conversations[conv.id] = conv
            self._publish_context()

        self.submit(job)
        return conv.id

    def set_messages(self, conv_id: str, messages: list[dict], system: str | None = None) -> Future:
        """Replace a conversation's system prompt and messages (after an edit or a regenerate). Its KV cache
        is kept: the next turn reuses whatever prefix still matches."""
        copied = [dict(m) for m in messages]

        def job() -> None:
            conv = self._conversation(conv_id)
            conv.system, conv.messages = system, copied

        return self.submit(job)

    def chat(self, conv_id: str, text: str, params: GenerationParams | None = None) -> TokenStream:
        """Add a user message and stream the assistant's answer; the reply is appended when done."""
        chosen = params or GenerationParams()

        def prepare(loaded: LoadedModel):
            conv = self._conversation(conv_id)
            conv.messages.append({"role": "user", "content": text})
            return self._render(loaded, conv, chosen.enable_thinking), conv

        return self._stream_job(prepare, chosen)

    def reply(self, conv_id: str, params: GenerationParams | None = None) -> TokenStream:
        """Answer the conversation as it stands (after a regenerate or an edit)."""
        chosen = params or GenerationParams()

        def prepare(loaded: LoadedModel):
            conv = self._conversation(conv_id)
            return self._render(loaded, conv, chosen.enable_thinking), conv

        return self._stream_job(prepare, chosen)

    @staticmethod
    def _render(loaded: LoadedModel, conv: Conversation, enable_thinking: bool | None) -> list[int]:
        tok = loaded.tokenizer
        text = tok.apply_chat_template(conv.template_messages(), add_generation_prompt=True,
                                       enable_thinking=enable_thinking)
        return tok.encode(text)

    def close_conversation(self, conv_id: str, keep_on_disk: bool = True) -> Future:
        """Forget a conversation and free its KV cache (after the jobs queued before this one); its cache is saved
        on disk if it grew, unless `keep_on_disk` is False (a deleted chat: see `forget_on_disk`)."""
        def job() -> None:
            conv = self._conversations.pop(conv_id, None)
            if conv is not None:
                if keep_on_disk:
                    self._save_conversation(conv)
                self._publish_context()

        return self.submit(job)

    def forget_on_disk(self, system: str | None, messages: list[dict]) -> Future:
        """Delete the prompt-cache files that begin like this chat, so a deleted chat leaves no copy of its text
        in the cache (files of other chats with the same opening go too: they are only a saving). The Future
        carries how many were deleted."""
        chat = Conversation(system=system, messages=[dict(m) for m in messages])

        def job() -> int:
            loaded = self._loaded
            if loaded is None or not chat.template_messages():
                return 0
            return self._disk.store.forget(self._render(loaded, chat, None))

        return self.submit(job)

    def conversation(self, conv_id: str) -> ConversationView:
        """A copy of the conversation as it stands once the jobs queued before this call have run."""
        return self.submit(lambda: self._conversation(conv_id).view()).result()

    def conversation_ids(self) -> list[str]:
        """The open conversations, once the jobs queued before this call have run."""
        return self.submit(lambda: list(self._conversations)).result()

    def context_used(self, conv_id: str) -> int:
        """Tokens the conversation's KV cache holds as of its last finished job (0 if unknown). Never waits,
        so the UI thread may call it while a generation runs."""
        with self._published:
            return self._context_used.get(conv_id, 0)

    def chat_tokens(self, conv_id: str) -> list[int]:
        return self.submit(lambda: list(self._conversation(conv_id).cached_tokens)).result()
