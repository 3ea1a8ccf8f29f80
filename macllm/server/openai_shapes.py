"""The JSON OpenAI's clients expect: chat and text completions (whole and as stream chunks), logprobs, usage.

`Answer` accumulates one generation's events into these shapes, so the streamed and the whole answer are built
from the same pieces and cannot disagree.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from macllm.generation import GenerationResult, TokenEvent
from macllm.server import tool_calls
from macllm.tokenizer import Tokenizer


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result: GenerationResult) -> dict:
    s = result.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generation_tokens,
            "total_tokens": s.prompt_tokens + s.generation_tokens,
            "prompt_tokens_details": {"cached_tokens": s.prompt_tokens - s.prefilled_tokens}}


def finish_reason(result: GenerationResult, calls: list | None = None) -> str:
    """OpenAI's values: a cancelled generation (client gone, server stopping) reports where it was cut."""
    if calls:
        return "tool_calls"
    return "stop" if result.finish_reason == "stop" else "length"


@dataclass
class Answer:
    """One generation as OpenAI shapes. `chat` picks chat.completion vs text_completion."""

    model: str
    chat: bool
    tokenizer: Tokenizer
    top_logprobs: int | None  # None: no logprobs asked for
    tool_style: str | None = None  # tools offered in this call format: the answer may be tool calls
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.id = self.id or new_id("chatcmpl" if self.chat else "cmpl")
        self._offset = 0  # characters of text so far (legacy logprobs' text_offset)

    # --- per token --------------------------------------------------------------------------
    def _token_entry(self, token_id: int, logprob: float) -> dict:
        tokenizer = self.tokenizer
        return {"token": tokenizer.piece(token_id), "logprob": logprob, "bytes": list(tokenizer.piece_bytes(token_id))}

    def add(self, event: TokenEvent) -> dict | None:
        """Record a token; returns its logprobs entry (or None when not asked for)."""
        self.text.append(event.text)
        self.reasoning.append(event.reasoning)
        if self.top_logprobs is None:
            return None
        entry = self._token_entry(event.token_id, event.logprob)
        alternatives = sorted(event.alternatives or [], key=lambda alt: -alt[1])[: self.top_logprobs]
        entry["top_logprobs"] = [self._token_entry(i, lp) for i, lp in alternatives]
        entry["text_offset"] = self._offset
        self._offset += len(event.text)
        self.logprobs.append(entry)
        return entry

    # --- chat ------------------------------------------------------------------------------
    def _chat_logprobs(self, entries: list[dict]) -> dict | None:
        if self.top_logprobs is None:
            return None
        return {"content": [{k: v for k, v in e.items() if k != "text_offset"} for e in entries]}

    def _legacy_logprobs(self, entries: list[dict]) -> dict | None:
        if self.top_logprobs is None:
            return None
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": [e["text_offset"] for e in entries]}

    def whole(self, result: GenerationResult) -> dict:
        if self.chat:
            content, calls = tool_calls.split(result.text, self.tool_style)
            message: dict = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            if result.reasoning:
                message["reasoning_content"] = result.reasoning
            choice = {"index": 0, "message": message, "logprobs": self._chat_logprobs(self.logprobs),
                      "finish_reason": finish_reason(result, calls)}
        else:
            choice = {"index": 0, "text": result.text, "logprobs": self._legacy_logprobs(self.logprobs),
                      "finish_reason": finish_reason(result)}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": usage(result)}

    # --- stream chunks -------------------------------------------------------------------------
    def _chunk(self, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, **extra}

    def first_chunk(self) -> dict | None:
        """Chat streams open with the assistant role (OpenAI does); text completions have no such chunk."""
        if not self.chat:
            return None
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def token_chunk(self, event: TokenEvent, entry: dict | None) -> dict | None:
        """The chunk for one token; None when it made no text and no logprobs to report (held back), and always
        when tools are offered (the answer goes out whole at the end, see server/tool_calls.py)."""
        if self.tool_style is not None or (not event.text and not event.reasoning and entry is None):
            return None
        if self.chat:
            delta: dict = {}
            if event.text or entry is not None:
                delta["content"] = event.text
            if event.reasoning:
                delta["reasoning_content"] = event.reasoning
            choice = {"index": 0, "delta": delta,
                      "logprobs": self._chat_logprobs([entry]) if entry is not None else None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": event.text,
                      "logprobs": self._legacy_logprobs([entry]) if entry is not None else None,
                      "finish_reason": None}
        return self._chunk([choice])

    def final_chunks(self, result: GenerationResult) -> list[dict]:
        """What ends a stream: text no token event carried (a held-back partial stop string; with tools, the whole
        answer and its calls), then the finish reason."""
        if not self.chat:
            return [self._chunk([{"index": 0, "text": self.tail(result), "logprobs": None,
                                  "finish_reason": finish_reason(result)}])]
        out: list[dict] = []
        calls: list[dict] = []
        if self.tool_style is not None:
            content, calls = tool_calls.split(result.text, self.tool_style)
            delta: dict = {}
            if content:
                delta["content"] = content
            if calls:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
            logprobs = self._chat_logprobs(self.logprobs)
            if delta or logprobs is not None:
                out.append(self._chunk([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}]))
            tail = ""
        else:
            tail = self.tail(result)
        out.append(self._chunk([{"index": 0, "delta": {"content": tail} if tail else {}, "logprobs": None,
                                 "finish_reason": finish_reason(result, calls)}]))
        return out

    def usage_chunk(self, result: GenerationResult) -> dict:
        return self._chunk([], usage=usage(result))

    def tail(self, result: GenerationResult) -> str:
        """Text in the result that no token event carried (released at the end: a held-back partial stop)."""
        shown = "".join(self.text)
        return result.text[len(shown):] if result.text.startswith(shown) else ""
