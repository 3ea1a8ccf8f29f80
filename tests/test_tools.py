"""Tool calling (macllm/tools): the parser on answers in each style's real format, the style told from real
templates, rendering with tools and tool-call history equal to transformers' apply_chat_template(tools=...)
for the real Qwen3, Qwen2.5, Llama 3.1 and Mistral Nemo templates, and forced calls on a tiny random model."""

from __future__ import annotations

import copy
import json

import jsonschema
import mlx.core as mx
import pytest

from macllm.errors import MacllmError
from macllm.generation import GenerationParams, generate
from macllm.loader import load_model
from macllm.tokenizer import Tokenizer
from macllm.tools import (
    check_tools,
    parse_tool_calls,
    render_tool_prompt,
    template_messages,
    tool_call_constraint,
    tool_style,
)
from tests.llama_cpp_templates import llama_cpp_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]},
                                                    "hours24": {"type": "boolean"}},
                   "required": ["zone", "hours24"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]


def call_arguments(call: dict) -> dict:
    assert call["type"] == "function" and call["id"]
    return json.loads(call["function"]["arguments"])


# ---------------------------------------------------------------- parsing


def test_hermes_calls_and_the_text_around_them():
    text = ('Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
            '"celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", '
            '"hours24": true}}\n</tool_call>')
    content, calls = parse_tool_calls(text, "hermes")
    assert content == "Let me check both."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert call_arguments(calls[0]) == {"city": "Paris", "unit": "celsius"}
    assert call_arguments(calls[1]) == {"zone": "CET", "hours24": True}
    assert calls[0]["id"] != calls[1]["id"]


def test_hermes_call_cut_at_the_end_of_the_answer_and_a_broken_one():
    content, calls = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}', "hermes")
    assert content == "" and call_arguments(calls[0]) == {"zone": "UTC"}
    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert parse_tool_calls(broken, "hermes") == (broken, [])


def test_hermes_arguments_given_as_json_text():
    text = '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"PST\\"}"}\n</tool_call>'
    _, calls = parse_tool_calls(text, "hermes")
    assert call_arguments(calls[0]) == {"zone": "PST"}


def test_plain_answer_has_no_calls_in_any_style():
    for style in ("hermes", "llama3", "mistral"):
        assert parse_tool_calls("  The weather is fine.  ", style) == ("The weather is fine.", [])


def test_llama3_json_call_with_and_without_python_tag():
    for prefix in ("", "<|python_tag|>"):
        text = prefix + '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}'
        content, calls = parse_tool_calls(text, "llama3")
        assert content == "" and calls[0]["function"]["name"] == "get_weather"
        assert call_arguments(calls[0]) == {"city": "Oslo", "unit": "celsius"}


def test_llama3_several_calls_and_json_that_is_not_a_call():
    text = ('{"name": "get_time", "parameters": {"zone": "UTC", "hours24": false}}; '
            '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}')
    _, calls = parse_tool_calls(text, "llama3")
    assert [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    data = '{"temperature": 21, "sky": "clear"}'
    assert parse_tool_calls(data, "llama3") == (data, [])


def test_mistral_json_list_calls():
    text = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}, '
            '{"name": "get_time", "arguments": {"zone": "CET", "hours24": true}}]')
    content, calls = parse_tool_calls(text, "mistral")
    assert content == "" and [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)  # what Mistral's templates demand


def test_mistral_named_calls_of_newer_templates():
    text = ('Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Nice", "unit": "celsius"}'
            '[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{"zone": "UTC", "hours24": false}')
    content, calls = parse_tool_calls(text, "mistral")
    assert content == "Sure."
    assert call_arguments(calls[0]) == {"city": "Nice", "unit": "celsius"}
    assert calls[1]["function"]["name"] == "get_time"


def test_unknown_style_is_a_one_line_error():
    with pytest.raises(MacllmError, match="unknown tool-call style"):
        parse_tool_calls("x", "pythonic")


# ---------------------------------------------------------------- styles and rendering


@pytest.fixture(scope="module")
def real(npm_tokenizer):
    """Our tokenizer and transformers' for each real template: Qwen3 as its package ships it, the others the
    llama.cpp copies of the templates on the Llama 3.1 tokenizer (rendering is text; the vocabulary only gives
    the BOS/EOS strings, the same on both sides)."""
    transformers = pytest.importorskip("transformers")
    out = {}
    qwen3 = npm_tokenizer("qwen3")
    out["qwen3"] = (Tokenizer.from_folder(qwen3), transformers.AutoTokenizer.from_pretrained(str(qwen3)), None)
    llama = npm_tokenizer("llama3_1")
    for name in ("llama3_1", "mistral_nemo", "qwen2_5"):
        template = llama_cpp_template(name)
        ours = Tokenizer.from_folder(llama)
        ours.chat_template = template
        out[name] = (ours, transformers.AutoTokenizer.from_pretrained(str(llama)), template)
    return out


