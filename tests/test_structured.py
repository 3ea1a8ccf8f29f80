"""Constrained decoding (macllm/structured) in the token loop: on a tiny random-weight model, whose output is
garbage when unconstrained, every constrained answer must parse and validate against its schema (checked by
the independent jsonschema library) or match its grammar, greedy and sampled alike.

The schemas bound every string and number: a random model happily writes digits or characters forever, and
a grammar cannot end a value the schema leaves open (even the real SmolLM2 writes 1111... into an open
number until max_tokens)."""

from __future__ import annotations

import json
import math
import re
import threading

import jsonschema
import mlx.core as mx
import pytest

from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult, TokenEvent, generate, stream_generate
from macllm.loader import load_model
from macllm.structured import compile_constraint

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}, "city": {"type": "string",
                                                                                     "maxLength": 8}},
            "required": ["zip", "city"],
            "additionalProperties": False,
        },
        "ok": {"type": "boolean"},
        "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 5}]},
    },
    "required": ["name", "age", "tags", "address", "ok", "note"],
    "additionalProperties": False,
}
LIST_OF_POINTS = {
    "type": "array",
    "items": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                               "y": {"type": "integer", "minimum": -9, "maximum": 9}},
              "required": ["x", "y"], "additionalProperties": False},
    "minItems": 1, "maxItems": 4,
}
SAMPLING = [
    dict(temperature=0.0),
    dict(temperature=1.0, seed=1),
    dict(temperature=1.5, top_p=0.9, seed=2),
    dict(temperature=1.0, min_p=0.05, seed=3),
    dict(temperature=0.8, top_k=20, repetition_penalty=1.3, seed=4),
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_gguf):
    return load_model(str(tiny_llama_gguf), progress=False)


def run(tiny, constraint, max_tokens=300, prompt="hello world", **sampling) -> GenerationResult:
    params = GenerationParams(max_tokens=max_tokens, constraint=constraint, **sampling)
    return generate(tiny.model, tiny.tokenizer, tiny.tokenizer.encode(prompt), params)


