"""`macllm serve` driven by the real `openai` client over a loopback port: chat, completions, streams, logprobs,
per-request adapters, prefix reuse, embeddings. The oracle is the Engine itself, called directly."""

from __future__ import annotations

import base64
import json
import math
import threading

import httpx
import mlx.core as mx
import numpy as np
import openai
import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams
from macllm.lora.formats import write_adapter
from macllm.lora.random_adapter import random_adapter
from macllm.paths import adapters_dir
from macllm.server.app import ServerConfig
from macllm.server.scheduler import Scheduler
from tests.server_helpers import running_server, write_talkative_folder
from tests.tiny_bert import write_tiny_bert

MODEL = "tiny-llama"
GREEDY = dict(temperature=0, max_tokens=12)
HELLO = [{"role": "user", "content": "hello 0"}]  # its greedy answer runs past 30 tokens (no EOS)


@pytest.fixture(scope="module")
def engine(module_home, tmp_path_factory):
    folder = write_talkative_folder(tmp_path_factory.mktemp("serve-model") / "tiny-llama")
    with Engine(str(folder), progress=False) as e:
        cfg = e.loaded.config
        for seed, name in enumerate(("alpha", "beta")):
            adapter = random_adapter(cfg, name, rank=4, seed=seed + 1, b_std=0.5, base_model="tiny")
            write_adapter(adapter, adapters_dir() / name, cfg.num_hidden_layers)
        yield e


@pytest.fixture(scope="module")
def embedder_folder(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("serve-bert") / "tiny-bert")


@pytest.fixture(scope="module")
def server(engine, embedder_folder):
    scheduler = Scheduler(engine)
    with running_server(scheduler, ServerConfig(model_id=MODEL, embedder=str(embedder_folder))) as url:
        yield url, scheduler


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat_tokens(engine, messages):
    tok = engine.tokenizer
    return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))


def direct(engine, tokens, adapters=None, max_tokens=12, **params):
    """What the engine generates for these tokens with no server in between (a fresh cache)."""
    engine.set_adapters(adapters or {})
    try:
        return engine.generate(list(tokens), GenerationParams(max_tokens=max_tokens, **params)).result(timeout=60)
    finally:
        engine.set_adapters({})



def test_models_lists_the_model_and_the_adapters_made_for_it(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL
    # alpha and beta were made for this model (fingerprint); the bundled examples were made for SmolLM2.
    assert ids[1:] == [MODEL + "+alpha", MODEL + "+beta"]


def test_chat_answers_as_the_engine_does(client, engine):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, **GREEDY)
    expected = direct(engine, chat_tokens(engine, HELLO))
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == len(expected.token_ids) == 12
    assert reply.usage.prompt_tokens == len(chat_tokens(engine, HELLO))


def test_a_stream_carries_the_same_answer_then_usage(client, engine):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct(engine, chat_tokens(engine, HELLO)).text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completions_take_text_or_token_ids(client, engine):
    tokens = engine.tokenize("hello world")
    expected = direct(engine, tokens, max_tokens=8)
    by_text = client.completions.create(model=MODEL, prompt="hello world", temperature=0, max_tokens=8)
    by_ids = client.completions.create(model=MODEL, prompt=tokens, temperature=0, max_tokens=8)
    assert by_text.choices[0].text == by_ids.choices[0].text == expected.text
    streamed = client.completions.create(model=MODEL, prompt="hello world", temperature=0, max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected.text


def test_stop_strings_cut_the_answer(client, engine):
    full = direct(engine, chat_tokens(engine, HELLO), max_tokens=20).text
    at = next(i for i in range(3, len(full) - 3) if full.index(full[i:i + 3]) == i)
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=20,
                                           stop=[full[at:at + 3]])
    assert reply.choices[0].message.content == full[:at]
    assert reply.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_matches_the_engine(client, engine):
    kw = dict(model=MODEL, messages=HELLO, temperature=1.0, top_p=0.9, max_tokens=10, seed=7,
              extra_body={"min_p": 0.01, "top_k": 20})
    first = client.chat.completions.create(**kw).choices[0].message.content
    assert client.chat.completions.create(**kw).choices[0].message.content == first
    expected = direct(engine, chat_tokens(engine, HELLO), max_tokens=10, temperature=1.0, top_p=0.9, min_p=0.01,
                      top_k=20, seed=7)
    assert first == expected.text


def test_logprobs_are_the_models_own(client, engine):
    tokens = chat_tokens(engine, HELLO)
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True, top_logprobs=5, **GREEDY)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    logits = engine.submit(lambda: np.array(engine.loaded.model(mx.array([tokens]))[0, -1], dtype=np.float64)).result()
    logprobs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    best = np.argsort(-logprobs)[:5]
    first = content[0]
    assert math.isclose(first.logprob, logprobs[best[0]], abs_tol=1e-4)
    assert [t.token for t in first.top_logprobs] == [engine.tokenizer.piece(int(i)) for i in best]
    np.testing.assert_allclose([t.logprob for t in first.top_logprobs], logprobs[best], atol=1e-4)
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == reply.choices[0].message.content
    for entry in content:  # greedy: the chosen token is the most likely one
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-6)


