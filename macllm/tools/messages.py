"""OpenAI-shaped `tools` and messages made ready for a chat template.

OpenAI sends a call's `arguments` as a JSON string and `content: null` beside tool calls; templates (Llama 3.1,
Mistral) expect `arguments` as a mapping (they `tojson` it) and test or concatenate `content` as text. So
arguments are parsed into dicts, a null content becomes "" and an empty `tool_calls` is dropped (Llama 3.1
checks only that the key exists).
"""

from __future__ import annotations

import json

from macllm.errors import MacllmError
from macllm.tools.styles import tool_style


def check_tools(tools) -> list[dict]:
    """`tools` as OpenAI sends them: a list of {"type": "function", "function": {"name", "description"?,
    "parameters"?}}. Returns it; raises MacllmError (one line) naming the first bad entry."""
    if not isinstance(tools, list):
        raise MacllmError("tools must be a list of {\"type\": \"function\", \"function\": {...}} objects")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise MacllmError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise MacllmError(f"tools[{i}].function.name must be a non-empty string")
        if name in names:
            raise MacllmError(f"tools[{i}]: the name {name!r} is given twice")
        names.add(name)
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise MacllmError(f"tools[{i}].function.parameters must be a JSON schema object")
    return tools


def _template_call(call: dict) -> dict:
    function = call.get("function")
    if not isinstance(function, dict):
        return call
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return call  # not JSON: the template gets the text as it came
    return {**call, "function": {**function, "arguments": arguments}}


def template_messages(messages: list[dict]) -> list[dict]:
    """Copies of `messages` as templates expect them (see the module docstring); other messages unchanged."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(message)
            continue
        message = dict(message)
        if "tool_calls" in message:
            calls = message.pop("tool_calls")
            if calls:
                message["tool_calls"] = [_template_call(c) if isinstance(c, dict) else c for c in calls]
        if message.get("content") is None and ("tool_calls" in message or message.get("role") == "assistant"):
            message["content"] = ""
        out.append(message)
    return out


def render_tool_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                       add_generation_prompt: bool = True, enable_thinking: bool | None = None) -> str:
    """The prompt text for `messages` (OpenAI shape, tool calls and `tool` results included) with `tools`
    offered, through the model's own chat template. A template that ignores tools is refused in one line."""
    if tools:
        check_tools(tools)
        if tool_style(tokenizer.chat_template) is None:
            raise MacllmError("this model's chat template does not offer tools to the model; use a model whose "
                              "template does (Qwen2.5/Qwen3, Llama 3.1+, Mistral)")
    return tokenizer.apply_chat_template(template_messages(messages), add_generation_prompt=add_generation_prompt,
                                         enable_thinking=enable_thinking, tools=tools or None)