def test_unconstrained_tiny_output_is_not_json(tiny):
    """The premise of these tests: left alone, the random model never writes JSON."""
    text = run(tiny, None, max_tokens=40).text
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("sampling", SAMPLING, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("schema", [PERSON, LIST_OF_POINTS], ids=["object", "array"])
def test_output_parses_and_validates_against_the_schema(tiny, schema, sampling):
    constraint = compile_constraint(tiny.tokenizer, json_schema=schema)
    result = run(tiny, constraint, **sampling)
    assert result.finish_reason == "stop", result.text  # ended by EOS once the JSON was complete
    jsonschema.validate(json.loads(result.text), schema)


def test_many_seeds_all_validate(tiny):
    constraint = compile_constraint(tiny.tokenizer, json_schema=PERSON)
    values = set()
    for seed in range(12):
        result = run(tiny, constraint, temperature=2.0, seed=seed)
        value = json.loads(result.text)
        jsonschema.validate(value, PERSON)
        values.add(json.dumps(value, sort_keys=True))
    assert len(values) > 1  # sampling still chooses among what the schema allows


def test_schema_given_as_json_text_works_like_a_dict(tiny):
    a = run(tiny, compile_constraint(tiny.tokenizer, json_schema=json.dumps(PERSON)), temperature=1.0, seed=5)
    b = run(tiny, compile_constraint(tiny.tokenizer, json_schema=PERSON), temperature=1.0, seed=5)
    assert a.token_ids == b.token_ids


def test_json_object_gives_a_json_object(tiny):
    constraint = compile_constraint(tiny.tokenizer, json_object=True)
    for seed in range(4):
        result = run(tiny, constraint, max_tokens=400, temperature=0.7, seed=seed)
        if result.finish_reason == "stop":
            assert isinstance(json.loads(result.text), dict)
        else:  # an unbounded object may outrun max_tokens; what came so far is still a JSON prefix
            assert result.text.startswith("{")


def test_generation_stops_when_the_grammar_is_complete(tiny):
    constraint = compile_constraint(tiny.tokenizer, grammar='start: "yes" | "no"')
    result = run(tiny, constraint, max_tokens=50, temperature=1.0, seed=0)
    assert result.text in ("yes", "no")
    assert result.finish_reason == "stop"
    assert result.token_ids[-1] in tiny.tokenizer.eos_token_ids  # EOS only once the answer is complete
    assert len(result.token_ids) <= 4


def test_lark_grammar_output_matches_its_language(tiny):
    lark = r"""
start: call ("; " call)*
call: NAME "(" ARG ("," ARG)* ")"
NAME: /[a-z]{1,6}/
ARG: /[0-9]{1,3}/
"""
    constraint = compile_constraint(tiny.tokenizer, grammar=lark)
    pattern = re.compile(r"[a-z]{1,6}\([0-9]{1,3}(,[0-9]{1,3})*\)(; [a-z]{1,6}\([0-9]{1,3}(,[0-9]{1,3})*\))*")
    for seed in range(4):
        result = run(tiny, constraint, max_tokens=120, temperature=1.0, seed=seed)
        if result.finish_reason == "stop":
            assert pattern.fullmatch(result.text), result.text
        else:
            assert re.match(r"[a-z]{1,6}\(", result.text), result.text


def test_gbnf_grammar_is_accepted(tiny):
    gbnf = 'root ::= "(" digit digit? ")"\ndigit ::= [0-9]\n'
    result = run(tiny, compile_constraint(tiny.tokenizer, grammar=gbnf), max_tokens=20, temperature=1.0, seed=2)
    assert re.fullmatch(r"\([0-9]{1,2}\)", result.text), result.text


def test_forced_tokens_have_probability_one_and_alternatives_come_after_masking(tiny):
    constraint = compile_constraint(tiny.tokenizer, grammar='start: "hello world"')
    params = GenerationParams(max_tokens=20, constraint=constraint, top_alternatives=3, temperature=1.0, seed=0)
    events = [e for e in stream_generate(tiny.model, tiny.tokenizer, tiny.tokenizer.encode("user"), params)
              if isinstance(e, TokenEvent)]
    assert "".join(e.text for e in events) == "hello world"
    for event in events:
        # Masking happens before the softmax: the only allowed token is certain, and the impossible ones are not
        # offered as alternatives (their logprob would be -inf, which JSON cannot carry).
        assert event.logprob == pytest.approx(0.0, abs=1e-5)
        assert [tid for tid, _ in event.alternatives] == [event.token_id]


def test_alternatives_under_a_constraint_are_allowed_tokens_with_finite_logprobs(tiny):
    constraint = compile_constraint(tiny.tokenizer, json_schema=PERSON)
    params = GenerationParams(max_tokens=300, constraint=constraint, top_alternatives=5, temperature=1.0, seed=1)
    events = [e for e in stream_generate(tiny.model, tiny.tokenizer, tiny.tokenizer.encode("hello world"), params)
              if isinstance(e, TokenEvent)]
    for n, event in enumerate(events):
        assert event.alternatives and all(math.isfinite(lp) for _, lp in event.alternatives)
        for token, _ in event.alternatives:  # each alternative was a token the schema allowed at that point
            trial = constraint.start()
            for earlier in events[:n]:
                trial.advance(earlier.token_id)
            trial.advance(token)  # raises if the grammar forbade it


def test_each_generation_has_its_own_parser_state(tiny):
    """A constraint is shared; two generations interleaved step by step do not see each other's tokens."""
    constraint = compile_constraint(tiny.tokenizer, json_schema=LIST_OF_POINTS)
    alone = [run(tiny, constraint, temperature=1.0, seed=s).text for s in (10, 11)]
    streams = [stream_generate(tiny.model, tiny.tokenizer, tiny.tokenizer.encode("hello world"),
                               GenerationParams(max_tokens=300, constraint=constraint, temperature=1.0, seed=s))
               for s in (10, 11)]
    # Interleaved in one thread: each stream_generate owns its own cache, so this is fair to MLX's streams.
    done: list[str | None] = [None, None]
    while None in done:
        for i, stream in enumerate(streams):
            if done[i] is None:
                event = next(stream)
                if isinstance(event, GenerationResult):
                    done[i] = event.text
    assert done == alone
    for text in done:
        jsonschema.validate(json.loads(text), LIST_OF_POINTS)


def test_constraint_compiles_from_several_threads(tiny):
    out: list[object] = []

    def compile_one():
        out.append(compile_constraint(tiny.tokenizer, json_schema=PERSON).start())

    threads = [threading.Thread(target=compile_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and len({id(s) for s in out}) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(json_schema={"type": "no-such-type"}), "cannot compile the JSON schema"),
    (dict(json_schema={"type": "string", "pattern": "(unclosed"}), "cannot compile the JSON schema"),
    (dict(json_schema="{not json"), "not valid JSON"),
    (dict(json_schema=["a", "list"]), "must be a JSON object"),
    (dict(grammar="start: undefined_rule"), "cannot compile the grammar"),
    (dict(grammar="this is not a grammar ::: {{"), "cannot compile the grammar"),
    (dict(grammar="   "), "grammar is empty"),
    (dict(), "exactly one of"),
    (dict(json_object=True, grammar='start: "a"'), "exactly one of"),
])
def test_uncompilable_schema_or_grammar_is_a_one_line_error(tiny, kwargs, message):
    with pytest.raises(MacllmError) as info:
        compile_constraint(tiny.tokenizer, **kwargs)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and len(text) < 400


@pytest.mark.real_model
def test_real_smollm_answers_in_the_schema(smollm):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                               "country": {"type": "string", "maxLength": 40},
                                               "population_millions": {"type": "integer", "minimum": 0,
                                                                       "maximum": 100}},
              "required": ["city", "country", "population_millions"], "additionalProperties": False}
    constraint = compile_constraint(smollm.tokenizer, json_schema=schema)
    prompts = ["What is the capital of France? Answer in JSON.", "Describe Tokyo as JSON.",
               "Give me a city in Brazil."]
    for i, question in enumerate(prompts):
        text = smollm.tokenizer.apply_chat_template([{"role": "user", "content": question}])
        params = GenerationParams(max_tokens=120, constraint=constraint, temperature=0.7 if i else 0.0, seed=i)
        result = generate(smollm.model, smollm.tokenizer, smollm.tokenizer.encode(text), params)
        assert result.finish_reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), schema)


