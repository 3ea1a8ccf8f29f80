"""The bundled example adapters: listed, described, and (on the real model) doing what they say."""

from __future__ import annotations

import pytest

from macllm.generation import GenerationParams


def test_bundled_examples_are_listed(tmp_path, monkeypatch):
    from macllm.lora.store import list_adapters

    monkeypatch.setenv("MACLLM_HOME", str(tmp_path))
    rows = {r["name"]: r for r in list_adapters() if r["where"] == "bundled"}
    for name in ("pirate", "terse"):
        r = rows[name]
        assert r["base_model"] == "smollm2-135m" and r["rank"] == 8 and r["layers"] == "0-29"
        assert r["base_fingerprint"].startswith("llama-d576-l30-v49152-")
        assert r["size_bytes"] < 4e6 and r["training"]["steps"] > 0


@pytest.mark.real_model
def test_pirate_talks_like_a_pirate(smollm_gguf):
    from macllm.engine import Engine

    with Engine(str(smollm_gguf), progress=False) as e:
        e.load_adapter("pirate")
        e.set_adapters({"pirate": 1.0})
        text = e.chat(e.new_conversation(), "How do I cook rice?", GenerationParams(max_tokens=30)).result().text
        e.set_adapters({})
        base = e.chat(e.new_conversation(), "How do I cook rice?", GenerationParams(max_tokens=30)).result().text
    assert any(w in text.lower() for w in ("arr", "matey", "ahoy")), text
    assert not any(w in base.lower() for w in ("arr,", "matey", "ahoy")), base
