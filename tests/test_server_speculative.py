"""`macllm serve --draft-model` / `--prompt-lookup`, driven by the real `openai` client on tiny random models:
greedy answers are the plain ones token for token, a request alone decodes speculatively, and one that is joined
by another goes back to the shared batch between two rounds (and guesses again once alone), still exact."""

from __future__ import annotations

import json
import shutil
import threading
import time

import mlx.core as mx
import numpy as np
import openai
import pytest

from macllm.cli import main
from macllm.engine import Engine
from macllm.generation import GenerationParams, speculative
from macllm.server.app import ServerConfig
from macllm.server.scheduler import Scheduler, Speculation
from tests.server_helpers import free_port, running_server, write_talkative_folder

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "hello 0"}]  # its greedy answer runs past 30 tokens (no EOS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The model, and a draft: the same weights with a little noise, so it agrees with the model often, not always."""
    root = tmp_path_factory.mktemp("spec-serve-models")
    model = write_talkative_folder(root / "tiny-llama")
    draft = write_talkative_folder(root / "tiny-draft")
    weights = mx.load(str(model / "model.safetensors"))
    rng = np.random.default_rng(1)
    noisy = {k: v + mx.array(rng.standard_normal(v.shape).astype(np.float32)) * 0.02 for k, v in weights.items()}
    mx.save_safetensors(str(draft / "model.safetensors"), noisy)
    return model, draft


@pytest.fixture(scope="module")
def engine(module_home, folders):
    with Engine(str(folders[0]), progress=False) as e:
        yield e


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def plain(engine, messages, max_tokens):
    tok = engine.tokenizer
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    return engine.generate(ids, GenerationParams(max_tokens=max_tokens)).result(timeout=60)


@pytest.fixture
def rounds(monkeypatch):
    """Every speculative run the engine starts: its steps (slowed a little, so a second request can join while the
    first still decodes) and whether it handed its row back to the batch."""
    runs: list[dict] = []
    real = speculative.decode_steps

    def watched(*args, **kwargs):
        run = {"steps": 0, "drafted": 0, "handed_over": False}
        runs.append(run)
        inner = real(*args, **kwargs)
        while True:
            try:
                step = next(inner)
            except StopIteration as done:
                run["handed_over"] = done.value is not None
                return done.value
            run["steps"] += 1
            run["drafted"] += step.drafted
            time.sleep(0.01)
            yield step

    monkeypatch.setattr(speculative, "decode_steps", watched)
    return runs


@pytest.mark.parametrize("how", ["draft", "lookup"])
def test_a_request_alone_decodes_speculatively_with_the_plain_answer(engine, folders, rounds, how):
    speculation = Speculation(draft_model=str(folders[1])) if how == "draft" else Speculation(prompt_lookup=True)
    if how == "draft":
        engine.load_draft(str(folders[1])).result(timeout=60)
    with running_server(Scheduler(engine, speculation=speculation), ServerConfig(model_id=MODEL)) as url:
        client = client_of(url)
        got = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=40)
        chunks = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=40,
                                                stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = plain(engine, HELLO, 40)
    assert got.choices[0].message.content == want.text == streamed
    assert got.usage.completion_tokens == len(want.token_ids)
    assert len(rounds) == 2 and all(r["steps"] == len(want.token_ids) for r in rounds)
    assert all(r["drafted"] > 0 for r in rounds)  # guesses were kept: the tokens came from speculative rounds


def test_a_second_request_sends_the_first_back_to_the_batch_and_both_stay_exact(engine, folders, rounds):
    engine.load_draft(str(folders[1])).result(timeout=60)
    other = [{"role": "user", "content": "world 1"}]
    speculation = Speculation(draft_model=str(folders[1]))
    with running_server(Scheduler(engine, speculation=speculation), ServerConfig(model_id=MODEL)) as url:
        client = client_of(url)
        answers: dict[str, str] = {}
        first_started = threading.Event()

        def ask(name, messages, max_tokens):
            chunks = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                                    max_tokens=max_tokens, stream=True)
            parts = []
            for c in chunks:
                if c.choices and c.choices[0].delta.content:
                    parts.append(c.choices[0].delta.content)
                    first_started.set()
            answers[name] = "".join(parts)

        first = threading.Thread(target=ask, args=("first", HELLO, 120))
        first.start()
        assert first_started.wait(60)
        ask("second", other, 20)  # joins while the first still decodes (120 steps of 10 ms at least)
        first.join(60)
    assert answers["first"] == plain(engine, HELLO, 120).text
    assert answers["second"] == plain(engine, other, 20).text
    assert rounds[0]["handed_over"]  # the first went back to the batch when the second came
    assert len(rounds) >= 2 and not rounds[-1]["handed_over"]  # and guessed again, alone, to its end


def test_serve_refuses_a_draft_with_another_vocabulary_in_one_line(module_home, folders, tmp_path, capsys):
    other = tmp_path / "other-vocab"
    shutil.copytree(folders[1], other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = "hello", "Ġworld"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, two tokens trade ids
    (other / "tokenizer.json").write_text(json.dumps(spec))
    code = main(["serve", "--model", str(folders[0]), "--draft-model", str(other), "--port", str(free_port())])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "another vocabulary" in err and "\n" not in err
    assert main(["serve", "--model", str(folders[0]), "--draft-tokens", "99"]) != 0
    assert "--draft-tokens must be" in capsys.readouterr().err
