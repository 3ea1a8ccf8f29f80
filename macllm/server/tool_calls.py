"""`tools` and `tool_choice` for the chat endpoint: the prompt rendered with the tools through the model's own
template, a constraint when `tool_choice` forces a call, and the answer split back into content and `tool_calls`
(macllm/tools does the work; this is where the server meets it).

With tools offered, whether an answer is a call is only known at its end, so a stream sends the answer as one
delta (content and/or tool_calls) when it is done rather than markup token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

from macllm.errors import MacllmError
from macllm.server.errors import bad_request
from macllm.server.requests import ChatRequest
from macllm.structured import Constraint
from macllm.tools import check_tools, parse_tool_calls, render_tool_prompt, tool_call_constraint, tool_style


@dataclass
class ToolPlan:
    prompt: str  # the rendered chat template, tools included
    style: str | None  # the call format the template teaches; None: no tools offered, answers are plain
    constraint: Constraint | None  # a forced call


def plan(tokenizer, chat: ChatRequest) -> ToolPlan:
    """Raises ApiError 400 naming `tools` / `tool_choice` on a bad tool list, a choice naming no tool, or a model
    whose template offers no tools."""
    tools = chat.tools
    offered = bool(tools) and chat.tool_choice != "none"
    try:
        if tools:
            check_tools(tools)
        prompt = render_tool_prompt(tokenizer, chat.messages, tools if offered else None,
                                    enable_thinking=chat.enable_thinking)
    except MacllmError as e:
        raise bad_request(str(e), "tools") from None
    if not offered:
        return ToolPlan(prompt, None, None)
    try:
        constraint = tool_call_constraint(tokenizer, tools or [], chat.tool_choice)
    except MacllmError as e:
        raise bad_request(str(e), "tool_choice") from None
    return ToolPlan(prompt, tool_style(tokenizer.chat_template), constraint)


def split(text: str, style: str | None) -> tuple[str | None, list[dict]]:
    """(content, calls) of a finished answer; content None when the answer is only calls (as OpenAI sends it)."""
    if style is None:
        return text, []
    content, calls = parse_tool_calls(text, style)
    if calls and not content.strip():
        return None, calls
    return content, calls
