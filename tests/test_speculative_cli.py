"""`--draft-model`, `--prompt-lookup` and `--draft-tokens` on the command line: the same tokens as without,
the guesses counted in --json, bad values refused in one line."""

from __future__ import annotations

import json
import shutil

from tests.test_cli import generate_json


def test_generate_with_a_draft_or_prompt_lookup_gives_the_same_tokens(cli, tiny_llama_gguf):
    args = ("-p", "hello world user hello world", "--max-tokens", "24")
    plain = generate_json(cli, tiny_llama_gguf, *args)
    drafted = generate_json(cli, tiny_llama_gguf, *args, "--draft-model", tiny_llama_gguf, "--draft-tokens", "3")
    looked = generate_json(cli, tiny_llama_gguf, *args, "--prompt-lookup")
    assert drafted["token_ids"] == looked["token_ids"] == plain["token_ids"]
    assert drafted["draft_accepted"] == drafted["draft_proposed"] > 0  # the model as its own draft
    assert looked["draft_proposed"] > 0 and plain["draft_proposed"] == 0


def test_bad_speculative_options_are_one_line(cli, tiny_llama_gguf, tiny_llama_folder, tmp_path):
    code, out, err = cli("generate", "--model", tiny_llama_gguf, "-p", "hi", "--draft-tokens", "-1")
    assert code == 2 and "--draft-tokens must be 0 (adapt) or 1 to 32" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("generate", "--model", tiny_llama_gguf, "-p", "hi", "--draft-model", tmp_path / "none.gguf")
    assert code != 0 and err.strip().startswith("macllm: error: draft model: ") and len(err.strip().splitlines()) == 1
    other = tmp_path / "other"
    shutil.copytree(tiny_llama_folder, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["model"]["vocab"]["hello"], spec["model"]["vocab"]["Ġworld"] = (spec["model"]["vocab"]["Ġworld"],
                                                                         spec["model"]["vocab"]["hello"])
    (other / "tokenizer.json").write_text(json.dumps(spec))
    code, out, err = cli("generate", "--model", tiny_llama_gguf, "-p", "hi", "--draft-model", other)
    assert code != 0 and "another vocabulary" in err and len(err.strip().splitlines()) == 1
