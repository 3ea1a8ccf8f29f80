"""Request bodies -> checked, typed requests. Every problem is an ApiError naming the field (`param`).

Fields OpenAI defines that we do not act on are refused when they would change the answer (n > 1, a
frequency penalty) and ignored when they would not (user, store, metadata), so a client never gets an answer
to another question than the one it asked.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from macllm.lora.weight_bounds import weight_problem
from macllm.server.errors import ApiError, bad_request

MAX_SEED = 2**64 - 1  # MLX's random keys take an unsigned 64-bit seed
MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20
ROLES = ("system", "developer", "user", "assistant", "tool")


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("the body is not UTF-8 text; send a JSON object", code="invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise bad_request(f"the body is not valid JSON ({e}); send a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(value), type(value).__name__)


def wrong_type(param: str, wanted: str, value: object) -> ApiError:
    return ApiError(422, f"'{param}' must be {wanted}, got {_type_name(value)}", param, "invalid_type")


class Fields:
    """Typed reads from one JSON object; `null` counts as absent, as OpenAI's clients send it."""

    def __init__(self, body: dict, prefix: str = ""):
        self.body = body
        self.prefix = prefix

    def _raw(self, name: str):
        return self.body.get(name)

    def name(self, name: str) -> str:
        return self.prefix + name

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self._raw(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise wrong_type(self.name(name), "a string", value)
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise wrong_type(self.name(name), "true or false", value)
        return value

    def integer(self, name: str, default: int | None, low: int | None = None, high: int | None = None,
                what: str = "") -> int | None:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type(self.name(name), "an integer", value)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise bad_request(f"'{self.name(name)}' must be {bounds}{what}, got {value}", self.name(name))
        return value

    def number(self, name: str, default: float, check, rule: str) -> float:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong_type(self.name(name), "a number", value)
        if not (math.isfinite(value) and check(value)):
            raise bad_request(f"'{self.name(name)}' must be {rule}, got {value}", self.name(name))
        return float(value)


@dataclass
class Sampling:
    temperature: float
    top_p: float
    min_p: float
    top_k: int
    repetition_penalty: float
    seed: int | None
    max_tokens: int | None  # None: up to the end of the context
    stop: tuple[str, ...]
    logprobs: bool
    top_logprobs: int


@dataclass
class Common:
    model: str | None
    stream: bool
    include_usage: bool
    adapters: dict[str, float] | None  # None: the server's default blend
    sampling: Sampling


@dataclass
class ChatRequest(Common):
    messages: list[dict] = field(default_factory=list)
    enable_thinking: bool | None = None
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None


@dataclass
class CompletionRequest(Common):
    prompt: str | list[int] = ""


@dataclass
class EmbeddingRequest:
    model: str | None
    inputs: list[str]
    base64: bool


def _common(f: Fields, chat: bool) -> dict:
    f.integer("n", 1, 1, 1, what=" (one choice per request)")
    if not chat:
        f.integer("best_of", 1, 1, 1, what=" (one choice per request)")
    for name in ("frequency_penalty", "presence_penalty"):
        f.number(name, 0.0, lambda v: v == 0, "0 (not supported; use 'repetition_penalty', e.g. 1.1)")
    if f.body.get("logit_bias"):
        raise bad_request("'logit_bias' is not supported; leave it out", "logit_bias")
    options = f.body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise wrong_type("stream_options", "an object", options)
        include_usage = Fields(options, "stream_options.").boolean("include_usage")
    if chat:
        logprobs = f.boolean("logprobs")
        top = f.integer("top_logprobs", 0, 0, MAX_TOP_LOGPROBS) or 0
        if top and not logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        max_tokens = f.integer("max_completion_tokens", None, 1)
        if max_tokens is None:
            max_tokens = f.integer("max_tokens", None, 1)
    else:
        n_logprobs = f.integer("logprobs", None, 0, MAX_TOP_LOGPROBS)
        logprobs, top = n_logprobs is not None, n_logprobs or 0
        max_tokens = f.integer("max_tokens", 16, 1)  # the completions API's own default
    sampling = Sampling(
        temperature=f.number("temperature", 1.0, lambda v: v >= 0, "0 (greedy) or a positive number"),
        top_p=f.number("top_p", 1.0, lambda v: 0 < v <= 1, "above 0 and at most 1"),
        min_p=f.number("min_p", 0.0, lambda v: 0 <= v < 1, "at least 0 and below 1"),
        top_k=f.integer("top_k", 0, 0) or 0,
        repetition_penalty=f.number("repetition_penalty", 1.0, lambda v: v > 0, "a positive number (1 = off)"),
        seed=f.integer("seed", None, 0, MAX_SEED),
        max_tokens=max_tokens,
        stop=_stops(f.body.get("stop")),
        logprobs=logprobs,
        top_logprobs=top,
    )
    return dict(model=f.string("model"), stream=f.boolean("stream"), include_usage=include_usage,
                adapters=_adapters(f.body.get("adapters")), sampling=sampling)


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise wrong_type("stop", "a string or an array of strings", value)
    if len(stops) > MAX_STOPS:
        raise bad_request(f"'stop' may hold at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    if any(s == "" for s in stops):
        raise bad_request("'stop' strings must not be empty", "stop")
    return tuple(stops)


def _adapters(value) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type("adapters", 'an object of name -> scale, e.g. {"pirate": 1.0} ({} = the bare base)', value)
    out = {}
    for name, scale in value.items():
        problem = weight_problem(scale)
        if problem:
            raise bad_request(f"scale of adapter {name!r} {problem}", f"adapters.{name}")
        out[name] = float(scale)
    return out


def _text_content(content, param: str) -> str:
    """A message's content: a string, or text parts joined; images and audio are refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise wrong_type(param, "a string or an array of content parts", content)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise wrong_type(f"{param}[{i}]", "a content part object", part)
        kind = part.get("type")
        if kind != "text":
            raise bad_request(f"content part type {kind!r} is not supported (text only)", f"{param}[{i}].type",
                              "unsupported_content")
        text = part.get("text")
        if not isinstance(text, str):
            raise wrong_type(f"{param}[{i}].text", "a string", text)
        texts.append(text)
    return "".join(texts)


def _messages(value) -> list[dict]:
    if value is None:
        raise bad_request("'messages' is required: an array of {role, content}", "messages", "missing_field")
    if not isinstance(value, list):
        raise wrong_type("messages", "an array of {role, content}", value)
    if not value:
        raise bad_request("'messages' must not be empty", "messages")
    out = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise wrong_type(param, "an object with role and content", message)
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{param}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{param}.role")
        clean: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                 "content": _text_content(message.get("content"), f"{param}.content")}
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                clean[key] = message[key]
        if isinstance(message.get("tool_calls"), list):
            clean["tool_calls"] = message["tool_calls"]
        out.append(clean)
    return out


def chat_request(body: dict) -> ChatRequest:
    f = Fields(body)
    common = _common(f, chat=True)
    thinking = None
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise wrong_type("chat_template_kwargs", "an object", kwargs)
        value = kwargs.get("enable_thinking")
        if value is not None and not isinstance(value, bool):
            raise wrong_type("chat_template_kwargs.enable_thinking", "true or false", value)
        thinking = value
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
            raise wrong_type("response_format", 'an object with a "type"', response_format)
        if response_format["type"] == "text":
            response_format = None
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise wrong_type("tools", "an array of tools", tools)
    return ChatRequest(**common, messages=_messages(body.get("messages")), enable_thinking=thinking,
                       response_format=response_format, tools=tools or None, tool_choice=body.get("tool_choice"))


def completion_request(body: dict) -> CompletionRequest:
    f = Fields(body)
    common = _common(f, chat=False)
    if f.boolean("echo"):
        raise bad_request("'echo' is not supported; leave it out or false", "echo")
    if body.get("suffix"):
        raise bad_request("'suffix' is not supported; leave it out", "suffix")
    return CompletionRequest(**common, prompt=_prompt(body.get("prompt")))


def _prompt(value) -> str | list[int]:
    if value is None:
        raise bad_request("'prompt' is required: a string or an array of token ids", "prompt", "missing_field")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        if not value:
            raise bad_request("'prompt' must not be empty", "prompt")
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return list(value)
    if isinstance(value, list) and len(value) > 1:
        raise bad_request("'prompt' holds several prompts; send one per request", "prompt")
    raise wrong_type("prompt", "a non-empty string or array of token ids", value)


def embedding_request(body: dict) -> EmbeddingRequest:
    f = Fields(body)
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if value is None:
        raise bad_request("'input' is required: a string or an array of strings", "input", "missing_field")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise wrong_type("input", "a string or a non-empty array of strings (token arrays are not supported)",
                         value)
    encoding = f.string("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_request(f"'encoding_format' must be float or base64, got {encoding!r}", "encoding_format")
    return EmbeddingRequest(model=f.string("model"), inputs=inputs, base64=encoding == "base64")


def adapters_request(body: dict) -> tuple[list[str], dict[str, float] | None]:
    """POST /v1/adapters: {"load": ["name", ...]} and/or {"default": {"name": scale}} -> (to load, new default)."""
    load = body.get("load")
    names = [load] if isinstance(load, str) else (load or [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise wrong_type("load", "an adapter name or an array of names", load)
    default = body.get("default")
    if default is None and not names:
        raise bad_request('give "load": [names] and/or "default": {name: scale} ({} = the bare base)', "default",
                          "missing_field")
    if default is not None and not isinstance(default, dict):
        raise wrong_type("default", 'an object of name -> scale, e.g. {"pirate": 1.0}', default)
    return names, _adapters(default) if default is not None else None