def test_completion_logprobs_in_the_legacy_shape(client):
    reply = client.completions.create(model=MODEL, prompt="hello", temperature=0, max_tokens=5, logprobs=3)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(alts) <= 3 for alts in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_per_request_adapters(client, engine):
    tokens = chat_tokens(engine, HELLO)
    base = client.chat.completions.create(model=MODEL, messages=HELLO, **GREEDY).choices[0].message.content
    alpha = client.chat.completions.create(model=MODEL, messages=HELLO, extra_body={"adapters": {"alpha": 1.0}},
                                           **GREEDY).choices[0].message.content
    by_id = client.chat.completions.create(model=MODEL + "+alpha", messages=HELLO, **GREEDY).choices[0].message.content
    blend = client.chat.completions.create(model=MODEL, messages=HELLO,
                                           extra_body={"adapters": {"alpha": 0.5, "beta": 1.0}},
                                           **GREEDY).choices[0].message.content
    assert alpha == by_id == direct(engine, tokens, {"alpha": 1.0}).text
    assert blend == direct(engine, tokens, {"alpha": 0.5, "beta": 1.0}).text
    assert base == direct(engine, tokens).text
    assert len({base, alpha, blend}) == 3
    assert MODEL + "+alpha" in [m.id for m in client.models.list().data]


def test_concurrent_streams_with_different_adapters_never_mix(client, engine):
    blends = [{}, {"alpha": 1.0}, {"beta": 1.0}, {"alpha": 1.0, "beta": -0.5}] * 2
    prompts = [[{"role": "user", "content": f"hello {i}"}] for i in range(len(blends))]
    got: dict[int, str] = {}

    def ask(i):
        stream = client.chat.completions.create(model=MODEL, messages=prompts[i], stream=True,
                                                extra_body={"adapters": blends[i]}, **GREEDY)
        got[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(blends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, blend in enumerate(blends):
        assert got[i] == direct(engine, chat_tokens(engine, prompts[i]), blend).text, blend


def test_the_next_turn_reuses_the_conversations_prefix(client, engine):
    turn1 = [{"role": "user", "content": "tell me about the world"}]
    first = client.chat.completions.create(model=MODEL, messages=turn1, **GREEDY)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "and more"}]
    second = client.chat.completions.create(model=MODEL, messages=turn2, **GREEDY)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= len(chat_tokens(engine, turn1))  # at least the first prompt came from the cache
    assert second.choices[0].message.content == direct(engine, chat_tokens(engine, turn2)).text


def test_default_adapters_are_set_live(server, client, engine):
    url, scheduler = server
    tokens = chat_tokens(engine, HELLO)
    r = httpx.post(url + "/v1/adapters", json={"default": {"beta": 1.0}})
    assert r.status_code == 200 and r.json()["default"] == {"beta": 1.0}
    try:
        text = client.chat.completions.create(model=MODEL, messages=HELLO, **GREEDY).choices[0].message.content
        assert text == direct(engine, tokens, {"beta": 1.0}).text
        bare = client.chat.completions.create(model=MODEL, messages=HELLO, extra_body={"adapters": {}}, **GREEDY)
        assert bare.choices[0].message.content == direct(engine, tokens).text
    finally:
        httpx.post(url + "/v1/adapters", json={"default": {}})
    listed = httpx.get(url + "/v1/adapters").json()
    assert listed["default"] == {} and {"alpha", "beta"} <= {a["name"] for a in listed["available"]}


def test_embeddings_are_the_notes_embedders(client, embedder_folder):
    from macllm.rag.embedder import Embedder

    texts = ["the cat and the dog", "sqlite notes search"]
    reply = client.embeddings.create(model=str(embedder_folder), input=texts)
    expected = Embedder(embedder_folder).embed(texts)
    np.testing.assert_allclose([d.embedding for d in reply.data], expected, atol=1e-5)
    raw = httpx.post(str(client.base_url) + "embeddings", json={"input": "python code", "encoding_format": "base64"})
    vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype=np.float32)
    np.testing.assert_allclose(vector, Embedder(embedder_folder).embed(["python code"])[0], atol=1e-5)


def test_health(server):
    r = httpx.get(server[0] + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["model"] == MODEL


SCHEMA = {"type": "object",
          "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                         "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
          "required": ["answer", "confidence"], "additionalProperties": False}


def test_json_schema_output_parses_and_fits(client):
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    for seed in range(3):
        reply = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=1.0, seed=seed,
                                               max_tokens=60, response_format=fmt)
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=60,
                                            response_format=fmt, stream=True)
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)), SCHEMA)


def test_bad_response_formats_are_refused(server):
    url = server[0]
    body = {"messages": HELLO, "max_tokens": 5}
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    r = httpx.post(url + "/v1/chat/completions", json={**body, "response_format": bad_schema})
    assert r.status_code == 422 and r.json()["error"]["param"] == "response_format"
    r = httpx.post(url + "/v1/chat/completions", json={**body, "response_format": {"type": "yaml"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.type"
    r = httpx.post(url + "/v1/chat/completions", json={**body, "response_format": {"type": "json_schema"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "response_format.json_schema"
