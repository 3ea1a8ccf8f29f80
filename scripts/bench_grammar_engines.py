"""Grammar engines for constrained decoding, measured on our own tokenizers: llguidance, xgrammar, outlines-core.

For each tokenizer (SmolLM2: 49k tokens, Qwen2.5: 151k) and each engine this prints:
- set-up: the engine's tokenizer object plus compiling one JSON schema (once per tokenizer / per schema);
- per token: computing the allowed-token mask and advancing with the chosen token, walking the tokens of a
  valid document (the overhead a constrained generation adds to every decode step);
- correctness: random walks (a uniformly random allowed token each step, as a random-weight model would pick)
  must end in JSON that parses and validates against the schema; the count that did out of the tries.

llguidance is macllm's dependency; the other two are measured when importable (`pip install --no-deps xgrammar
apache-tvm-ffi outlines-core` into a scratch folder on PYTHONPATH: xgrammar declares torch and triton as
dependencies but imports without them). Run: PYTHONPATH=$PWD .venv/bin/python scripts/bench_grammar_engines.py
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np

from macllm.loader import read_tokenizer

HOME = Path(os.environ.get("MACLLM_TEST_HOME", Path.home() / ".cache" / "macllm-test"))
TOKENIZERS = {
    "SmolLM2 (49k)": HOME / "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf",
    "Qwen2.5 (151k)": HOME / "models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "maxLength": 20},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10},
                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "address", "active"],
    "additionalProperties": False,
}
DOCUMENT = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["red", "blue"],
            "address": {"city": "London", "zip": "12345"}, "active": True}
RANDOM_WALKS = 20
WALK_LIMIT = 400  # tokens


class Llguidance:
    name = "llguidance"

    def __init__(self, tok):
        import llguidance

        self.ll = llguidance
        self.vocab = tok.vocab_size
        self.tok = llguidance.LLTokenizer(tok.hf_tokenizer.to_str(), n_vocab=self.vocab,
                                          eos_token=sorted(tok.eos_token_ids))
        self.mask = np.zeros((self.vocab + 31) // 32, dtype=np.int32)

    def compile(self, schema):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        self.pristine = self.ll.LLMatcher(self.tok, grammar)
        assert not self.pristine.is_error(), self.pristine.get_error()

    def start(self):
        self.m = self.pristine.deep_copy()

    def allowed(self):
        self.m.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)
        return self.mask

    def advance(self, token):
        assert self.m.consume_token(token), self.m.get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar
        from transformers import PreTrainedTokenizerFast

        self.xgr = xgrammar
        self.vocab = tok.vocab_size
        info = xgrammar.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_object=tok.hf_tokenizer),
                                                      vocab_size=self.vocab, stop_token_ids=sorted(tok.eos_token_ids))
        self.compiler = xgrammar.GrammarCompiler(info)
        self.mask = np.zeros((1, (self.vocab + 31) // 32), dtype=np.int32)

    def compile(self, schema):
        self.compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                          separators=(",", ":"))

    def start(self):
        self.m = self.xgr.GrammarMatcher(self.compiled)

    def allowed(self):
        self.m.fill_next_token_bitmask(self.mask)
        return self.mask[0]

    def advance(self, token):
        assert self.m.accept_token(token)


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok):
        import outlines_core
        from outlines_core import json_schema

        self.oc, self.js = outlines_core, json_schema
        self.vocab = tok.vocab_size
        eos = min(tok.eos_token_ids)
        pieces: dict[bytes, list[int]] = {}
        for i in range(self.vocab):
            if i in tok.special_ids:
                continue
            data = token_bytes(tok, i)
            if data:
                pieces.setdefault(data, []).append(i)
        self.vocabulary = outlines_core.Vocabulary(eos, pieces)
        self.mask = np.zeros((self.vocab + 31) // 32, dtype=np.int32)

    def compile(self, schema):
        regex = self.js.build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        self.index = self.oc.Index(regex, self.vocabulary)

    def start(self):
        self.g = self.oc.Guide(self.index)

    def allowed(self):
        self.mask[:] = 0
        ids = np.asarray(self.g.get_tokens(), dtype=np.int64)
        np.bitwise_or.at(self.mask, ids // 32, (1 << (ids % 32)).astype(np.uint32).view(np.int32))
        return self.mask

    def advance(self, token):
        self.g.advance(token)


def token_bytes(tok, token_id: int) -> bytes:
    from macllm.tokenizer import _byte_level_bytes

    raw = tok.token_string(token_id)
    data = _byte_level_bytes(raw)
    return raw.encode() if data is None else data


def allowed_ids(mask: np.ndarray, vocab: int) -> np.ndarray:
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab]
    return np.flatnonzero(bits)


def walk_document(engine, ids: list[int]) -> tuple[list[float], list[float]]:
    engine.start()
    mask_s, advance_s = [], []
    for token in ids:
        t0 = time.perf_counter()
        mask = engine.allowed()
        t1 = time.perf_counter()
        assert (mask[token // 32] >> (token % 32)) & 1, f"{engine.name} refused token {token} of a valid document"
        engine.advance(token)
        t2 = time.perf_counter()
        mask_s.append(t1 - t0)
        advance_s.append(t2 - t1)
    return mask_s, advance_s


def random_walk(engine, tok, rng: random.Random) -> str | None:
    """A uniformly random allowed token each step until only an end token is allowed; None if the text validates,
    else why not."""
    engine.start()
    ids: list[int] = []
    for _ in range(WALK_LIMIT):
        allowed = allowed_ids(engine.allowed(), engine.vocab)
        ends = [i for i in allowed if i in tok.eos_token_ids]
        body = [int(i) for i in allowed if i not in tok.eos_token_ids]
        if ends and not body:
            break
        if not body:
            return "no token allowed before the end"
        token = rng.choice(body)
        engine.advance(token)
        ids.append(token)
    else:
        return f"not finished after {WALK_LIMIT} tokens"
    try:
        jsonschema.validate(json.loads(tok.decode(ids)), SCHEMA)
    except (ValueError, jsonschema.ValidationError) as e:
        return str(e).splitlines()[0]
    return None


def main() -> int:
    engines = [Llguidance, Xgrammar, OutlinesCore]
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print("| tokenizer | engine | set-up s | compile s | mask µs/token (median) | advance µs/token "
          "| random walks valid |")
    print("|---|---|---|---|---|---|---|")
    for label, path in TOKENIZERS.items():
        if not path.exists():
            print(f"{label}: {path} is missing; run the tests once to fetch it", file=sys.stderr)
            continue
        tok = read_tokenizer(path)
        ids = tok.encode(json.dumps(DOCUMENT, separators=(",", ":")), add_bos=False)
        for cls in engines:
            try:
                t0 = time.perf_counter()
                engine = cls(tok)
                t1 = time.perf_counter()
                engine.compile(SCHEMA)
                t2 = time.perf_counter()
            except ImportError as e:
                print(f"| {label} | {cls.name} | not installed ({e.name}) | | | | |")
                continue
            mask_all, adv_all = [], []
            for _ in range(5):
                mask_s, adv_s = walk_document(engine, ids)
                mask_all += mask_s
                adv_all += adv_s
            rng = random.Random(0)
            failures = [why for why in (random_walk(engine, tok, rng) for _ in range(RANDOM_WALKS)) if why]
            valid = RANDOM_WALKS - len(failures)
            print(f"| {label} | {cls.name} | {t1 - t0:.2f} | {t2 - t1:.3f} | {statistics.median(mask_all) * 1e6:.0f} "
                  f"| {statistics.median(adv_all) * 1e6:.0f} | {valid}/{RANDOM_WALKS} |", flush=True)
            if failures:
                print(f"  first failure: {failures[0][:120]}", file=sys.stderr)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
