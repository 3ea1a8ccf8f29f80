"""Chat templates come from model files (issue #13, item 3): a hostile one is one line, exit 2, in seconds.

Nested loops, `'x' * 10**10`, `range(10**9)`, doubling strings, runaway recursion and widths of 10**10 all
stop with a MacllmError; real templates render exactly as jinja2's sandbox renders them, and cheaply.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from macllm import chat_template
from macllm.errors import MacllmError
from macllm.tokenizer import CHATML_TEMPLATE, Tokenizer
from tests.test_bad_input import error_line
from tests.test_cli import run_macllm
from tests.test_tokenizer import SMOL_TEMPLATE, tiny_metadata

HOSTILE = {
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops with output": "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "loops over a long string": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "string times 10**10": "{{ 'x' * 10**10 }}",
    "list times 10**10": "{{ ([1] * 10**10) | length }}",
    "range(10**9)": "{{ range(10**9) | length }}",
    "loop over range(10**9)": "{% for i in range(10**9) %}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s | length }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}",
    "doubling in a macro": "{% macro d(n) %}{% if n %}{{ d(n - 1) }}{{ d(n - 1) }}{% endif %}xxxx{% endmacro %}"
                           "{% set x = d(60) %}",
    "doubling in a block set": "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set t %}{{ ns.s }}"
                               "{{ ns.s }}{% endset %}{% set ns.s = t %}{% endfor %}",
    "endless recursion": "{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}",
    "power tower": "{{ 10 ** (10 ** 10) }}",
    "squaring": "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "center filter": "{{ 'x' | center(10**10) }}",
    "ljust method": "{{ 'x'.ljust(10**10) }}",
    "expandtabs": "{{ ('\t' * 100000).expandtabs(100000) }}",
    "percent width": "{{ '%10000000000s' % 'x' }}",
    "percent star width": "{{ '%*s' % (10**10, 'x') }}",
    "format width": "{{ '{:>10000000000}'.format('x') }}",
    "format filter width": "{{ '%10000000000d' | format(1) }}",
    "join of copies": "{{ (['x' * 100000] * 100000) | join }}",
    "join method": "{{ ''.join(['x' * 100000] * 100000) }}",
    "replace filter": "{{ ('x' * 100000) | replace('x', 'x' * 100000) }}",
    "replace method": "{{ ('x' * 100000).replace('x', 'x' * 100000) }}",
    "indent": "{{ ('x\n' * 100000) | indent(100000) }}",
    "batch fill": "{{ [1] | batch(10**10, 'x') | list | length }}",
    "slice count": "{{ [1] | slice(10**10) | list | length }}",
    "sum of lists": "{{ ([[1] * 100000] * 100000) | sum(start=[]) | length }}",
    "tojson indent": "{{ messages | tojson(indent=10**10) }}",
    "wordwrap": "{{ ('x ' * 100000) | wordwrap(1, wrapstring='y' * 100000) }}",
    "lipsum": "{{ lipsum(10**9) }}",
    "int of a huge number": "{{ ('9' * 100000) | int + 10 ** 100000 }}",
}

# A loop that does real work on every step: within the step budget, but over a shortened deadline.
SLOW = ("{% set l = range(100000) | list %}{% for i in range(100000) %}{% set x = l | sort(reverse=true) | first %}"
        "{% endfor %}")
EXPONENTIAL_RECURSIVE_LOOP = ("{% for a in [1, 1] recursive %}{% if loop.depth < 40 %}{{ loop([1, 1]) }}{% endif %}"
                              "{% endfor %}")


def tokenizer_with(template: str) -> Tokenizer:
    tok = Tokenizer.from_gguf_metadata(tiny_metadata())
    tok.chat_template = template
    return tok


def refused(template: str) -> str:
    start = time.monotonic()
    with pytest.raises(MacllmError) as caught:
        tokenizer_with(template).apply_chat_template([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < chat_template.RENDER_SECONDS + 5
    message = str(caught.value)
    assert "\n" not in message and message.startswith("the model's chat template"), message
    return message


@pytest.mark.parametrize("template", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_template_is_one_line_in_seconds(template):
    refused(template)


@pytest.mark.parametrize("template", [SLOW, EXPONENTIAL_RECURSIVE_LOOP], ids=["slow steps", "exponential recursion"])
def test_template_past_the_deadline_is_stopped(template, monkeypatch):
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.3)
    assert "ran for more than 0.3 s" in refused(template)


def test_limit_messages_say_what_happened():
    assert "range(1000000000,) has more than 100,000 numbers" in refused(HOSTILE["range(10**9)"])
    assert "repeating something 10,000,000,000 times" in refused(HOSTILE["string times 10**10"])
    assert "more than 200,000 steps" in refused(HOSTILE["nested loops"])
    assert "more than 100 deep" in refused(HOSTILE["endless recursion"])


def test_the_sandbox_still_blocks_attribute_escapes():
    assert "unsafe" in refused("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    refused("{{ messages.append(1) }}")  # the immutable sandbox: templates cannot change our lists


def test_templates_cannot_switch_the_limits_off():
    # The checks are reached through the environment, not through names a template could shadow.
    refused("{% set range = none %}{% set _limited_iter = none %}{% set _charged = none %}" + HOSTILE["nested loops"])


LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
            + message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' }}
        {{- tool_call.arguments | tojson }}{{- "}<|eot_id|>" }}
    {%- else %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping %}{{- message.content | tojson }}{%- else %}{{- message.content }}{%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}{%- set role = "model" -%}{%- else -%}{%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}
"""

