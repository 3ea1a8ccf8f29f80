"""`tool_choice` that forces a call ("required", or one named function) -> a Constraint on the answer: exactly
one call in the model's own style whose arguments fit the tool's parameter schema."""

from __future__ import annotations

import json

from macllm.errors import MacllmError
from macllm.structured import Constraint, compile_constraint
from macllm.tools.messages import check_tools
from macllm.tools.styles import tool_style

# The call's JSON written as the templates show it, and no free whitespace (see structured/constraint.py).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _forced_tools(tools: list[dict], tool_choice) -> list[dict] | None:
    """The tools one of which must be called, or None when the model may answer freely."""
    if tool_choice is None or tool_choice in ("auto", "none"):
        return None
    if tool_choice == "required":
        if not tools:
            raise MacllmError("tool_choice \"required\" needs at least one tool in tools")
        return tools
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise MacllmError("tool_choice must be \"auto\", \"none\", \"required\" or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    name = function["name"]
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise MacllmError(f"tool_choice names the function {name!r}, which is not among the tools")
    return chosen


def _call_schema(tool: dict, arguments_key: str) -> dict:
    function = tool["function"]
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": function["name"]}, arguments_key: parameters},
            "required": ["name", arguments_key], "additionalProperties": False}


def _marker(tokenizer, text: str) -> str:
    """A Lark item for a marker such as `<tool_call>`: by id when the tokenizer has it as an added token
    (llguidance, like the model, treats every added token as one indivisible symbol, special or not), else as
    literal text."""
    token_id = tokenizer.token_to_id(text)
    if token_id is not None and token_id in tokenizer.hf_tokenizer.get_added_tokens_decoder():
        return f"<[{token_id}]>"
    return json.dumps(text)


def tool_call_constraint(tokenizer, tools: list[dict], tool_choice, style: str | None = None) -> Constraint | None:
    """A Constraint forcing one call (tool_choice "required" or {"type": "function", "function": {"name"}}), or
    None for "auto" / "none" / no choice. `style` defaults to the one the tokenizer's chat template teaches.
    Raises MacllmError (one line) on a bad choice or a parameter schema that cannot compile."""
    check_tools(tools)
    forced = _forced_tools(tools, tool_choice)
    if forced is None:
        return None
    style = style or tool_style(tokenizer.chat_template)
    if style is None:
        raise MacllmError("this model's chat template has no tool-call format, so a call cannot be forced; "
                          "use a model whose template offers tools")
    arguments_key = "parameters" if style == "llama3" else "arguments"
    schemas = [_call_schema(t, arguments_key) for t in forced]
    schema = {**(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}), "x-guidance": JSON_STYLE}
    call = f"call: %json {json.dumps(schema, ensure_ascii=False)}"
    if style == "hermes":
        start = f'start: {_marker(tokenizer, "<tool_call>")} "\\n" call "\\n" {_marker(tokenizer, "</tool_call>")}'
    elif style == "mistral":
        start = f'start: {_marker(tokenizer, "[TOOL_CALLS]")} "[" call "]"'
    else:
        start = "start: call"
    try:
        return compile_constraint(tokenizer, grammar=f"{start}\n{call}\n")
    except MacllmError as e:
        raise MacllmError(f"cannot force the tool call: {e}") from None
