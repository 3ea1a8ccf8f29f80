"""Which tool-call format a chat template teaches its model, told from the template's own text."""

from __future__ import annotations

STYLES = ("hermes", "llama3", "mistral")


def tool_style(chat_template: str | None) -> str | None:
    """"hermes", "llama3" or "mistral" for a template that renders `tools`; None for one that ignores them."""
    if not chat_template or "tools" not in chat_template:
        return None
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "<tool_call>" in chat_template:
        return "hermes"
    if "<|start_header_id|>" in chat_template and ("<|python_tag|>" in chat_template
                                                   or '"parameters"' in chat_template):
        return "llama3"
    return None
