"""`tools` and `tool_choice` through `macllm serve` with the real `openai` client: tools rendered by the model's
template (the oracle: the same engine on the prompt macllm.tools renders), forced calls parsed into `tool_calls`,
streamed and whole, and refusals naming the field."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams
from macllm.server.app import ServerConfig
from macllm.server.scheduler import Scheduler
from macllm.tools import render_tool_prompt
from tests.server_helpers import running_server, write_talkative_folder

MODEL = "tiny-llama"
# ChatML that offers tools the Hermes way (as Qwen2.5's template does), small enough to read in one go.
HERMES_CHATML = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions:\n{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}Call one as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n{% endif %}"
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{%- if message.tool_calls %}{% for call in message.tool_calls %}\n<tool_call>\n{{ call.function | tojson }}\n"
    "</tool_call>{% endfor %}{% else %}\n{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                       "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "hello 0"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MACLLM_HOME", str(tmp_path_factory.mktemp("serve-tools-home")))
        folder = write_talkative_folder(tmp_path_factory.mktemp("serve-tools-model") / "tiny-llama",
                                        context=2048)  # tool schemas take ~1 token per character here
        with Engine(str(folder), progress=False) as e:
            e.loaded.tokenizer.chat_template = HERMES_CHATML
            yield e


@pytest.fixture(scope="module")
def server(engine):
    with running_server(Scheduler(engine), ServerConfig(model_id=MODEL)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=60)


def test_a_forced_call_comes_back_as_tool_calls(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice,
                                           temperature=0, max_tokens=200)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    [call] = message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome", "Oslo")


def test_required_calls_one_of_the_tools_and_streams_it_at_the_end(client):
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                            temperature=1.0, seed=3, max_tokens=200, stream=True)
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    [call] = calls
    assert call.function.name in ("get_weather", "get_time")
    assert set(json.loads(call.function.arguments)) in ({"city"}, {"zone"})


def test_auto_answers_from_the_prompt_the_template_renders_with_tools(client, engine):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=20)
    tokens = engine.tokenizer.encode(render_tool_prompt(engine.tokenizer, ASK, [WEATHER]))
    expected = engine.generate(tokens, GenerationParams(max_tokens=20)).result(timeout=60)
    assert reply.choices[0].message.content == expected.text  # the tiny model writes no call on its own
    assert reply.usage.prompt_tokens == len(tokens)


def test_a_history_with_calls_and_results_is_accepted(client):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], temperature=0, max_tokens=5)
    assert reply.usage.completion_tokens >= 1


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_bad_tool_requests_name_the_field(server, body, param):
    r = httpx.post(server + "/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, **body}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