QWEN3_TEMPLATE = """{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "user" or message.role == "system" %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
        {%- if loop.index0 > ns.last_query_index and loop.last %}
            {{- '<|im_start|>' + message.role + '\\n<think>\\n\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + '%s' % content + ('{:>3}'.format('') | trim) }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

REAL_TEMPLATES = {"smollm2": SMOL_TEMPLATE, "chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE,
                  "gemma3": GEMMA3_TEMPLATE, "qwen3": QWEN3_TEMPLATE}


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief. " * 20}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: " + "why is the sky blue? " * 30})
        messages.append({"role": "assistant", "content": f"<think>hm</think>answer {i}: " + "Rayleigh. " * 60})
    messages.append({"role": "user", "content": "and at sunset?"})
    return messages


def plain_sandbox_render(template: str, tok: Tokenizer, messages: list[dict]) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(jinja2.TemplateError(message))
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=tok.token_string(tok.bos_token_id),
                                            eos_token=tok.token_string(tok.eos_token_id))


@pytest.mark.parametrize("name", REAL_TEMPLATES)
def test_real_templates_render_as_the_plain_sandbox_does(name):
    tok = tokenizer_with(REAL_TEMPLATES[name])
    messages = conversation(3)
    assert tok.apply_chat_template(messages) == plain_sandbox_render(REAL_TEMPLATES[name], tok, messages)


def test_llama3_tool_messages_render_as_the_plain_sandbox_does():
    tok = tokenizer_with(LLAMA3_TEMPLATE)
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "w", "arguments": {"city": "Oslo"}}}]},
                {"role": "tool", "content": {"temp": -3}}]
    assert tok.apply_chat_template(messages) == plain_sandbox_render(LLAMA3_TEMPLATE, tok, messages)


def test_template_errors_keep_their_message():
    with pytest.raises(MacllmError, match="Conversation roles must alternate"):
        tokenizer_with(GEMMA3_TEMPLATE).apply_chat_template([{"role": "assistant", "content": "x"}])


def test_a_long_chat_renders_within_the_limits_and_cheaply():
    """Render is per turn: the limits must not refuse a long chat nor cost much over the plain sandbox."""
    messages = conversation(1000)  # ~1.2 M characters
    for name, template in REAL_TEMPLATES.items():
        tok = tokenizer_with(template)
        start = time.perf_counter()
        limited = tok.apply_chat_template(messages)
        limited_s = time.perf_counter() - start
        start = time.perf_counter()
        plain = plain_sandbox_render(template, tok, messages)
        plain_s = time.perf_counter() - start
        assert limited == plain
        assert limited_s < 3 * plain_s + 0.05, (name, limited_s, plain_s)


def test_hostile_template_in_a_model_folder_is_one_line_exit_2(tmp_path, tiny_llama_folder):
    model = shutil.copytree(tiny_llama_folder, tmp_path / "model")
    (model / "chat_template.jinja").write_text(HOSTILE["nested loops with output"])
    start = time.monotonic()
    try:
        done = run_macllm(tmp_path / "home", "generate", "--model", model, "--chat", "-p", "hi", "--max-tokens", "2",
                          timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the hostile template hung the command")
    assert "chat template was stopped" in error_line(done)
    assert time.monotonic() - start < 30


def test_the_real_smollm2_template_renders_as_the_plain_sandbox_does(smollm_gguf):
    from macllm.formats.gguf_file import read_gguf_metadata_only

    tok = Tokenizer.from_gguf_metadata(read_gguf_metadata_only(smollm_gguf))
    assert tok.chat_template
    messages = conversation(20)[1:]  # its template adds its own system line when there is none
    assert tok.apply_chat_template(messages) == plain_sandbox_render(tok.chat_template, tok, messages)