def test_speculative_settings_do_not_break_a_constrained_answer(tiny):
    """Speculation never changes the output; with a constraint the loop decodes one token at a time."""
    constraint = compile_constraint(tiny.tokenizer, json_schema=LIST_OF_POINTS)
    plain = run(tiny, constraint, temperature=1.0, seed=3)
    looked_up = run(tiny, constraint, temperature=1.0, seed=3, prompt_lookup=True)
    assert looked_up.token_ids == plain.token_ids
    jsonschema.validate(json.loads(looked_up.text), LIST_OF_POINTS)


def test_constrained_answers_through_the_engine_from_several_threads(tiny_llama_gguf):
    """The server's path: one compiled constraint, generations queued from several request threads."""
    from macllm.engine import Engine

    with Engine(str(tiny_llama_gguf), progress=False) as engine:
        constraint = compile_constraint(engine.tokenizer, json_schema=LIST_OF_POINTS)
        results: list[str | None] = [None] * 4

        def ask(i: int) -> None:
            params = GenerationParams(max_tokens=300, constraint=constraint, temperature=1.0, seed=i)
            results[i] = engine.generate("hello world", params).result(timeout=120).text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conv = engine.new_conversation()
        chat = engine.chat(conv, "hello", GenerationParams(max_tokens=300, constraint=constraint)).result(timeout=120)
    for text in [*results, chat.text]:
        assert text is not None
        jsonschema.validate(json.loads(text), LIST_OF_POINTS)


def test_constrained_rows_in_one_batch_each_follow_their_own_schema(tiny_llama_gguf):
    """Engine.complete decodes concurrent requests in one forward pass; each row masks with its own parser,
    and a free row beside them is not masked."""
    from macllm.engine import Engine

    with Engine(str(tiny_llama_gguf), progress=False) as engine:
        points = compile_constraint(engine.tokenizer, json_schema=LIST_OF_POINTS)
        person = compile_constraint(engine.tokenizer, json_schema=PERSON)
        prompt = engine.tokenizer.encode("hello world")
        alone = engine.complete(prompt, GenerationParams(max_tokens=300, constraint=points, temperature=1.0,
                                                         seed=1)).result(timeout=120).text
        streams = [engine.complete(prompt, GenerationParams(max_tokens=300, constraint=c, temperature=1.0, seed=s))
                   for c, s in ((points, 1), (person, 2), (points, 3), (None, 4))]
        texts = [s.result(timeout=120).text for s in streams]
    assert texts[0] == alone  # a row's answer does not depend on its neighbours
    jsonschema.validate(json.loads(texts[0]), LIST_OF_POINTS)
    jsonschema.validate(json.loads(texts[1]), PERSON)
    jsonschema.validate(json.loads(texts[2]), LIST_OF_POINTS)
    with pytest.raises(ValueError):
        json.loads(texts[3])


def test_a_think_block_stays_free_until_its_closing_tag(tiny):
    constraint = compile_constraint(tiny.tokenizer, json_schema=LIST_OF_POINTS)
    state = constraint.start(free_until="</think>")
    ids = tiny.tokenizer.encode("I should list points.</think>", add_bos=False)
    logits = mx.zeros((1, tiny.tokenizer.vocab_size))
    previous = None
    for token in ids:  # each step passes the token chosen at the step before
        assert mx.all(state.mask(logits, previous) == 0).item()  # free text: nothing masked
        previous = mx.array([token])
    masked = state.mask(logits, previous)[0].tolist()  # "</think>" is complete: the answer must be the JSON
    allowed = [i for i, v in enumerate(masked) if v == 0]
    assert allowed and all(tiny.tokenizer.decode([i]).startswith("[") for i in allowed)


def test_a_prompt_that_opens_thinking_leaves_the_thinking_unconstrained(tiny):
    """A reasoning template that starts the model's thinking in the prompt: the think block is free (the same
    tokens as without a constraint), so the JSON does not land inside the reasoning."""
    tok = tiny.tokenizer
    saved = tok.chat_template
    tok.chat_template = saved + "{# strips <think> ... </think> from history #}"
    try:
        prompt = tok.encode("hello world <think>")
        constraint = compile_constraint(tok, json_schema=LIST_OF_POINTS)
        free = generate(tiny.model, tok, prompt, GenerationParams(max_tokens=12, temperature=1.0, seed=5))
        thinking = generate(tiny.model, tok, prompt, GenerationParams(max_tokens=12, temperature=1.0, seed=5,
                                                                       constraint=constraint))
    finally:
        tok.chat_template = saved
    assert thinking.token_ids == free.token_ids
    assert thinking.reasoning and thinking.text == ""  # the random model never closed its think block
    plain = generate(tiny.model, tok, prompt, GenerationParams(max_tokens=12, temperature=1.0, seed=5,
                                                                constraint=constraint))
    assert plain.text.startswith("[")  # without a thinking template the answer is constrained from the start
