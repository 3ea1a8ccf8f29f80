"""`macllm generate --json-schema FILE` / `--grammar FILE`: constrained output from the command line, and one-line
errors (exit 2, nothing loaded) for a missing, unreadable or invalid file."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from macllm.cli import main

SCHEMA = {"type": "object",
          "properties": {"answer": {"enum": ["yes", "no", "maybe"]}, "confidence": {"type": "integer", "minimum": 0,
                                                                                   "maximum": 100}},
          "required": ["answer", "confidence"], "additionalProperties": False}


def test_json_schema_output_validates(cli, tiny_llama_gguf, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    for seed in ("1", "2"):
        code, out, err = cli("generate", "--model", tiny_llama_gguf, "-p", "hello", "--json-schema", schema,
                             "--temp", "1.0", "--seed", seed, "--max-tokens", "60", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert result["finish_reason"] == "stop"
        jsonschema.validate(json.loads(result["text"]), SCHEMA)


def test_json_schema_output_streams_to_the_terminal(cli, tiny_llama_gguf, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, err = cli("generate", "--model", tiny_llama_gguf, "-p", "hello", "--json-schema", schema)
    assert code == 0, err
    jsonschema.validate(json.loads(out), SCHEMA)


def test_grammar_file_constrains_the_output(cli, tiny_llama_gguf, tmp_path):
    grammar = tmp_path / "answer.lark"
    grammar.write_text('start: ("yes" | "no") "." " " /[0-9]{1,2}/\n')
    code, out, err = cli("generate", "--model", tiny_llama_gguf, "-p", "hello", "--grammar", grammar,
                         "--temp", "1.0", "--seed", "3", "--json")
    assert code == 0, err
    assert re.fullmatch(r"(yes|no)\. [0-9]{1,2}", json.loads(out)["text"])


def test_help_names_the_grammar_formats(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--json-schema FILE" in text and "--grammar FILE" in text
    assert "Lark" in text and "GBNF" in text


@pytest.mark.parametrize("flag, content, message", [
    ("--json-schema", None, "--json-schema file not found"),
    ("--json-schema", "{not json", "is not valid JSON"),
    ("--json-schema", '{"type": "no-such-type"}', "cannot compile the JSON schema"),
    ("--json-schema", b"\xff\xfe{}", "is not UTF-8 text"),
    ("--grammar", None, "--grammar file not found"),
    ("--grammar", "start: missing_rule", "cannot compile the grammar"),
    ("--grammar", "", "grammar is empty"),
])
def test_bad_constraint_file_is_one_line_before_loading(cli, tmp_path, flag, content, message):
    path = tmp_path / "shape"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    # The model does not exist: the file is refused before any model work.
    code, out, err = cli("generate", "--model", tmp_path / "absent.gguf", "-p", "hi", flag, path)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_json_schema_and_grammar_together_are_refused(cli, tmp_path):
    (tmp_path / "s.json").write_text("{}")
    (tmp_path / "g.lark").write_text('start: "a"')
    with pytest.raises(SystemExit) as info:
        main(["generate", "-p", "hi", "--json-schema", str(tmp_path / "s.json"), "--grammar", str(tmp_path / "g.lark")])
    assert info.value.code == 2
