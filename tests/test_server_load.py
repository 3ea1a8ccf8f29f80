"""`macllm serve` under load and at shutdown: 8 clients for a bounded time lose and mix nothing; a stop signal
ends every open stream with a final event; the `macllm serve` command starts, answers and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams
from macllm.server.app import ServerConfig
from macllm.server.runner import make_server
from macllm.server.scheduler import Scheduler
from tests.server_helpers import free_port, long_and_slow, running_server, write_talkative_folder

MODEL = "tiny-llama"
CLIENTS = 8
LOAD_SECONDS = 6.0


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return write_talkative_folder(tmp_path_factory.mktemp("serve-load-model") / "tiny-llama")


@pytest.fixture(scope="module")
def engine(model_folder, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MACLLM_HOME", str(tmp_path_factory.mktemp("serve-load-home")))
        with Engine(str(model_folder), progress=False) as e:
            yield e


def expected_answer(engine, messages, max_tokens):
    tok = engine.tokenizer
    tokens = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    return engine.generate(tokens, GenerationParams(max_tokens=max_tokens)).result(timeout=60).text


def test_eight_clients_for_a_while_lose_and_mix_nothing(engine):
    prompts = {i: [{"role": "user", "content": f"hello {i}"}] for i in range(CLIENTS)}
    expected = {i: expected_answer(engine, prompts[i], 16) for i in prompts}
    answers: dict[int, list[str]] = {i: [] for i in prompts}
    failures: list[BaseException] = []

    with running_server(Scheduler(engine), ServerConfig(model_id=MODEL)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        deadline = time.monotonic() + LOAD_SECONDS

        def hammer(i: int) -> None:
            try:
                turn = 0
                while time.monotonic() < deadline:
                    kw = dict(model=MODEL, messages=prompts[i], temperature=0, max_tokens=16)
                    if turn % 2:  # streams and plain requests interleaved
                        stream = client.chat.completions.create(stream=True, **kw)
                        answers[i].append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
                    else:
                        answers[i].append(client.chat.completions.create(**kw).choices[0].message.content)
                    turn += 1
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=hammer, args=(i,)) for i in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=LOAD_SECONDS + 120)
        deadline = time.monotonic() + 10  # a stream's bookkeeping ends just after its [DONE] went out
        while (in_flight := httpx.get(url + "/health").json()["in_flight"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not failures, failures
    assert all(answers[i] for i in prompts), "every client was served"
    for i in prompts:
        assert set(answers[i]) == {expected[i]}, f"client {i} got another client's answer or a broken one"
    assert in_flight == 0


def test_a_stop_signal_ends_open_streams_with_a_final_event(engine, monkeypatch):
    long_and_slow(engine, monkeypatch)
    port = free_port()
    scheduler = Scheduler(engine)
    server = make_server(scheduler, ServerConfig(model_id=MODEL), "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    events: dict[int, list[str]] = {0: [], 1: []}

    def listen(i: int) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello 0"}], "max_tokens": 400,
                "temperature": 0, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
            events[i].extend(line for line in r.iter_lines() if line)

    listeners = [threading.Thread(target=listen, args=(i,)) for i in events]
    for t in listeners:
        t.start()
    deadline = time.monotonic() + 30
    while max(len(e) for e in events.values()) < 3:  # one is streaming; the other waits its turn in the queue
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.handle_exit(signal.SIGTERM, None)
    for t in listeners:
        t.join(timeout=30)
    thread.join(timeout=30)
    assert not thread.is_alive()
    for i in events:
        assert events[i][-1] == "data: [DONE]"
        final = json.loads(events[i][-2].removeprefix("data: "))
        assert final.get("error", {}).get("code") == "server_shutdown", (i, len(events[i]), events[i][-3:])
    assert max(len(e) for e in events.values()) > 3  # the running one had streamed tokens before it was cut


def test_the_serve_command_starts_answers_and_stops_on_sigterm(model_folder, tmp_path):
    port = free_port()
    env = {**os.environ, "MACLLM_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "macllm.cli", "serve", "--model", str(model_folder),
                             "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "macllm serve did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["data"][0]["id"] == "tiny-llama"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err and f":{port}/v1" in err


def test_the_serve_command_refuses_an_open_host_without_a_key(model_folder):
    proc = subprocess.run([sys.executable, "-m", "macllm.cli", "serve", "--model", str(model_folder),
                           "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--api-key" in proc.stderr and "--insecure" in proc.stderr