@pytest.mark.real_model  # real tokenizers and templates, downloaded once
def test_style_is_told_from_real_templates(real, npm_tokenizer):
    expected = {"qwen3": "hermes", "qwen2_5": "hermes", "llama3_1": "llama3", "mistral_nemo": "mistral"}
    for name, style in expected.items():
        assert tool_style(real[name][0].chat_template) == style, name
    assert tool_style(Tokenizer.from_folder(npm_tokenizer("gemma3")).chat_template) is None
    assert tool_style(None) is None


def openai_history(call_id: str) -> list[dict]:
    """A tool round trip as an OpenAI client sends it: arguments as JSON text, content null beside the call."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]


def transformers_history(call_id: str) -> list[dict]:
    """The same history as transformers' documentation writes it: arguments as a dict, content a string."""
    history = copy.deepcopy(openai_history(call_id))
    history[2]["content"] = ""
    history[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris", "unit": "celsius"}
    return history


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["qwen3", "qwen2_5", "llama3_1", "mistral_nemo"])
def test_rendering_with_tools_equals_transformers(real, name):
    ours, theirs, template = real[name]
    extra = {} if template is None else {"chat_template": template}
    question = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    if name == "mistral_nemo":
        question = question[1:]  # its template puts a system message beside the last user turn only
    expected = theirs.apply_chat_template(question, tools=TOOLS, tokenize=False, add_generation_prompt=True, **extra)
    assert render_tool_prompt(ours, question, tools=TOOLS) == expected
    assert "get_weather" in expected and "get_time" in expected


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["qwen3", "qwen2_5", "llama3_1", "mistral_nemo"])
def test_history_with_tool_calls_and_results_equals_transformers(real, name):
    ours, theirs, template = real[name]
    extra = {} if template is None else {"chat_template": template}
    call_id = "a1B2c3D4e"  # Mistral's templates accept 9 letters or digits only
    expected = theirs.apply_chat_template(transformers_history(call_id), tools=TOOLS, tokenize=False,
                                          add_generation_prompt=True, **extra)
    assert render_tool_prompt(ours, openai_history(call_id), tools=TOOLS) == expected
    assert "Paris" in expected and "21" in expected


def test_template_messages_leave_plain_messages_alone():
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert template_messages(plain) == plain
    odd = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]
    assert template_messages(odd)[0]["tool_calls"][0]["function"]["arguments"] == "not json"
    assert template_messages([{"role": "assistant", "content": "a", "tool_calls": None}]) == [
        {"role": "assistant", "content": "a"}]


def test_tools_on_a_template_without_them_is_a_one_line_error(tiny):
    with pytest.raises(MacllmError, match="does not offer tools"):
        render_tool_prompt(tiny.tokenizer, [{"role": "user", "content": "hi"}], tools=TOOLS)
    # Without tools the same call renders as usual.
    assert render_tool_prompt(tiny.tokenizer, [{"role": "user", "content": "hi"}]).endswith("assistant\n")


