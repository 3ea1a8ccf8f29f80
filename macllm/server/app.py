"""The Starlette app: routes, authentication, the body limit, and turning every failure into an OpenAI error.

Handlers check and tokenize a request before it queues (so a bad one is a 4xx at once, never a broken stream),
then hand the token ids to the Scheduler. Template rendering and tokenizing run in worker threads: they are pure
Python/Rust, not MLX, and must not hold up the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult
from macllm.lora import store
from macllm.server import requests, sse, tool_calls
from macllm.server.constraints import response_constraint
from macllm.server.errors import ApiError, bad_request, error_body
from macllm.server.openai_shapes import Answer
from macllm.server.scheduler import Scheduler

DEFAULT_MAX_BODY = 8 * 1024 * 1024  # a long conversation is well under 1 MB; embeddings batches fit in 8
POLL_DISCONNECT_S = 0.2  # a non-streaming request checks this often whether its client is still there


@dataclass
class ServerConfig:
    model_id: str  # what /v1/models calls the loaded model
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    embedder: str | None = None  # the embedder's source (catalog name, folder); None: the notes default


Handler = Callable[[Request], Awaitable[Response]]


class Api:
    def __init__(self, scheduler: Scheduler, config: ServerConfig):
        self.scheduler = scheduler
        self.engine = scheduler.engine
        self.config = config
        self.created = int(time.time())
        self._embedder: Any = None  # loaded on the first /v1/embeddings request, used on the engine thread
        self._embedder_lock = asyncio.Lock()

    # --- plumbing ------------------------------------------------------------------------------
    def endpoint(self, handler: Handler, public: bool = False) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                if not public:
                    self._authorize(request)
                return await handler(request)
            except ApiError as e:
                return e.response()
            except ClientDisconnect:
                return Response(status_code=499)
            except MacllmError as e:
                return ApiError(400, str(e)).response()
            except Exception as e:  # our bug: one line in the log and a 500, the server stays up
                _log_internal(e)
                return ApiError(500, f"internal error: {type(e).__name__}", code="internal_error").response()

        return wrapped

    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' (the --api-key "
                                "the server was started with)", code="invalid_api_key")

    async def _body(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the body is {int(declared)} bytes, over the limit of {limit}", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body is over the limit of {limit} bytes", code="body_too_large")
            chunks.append(chunk)
        return requests.parse_json(b"".join(chunks))

    def _model_adapters(self, model: str | None, adapters: dict[str, float] | None) -> dict[str, float]:
        """The blend a request runs under: its `adapters`, a `model+adapter` id, or the server's default."""
        base = self.config.model_id
        if model is None or model == base:
            return self.scheduler.blend_for(adapters)
        if model.startswith(base + "+"):
            name = model[len(base) + 1:]
            if adapters is not None:
                raise bad_request(f"'model' {model!r} names an adapter and 'adapters' names a blend; give one",
                                  "adapters")
            return {name: 1.0}
        raise ApiError(404, f"model {model!r} is not served here; GET /v1/models lists the ids (the loaded model is "
                            f"{base!r})", "model", "model_not_found")

    # --- models, health, adapters ------------------------------------------------------------------
    def _model_ids(self) -> list[str]:
        base = self.config.model_id
        return [base] + [f"{base}+{name}" for name in self.scheduler.usable_adapters]

    async def health(self, request: Request) -> Response:
        status = "shutting_down" if self.scheduler.shutting_down.is_set() else "ok"
        return JSONResponse({"status": status, "model": self.config.model_id,
                             "in_flight": self.scheduler.in_flight, "served": self.scheduler.finished},
                            status_code=503 if status != "ok" else 200)

    async def models(self, request: Request) -> Response:
        data = [{"id": i, "object": "model", "created": self.created, "owned_by": "macllm"} for i in self._model_ids()]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if model_id not in self._model_ids():
            raise ApiError(404, f"model {model_id!r} is not served here; GET /v1/models lists the ids", "model",
                           "model_not_found")
        return JSONResponse({"id": model_id, "object": "model", "created": self.created, "owned_by": "macllm"})

    async def adapters(self, request: Request) -> Response:
        if request.method == "POST":
            names, default = requests.adapters_request(await self._body(request))
            await self.scheduler.ensure_loaded(names)
            if default is not None:
                await self.scheduler.set_default(default)
        available = await asyncio.to_thread(store.list_adapters)
        return JSONResponse({"default": self.scheduler.default_adapters, "loaded": self.scheduler.loaded_adapters,
                             "available": [{"name": a.get("name"), "base_model": a.get("base_model"),
                                            "where": a.get("where")} for a in available]})

    # --- generation ---------------------------------------------------------------------------------
    def _params(self, request: requests.Common, prompt_tokens: int, constraint=None) -> GenerationParams:
        s = request.sampling
        context = self.engine.info.context_length if self.engine.info else 0
        if context and prompt_tokens >= context:
            raise bad_request(f"the prompt is {prompt_tokens} tokens; this model's context is {context} tokens. "
                              f"Shorten the prompt", "messages", "context_length_exceeded")
        room = context - prompt_tokens if context else s.max_tokens or 256
        if s.max_tokens is not None and s.max_tokens > room:
            raise bad_request(f"this model's context is {context} tokens and the prompt takes {prompt_tokens}, so "
                              f"at most {room} can be generated, but max_tokens is {s.max_tokens}; lower it",
                              "max_tokens", "context_length_exceeded")
        return GenerationParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                                repetition_penalty=s.repetition_penalty, seed=s.seed,
                                max_tokens=s.max_tokens or room, stop_strings=s.stop,
                                top_alternatives=s.top_logprobs if s.logprobs else 0, constraint=constraint)

    def _chat_tokens(self, chat: requests.ChatRequest) -> list[int]:
        tokenizer = self.engine.tokenizer
        text = tokenizer.apply_chat_template(chat.messages, add_generation_prompt=True,
                                             enable_thinking=chat.enable_thinking)
        return tokenizer.encode(text)

    def _completion_tokens(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.engine.tokenizer.encode(prompt)
        vocab = self.engine.tokenizer.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"token id {bad} is outside this model's vocabulary (0 to {vocab - 1})", "prompt")
        return prompt

    async def chat_completions(self, request: Request) -> Response:
        chat = requests.chat_request(await self._body(request))
        blend = self._model_adapters(chat.model, chat.adapters)
        tokenizer = self.engine.tokenizer
        constraint = await asyncio.to_thread(response_constraint, tokenizer, chat.response_format)
        if chat.tools:
            plan = await asyncio.to_thread(tool_calls.plan, tokenizer, chat)
            if plan.constraint is not None and constraint is not None:
                raise bad_request("a forced tool call and 'response_format' cannot both shape the answer; drop one",
                                  "tool_choice")
            tokens = await asyncio.to_thread(tokenizer.encode, plan.prompt)
            return await self._respond(request, chat, tokens, blend, chat=True, tool_style=plan.style,
                                       constraint=plan.constraint or constraint)
        tokens = await asyncio.to_thread(self._chat_tokens, chat)
        return await self._respond(request, chat, tokens, blend, chat=True, constraint=constraint)

    async def completions(self, request: Request) -> Response:
        completion = requests.completion_request(await self._body(request))
        blend = self._model_adapters(completion.model, completion.adapters)
        tokens = await asyncio.to_thread(self._completion_tokens, completion.prompt)
        return await self._respond(request, completion, tokens, blend, chat=False)

    async def _respond(self, request: Request, req: requests.Common, tokens: list[int], blend: dict[str, float],
                       chat: bool, constraint=None, tool_style: str | None = None) -> Response:
        params = self._params(req, len(tokens), constraint)
        await self.scheduler.ensure_loaded(blend)  # an unknown adapter is a 404 now, not a broken stream
        answer = Answer(model=req.model or self.config.model_id, chat=chat, tokenizer=self.engine.tokenizer,
                        top_logprobs=req.sampling.top_logprobs if req.sampling.logprobs else None,
                        tool_style=tool_style)
        events = self.scheduler.generate(tokens, params, blend)
        if req.stream:
            return StreamingResponse(self._stream(answer, events, req.include_usage), media_type=sse.MEDIA_TYPE,
                                     headers=sse.HEADERS)
        result = await self._collect(request, answer, events)
        return JSONResponse(answer.whole(result))

    async def _collect(self, request: Request, answer: Answer, events: AsyncIterator) -> GenerationResult:
        """Run a non-streaming generation, cancelling it if the client disconnects meanwhile."""
        async def run() -> GenerationResult:
            async for event in events:
                if isinstance(event, GenerationResult):
                    return event
                answer.add(event)
            raise AssertionError("a generation ends with its result")

        task = asyncio.ensure_future(run())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=POLL_DISCONNECT_S)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise ClientDisconnect()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await events.aclose()  # type: ignore[attr-defined]

    async def _stream(self, answer: Answer, events: AsyncIterator, include_usage: bool) -> AsyncIterator[bytes]:
        try:
            first = answer.first_chunk()
            if first is not None:
                yield sse.event(first)
            async for event in events:
                if isinstance(event, GenerationResult):
                    if event.finish_reason == "cancelled" and self.scheduler.shutting_down.is_set():
                        yield sse.event(error_body("the server is shutting down; the answer was cut here", 503,
                                                   code="server_shutdown"))
                    else:
                        for final in answer.final_chunks(event):
                            yield sse.event(final)
                        if include_usage:
                            yield sse.event(answer.usage_chunk(event))
                    yield sse.DONE
                    return
                chunk = answer.token_chunk(event, answer.add(event))
                if chunk is not None:
                    yield sse.event(chunk)
        except ApiError as e:
            yield sse.event(e.body())
            yield sse.DONE
        except MacllmError as e:
            yield sse.event(error_body(str(e), 400))
            yield sse.DONE
        except Exception as e:  # our bug, mid-stream: one line in the log, a final error event, the server goes on
            _log_internal(e)
            yield sse.event(error_body(f"internal error: {type(e).__name__}", 500, code="internal_error"))
            yield sse.DONE
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    # --- embeddings ---------------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        req = requests.embedding_request(await self._body(request))
        embedder = await self._load_embedder()
        if req.model is not None and req.model not in (embedder.source, self.config.model_id):
            raise ApiError(404, f"embedding model {req.model!r} is not served here; use {embedder.source!r}",
                           "model", "model_not_found")
        vectors = await asyncio.wrap_future(self.engine.submit(embedder.embed, req.inputs))
        counts = await asyncio.to_thread(embedder.count_tokens, req.inputs)
        data = []
        for i, row in enumerate(vectors):
            vector = np.asarray(row, dtype=np.float32)
            value = base64.b64encode(vector.tobytes()).decode() if req.base64 else vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(min(c, embedder.content_limit) + 2 for c in counts)  # + [CLS] and [SEP]
        return JSONResponse({"object": "list", "data": data, "model": embedder.source,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _load_embedder(self):
        async with self._embedder_lock:
            if self._embedder is None:
                # Start-up time: the notes machinery loads only when a client first asks for embeddings.
                from macllm.rag.embedder import Embedder

                try:
                    future = self.engine.submit(Embedder.load, self.config.embedder, progress=False)
                    self._embedder = await asyncio.wrap_future(future)
                except MacllmError as e:
                    raise ApiError(503, f"the embedding model cannot be loaded: {e}", code="embedder_unavailable") \
                        from None
            return self._embedder


def _log_internal(error: Exception) -> None:
    print(f"macllm serve: internal error: {type(error).__name__}: {next(iter(str(error).splitlines()), '')}",
          file=sys.stderr)


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    elif status == 404:
        message = f"no such endpoint: {request.method} {request.url.path} (see GET /v1/models, /health)"
    else:
        message = "the request failed"
    return JSONResponse(error_body(message, status, code="not_found" if status == 404 else None), status_code=status)


def build_app(scheduler: Scheduler, config: ServerConfig) -> Starlette:
    api = Api(scheduler, config)
    e = api.endpoint
    routes = [
        Route("/health", e(api.health, public=True), methods=["GET"]),
        Route("/v1/models", e(api.models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", e(api.model), methods=["GET"]),
        Route("/v1/chat/completions", e(api.chat_completions), methods=["POST"]),
        Route("/v1/completions", e(api.completions), methods=["POST"]),
        Route("/v1/embeddings", e(api.embeddings), methods=["POST"]),
        Route("/v1/adapters", e(api.adapters), methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found, Exception: _not_found})
    app.state.api = api
    return app
