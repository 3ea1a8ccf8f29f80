"""Tool calling in the OpenAI shape: `tools` rendered through the model's own chat template, the model's answer
parsed back into `tool_calls`, and a constraint that forces a call when `tool_choice` asks for one.

Three output styles cover the common templates: "hermes" (Qwen2.5/Qwen3, Hermes: `<tool_call>{json}</tool_call>`),
"llama3" (Llama 3.1+: `{"name": ..., "parameters": ...}`, maybe after `<|python_tag|>`) and "mistral"
(`[TOOL_CALLS][{...}]`, or `[TOOL_CALLS]name[ARGS]{...}` in newer templates).
"""

from macllm.tools.forced import tool_call_constraint
from macllm.tools.messages import check_tools, render_tool_prompt, template_messages
from macllm.tools.parse import parse_tool_calls
from macllm.tools.styles import STYLES, tool_style

__all__ = ["STYLES", "check_tools", "parse_tool_calls", "render_tool_prompt", "template_messages",
           "tool_call_constraint", "tool_style"]
