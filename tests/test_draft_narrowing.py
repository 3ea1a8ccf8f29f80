"""A speculative draft's layers stored wider than 4 bits are re-quantized to 4 (macllm/quant/narrow.py): each
becomes exactly MLX's 4-bit quantization of its weights, narrower layers are left alone, and greedy decoding
with the narrowed draft still gives the target's own tokens."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.engine.draft_slot import narrowed_for_drafting
from macllm.generation import GenerationParams, generate
from macllm.generation.speculative import DraftModel
from macllm.quant.narrow import narrow_to_bits
from tests import tiny_models


def quantized(path, bits: int, *noise: tuple[float, int]):
    """The tiny model with noise (scale, seed) on every weight, its linear layers and embedding quantized."""
    lm = tiny_models.perturbed(path, *noise)
    nn.quantize(lm.model, group_size=32, bits=bits,
                class_predicate=lambda _, m: isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.shape[1] % 32 == 0)
    return lm


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}


def test_wider_layers_become_the_4_bit_quantization_of_their_weights(tiny_llama_gguf):
    lm = quantized(tiny_llama_gguf, 8, (0.3, 7))
    layers = quantized_layers(lm.model)
    assert any(isinstance(m, nn.QuantizedEmbedding) for m in layers.values())  # the tied head too
    dense = {name: mx.dequantize(m["weight"], m["scales"], m["biases"], group_size=32, bits=8)
             for name, m in layers.items()}
    before = sum(m[k].nbytes for m in layers.values() for k in ("weight", "scales", "biases"))
    saved = narrow_to_bits(lm.model)
    after = sum(m[k].nbytes for m in layers.values() for k in ("weight", "scales", "biases"))
    assert saved == before - after > 0
    for name, m in layers.items():
        assert m.bits == 4 and m.group_size == 32, name
        want = mx.quantize(dense[name], group_size=32, bits=4)
        for key, expected in zip(("weight", "scales", "biases"), want, strict=True):
            assert mx.array_equal(m[key], expected).item(), f"{name}.{key}"


def test_layers_at_4_bits_are_left_alone(tiny_llama_gguf):
    lm = quantized(tiny_llama_gguf, 4, (0.3, 7))
    held = {name: m["weight"] for name, m in quantized_layers(lm.model).items()}
    assert narrow_to_bits(lm.model) == 0
    assert narrowed_for_drafting(lm) is lm  # nothing to say in its compute line either
    assert all(m["weight"] is held[name] for name, m in quantized_layers(lm.model).items())


def test_greedy_decoding_with_a_narrowed_draft_gives_the_targets_tokens(tiny_llama_gguf):
    target = quantized(tiny_llama_gguf, 4, (0.3, 7))
    draft = narrowed_for_drafting(quantized(tiny_llama_gguf, 8, (0.3, 7), (0.02, 1)))
    assert draft.info.compute.endswith("narrowed to 4-bit for drafting")
    assert all(m.bits == 4 for m in quantized_layers(draft.model).values())
    kept = 0
    for text in ["hello world user", "the world is a user of hello"]:
        ids = target.tokenizer.encode(text)
        plain = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=40))
        drafted = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=40),
                           draft=DraftModel(draft.model, draft.tokenizer))
        assert drafted.token_ids == plain.token_ids
        kept += drafted.stats.draft_accepted
    assert kept > 0  # the narrowed draft's guesses were checked and kept
