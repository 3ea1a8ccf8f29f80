"""Perplexity: sliding windows score every token once; one window equals a direct computation."""

from __future__ import annotations

import json
import math

import mlx.core as mx

from macllm.cli import main
from macllm.quant.perplexity import perplexity, window_starts


def test_windows_score_every_position_once():
    for n, context, stride in [(10, 4, 2), (1000, 256, 128), (5, 16, 8), (300, 100, 100)]:
        scored = []
        for begin, end, first in window_starts(n, context, stride):
            assert begin < first <= end and end - begin <= context
            scored.extend(range(first, end))
        assert scored == list(range(1, n))


def test_single_window_equals_direct_nll(tiny_llama_folder):
    from macllm.loader import load_model

    model = load_model(str(tiny_llama_folder), progress=False).model
    tokens = [int(t) for t in mx.random.randint(3, 200, (300,), key=mx.random.key(0)).tolist()]
    logits = model(mx.array([tokens]))[0, :-1]
    direct = (mx.logsumexp(logits, -1) - mx.take_along_axis(logits, mx.array(tokens[1:])[:, None], -1)[:, 0]).mean()
    result = perplexity(model, tokens, context=512)
    assert result.tokens == 299
    assert math.isclose(result.nll, direct.item(), rel_tol=1e-4)
    windowed = perplexity(model, tokens, context=64, stride=32)
    assert windowed.tokens == 299 and windowed.ppl > 0


def test_cli_json(tiny_llama_folder, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world, the user and the assistant " * 20)
    assert main(["perplexity", "-m", str(tiny_llama_folder), "-f", str(text), "--max-tokens", "100",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"tokens", "nll", "ppl"} and out["tokens"] == 99
    assert math.isclose(out["ppl"], math.exp(out["nll"]), rel_tol=1e-3)