@pytest.mark.parametrize("tools, message", [
    ({"type": "function"}, "must be a list"),
    ([{"type": "retrieval"}], r"tools\[0\] must be"),
    ([{"type": "function", "function": {"description": "no name"}}], "name must be a non-empty string"),
    ([WEATHER, WEATHER], "given twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "must be a JSON schema object"),
])
def test_bad_tools_are_one_line_errors(tools, message):
    with pytest.raises(MacllmError, match=message):
        check_tools(tools)


# ---------------------------------------------------------------- forced calls


@pytest.fixture(scope="module")
def tiny(tiny_llama_gguf):
    return load_model(str(tiny_llama_gguf), progress=False)


def forced_answer(tiny, tool_choice, style: str, seed: int) -> str:
    constraint = tool_call_constraint(tiny.tokenizer, TOOLS, tool_choice, style=style)
    params = GenerationParams(max_tokens=200, temperature=1.0, seed=seed, constraint=constraint)
    result = generate(tiny.model, tiny.tokenizer, tiny.tokenizer.encode("hello world"), params)
    assert result.finish_reason == "stop", result.text
    return result.text


@pytest.mark.parametrize("style", ["hermes", "llama3", "mistral"])
def test_a_named_tool_choice_forces_that_call_with_valid_arguments(tiny, style):
    for seed in range(3):
        text = forced_answer(tiny, {"type": "function", "function": {"name": "get_weather"}}, style, seed)
        content, calls = parse_tool_calls(text, style)
        assert content == "" and len(calls) == 1, text
        assert calls[0]["function"]["name"] == "get_weather"
        jsonschema.validate(call_arguments(calls[0]), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("style", ["hermes", "llama3", "mistral"])
def test_required_forces_a_call_of_one_of_the_tools(tiny, style):
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for seed in range(4):
        text = forced_answer(tiny, "required", style, seed)
        _, calls = parse_tool_calls(text, style)
        assert len(calls) == 1, text
        jsonschema.validate(call_arguments(calls[0]), by_name[calls[0]["function"]["name"]])


def test_auto_and_none_do_not_constrain(tiny):
    for choice in (None, "auto", "none"):
        assert tool_call_constraint(tiny.tokenizer, TOOLS, choice, style="hermes") is None


@pytest.mark.parametrize("choice, message", [
    ({"type": "function", "function": {"name": "send_mail"}}, "not among the tools"),
    ({"type": "function"}, "tool_choice must be"),
    ("sometimes", "tool_choice must be"),
])
def test_bad_tool_choice_is_a_one_line_error(tiny, choice, message):
    with pytest.raises(MacllmError, match=message):
        tool_call_constraint(tiny.tokenizer, TOOLS, choice, style="hermes")


def test_required_without_tools_and_a_template_without_a_format(tiny):
    with pytest.raises(MacllmError, match="at least one tool"):
        tool_call_constraint(tiny.tokenizer, [], "required", style="hermes")
    with pytest.raises(MacllmError, match="no tool-call format"):
        tool_call_constraint(tiny.tokenizer, TOOLS, "required")  # the tiny model's ChatML has no tools


def test_uncompilable_parameter_schema_is_a_one_line_error(tiny):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(unclosed"}}}}}
    with pytest.raises(MacllmError, match="cannot force the tool call") as info:
        tool_call_constraint(tiny.tokenizer, [bad], "required", style="hermes")
    assert "\n" not in str(info.value)


@pytest.mark.real_model  # real tokenizers and templates, downloaded once
def test_forced_call_on_the_real_qwen3_tokenizer_accepts_the_call_its_template_shows(real):
    """The markers are ordinary added tokens in Qwen3's vocabulary: the call the template renders in the
    history, tokenized as the model would write it, walks the constraint to its end."""
    ours = real["qwen3"][0]
    constraint = tool_call_constraint(ours, TOOLS, {"type": "function", "function": {"name": "get_weather"}})
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    assert text in render_tool_prompt(ours, openai_history("a1B2c3D4e"), tools=TOOLS)
    ids = ours.encode(text, add_bos=False)
    assert ours.token_to_id("<tool_call>") in ids
    state = constraint.start()
    for token in ids:
        state.advance(token)
    logits = state.mask(mx.zeros((1, ours.vocab_size)), None)
    allowed = [i for i, v in enumerate(logits[0].tolist()) if v != float("-inf")]
    assert len(allowed) == 1 and allowed[0] in ours.eos_token_ids  # complete: only the end may follow


def test_real_qwen_coder_makes_a_forced_call_and_answers_from_its_result(qwen_coder):
    """Qwen2.5-Coder-0.5B's own template (hermes style) end to end: a forced call parses into valid arguments,
    and the history with that call and its result renders and is answered in plain text."""
    loaded = qwen_coder
    tok = loaded.tokenizer
    assert tool_style(tok.chat_template) == "hermes"
    messages = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    constraint = tool_call_constraint(tok, TOOLS, {"type": "function", "function": {"name": "get_weather"}})
    prompt = tok.encode(render_tool_prompt(tok, messages, tools=TOOLS))
    result = generate(loaded.model, tok, prompt, GenerationParams(max_tokens=80, constraint=constraint))
    assert result.finish_reason == "stop", result.text
    content, calls = parse_tool_calls(result.text, "hermes")
    assert content == "" and len(calls) == 1
    arguments = call_arguments(calls[0])
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert "paris" in arguments["city"].lower()  # the model, not just the grammar, chose the value
    history = messages + [{"role": "assistant", "content": None, "tool_calls": calls},
                          {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature_c": 21}'}]
    follow_up = tok.encode(render_tool_prompt(tok, history, tools=TOOLS))
    answer = generate(loaded.model, tok, follow_up, GenerationParams(max_tokens=40))
    content, calls = parse_tool_calls(answer.text, "hermes")
    assert calls == [] and "21" in content, answer.text
