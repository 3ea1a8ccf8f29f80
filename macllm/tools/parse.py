"""A model's answer -> (content, tool_calls), for each tool-call style (styles.py).

Calls come out in the OpenAI shape: {"id", "type": "function", "function": {"name", "arguments": JSON text}}.
Text that looks like a call but does not parse as one stays in `content`, so nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re
import secrets
import string

from macllm.errors import MacllmError
from macllm.tools.styles import STYLES

HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)
LLAMA_PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"
MISTRAL_CALL_ID = "[CALL_ID]"
_ALNUM = string.ascii_letters + string.digits


def _call_id(style: str) -> str:
    # Mistral's templates refuse any id but 9 letters or digits.
    if style == "mistral":
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def _call(name, arguments, style: str) -> dict | None:
    """An OpenAI tool call, or None when `name` / `arguments` are not a call's."""
    if not isinstance(name, str) or not name:
        return None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return {"id": _call_id(style), "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _json_call(text: str, arguments_key: str, style: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) - {"name", arguments_key, "arguments", "parameters"}:
        return None
    return _call(value.get("name"), value.get(arguments_key, value.get("arguments")), style)


def _parse_hermes(text: str) -> tuple[str, list[dict]]:
    calls, kept, at = [], [], 0
    for match in HERMES_CALL.finditer(text):
        call = _json_call(match.group(1), "arguments", "hermes")
        if call is None:
            continue
        kept.append(text[at:match.start()])
        at = match.end()
        calls.append(call)
    kept.append(text[at:])
    return "".join(kept).strip(), calls


def _parse_llama3(text: str) -> tuple[str, list[dict]]:
    body = text.strip()
    tagged = body.startswith(LLAMA_PYTHON_TAG)
    if tagged:
        body = body[len(LLAMA_PYTHON_TAG):].strip()
    if not body.startswith("{"):
        return text.strip(), []
    whole = _json_call(body, "parameters", "llama3")
    if whole is not None:
        return "", [whole]
    # Several calls: JSON objects separated by ';' (as Meta's prompt format allows).
    calls = [_json_call(part, "parameters", "llama3") for part in body.split(";") if part.strip()]
    if calls and all(c is not None for c in calls):
        return "", [c for c in calls if c is not None]
    return text.strip(), []


def _mistral_named_calls(body: str) -> list[dict] | None:
    """`name[ARGS]{...}` (optionally `name[CALL_ID]id[ARGS]{...}`), one per [TOOL_CALLS]."""
    calls = []
    for part in body.split(MISTRAL_CALLS):
        if not part.strip():
            continue
        name, sep, arguments = part.partition(MISTRAL_ARGS)
        if not sep:
            return None
        name = name.partition(MISTRAL_CALL_ID)[0].strip()
        call = _call(name, arguments.strip(), "mistral")
        if call is None:
            return None
        calls.append(call)
    return calls


def _parse_mistral(text: str) -> tuple[str, list[dict]]:
    content, sep, body = text.partition(MISTRAL_CALLS)
    if not sep:
        return text.strip(), []
    body = body.strip()
    calls: list[dict] | None = None
    if body.startswith("["):
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            found = [_call(v.get("name"), v.get("arguments", v.get("parameters")), "mistral") for v in value]
            calls = [c for c in found if c is not None] if all(c is not None for c in found) else None
    else:
        calls = _mistral_named_calls(body)
    if not calls:
        return text.strip(), []
    return content.strip(), calls


def parse_tool_calls(text: str, style: str) -> tuple[str, list[dict]]:
    """(content, calls) from a model's answer in `style` ("hermes", "llama3" or "mistral")."""
    if style == "hermes":
        return _parse_hermes(text)
    if style == "llama3":
        return _parse_llama3(text)
    if style == "mistral":
        return _parse_mistral(text)
    raise MacllmError(f"unknown tool-call style {style!r}; one of {', '.join(STYLES)}")
