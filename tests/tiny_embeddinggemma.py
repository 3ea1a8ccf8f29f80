"""A tiny random EmbeddingGemma folder: tests/tiny_gemma3's body with bidirectional attention, then
sentence-transformers' mean pooling, two dense projections, normalisation and query/document prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests import tiny_gemma3

PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def write_folder(folder: Path, seed: int = 0, layer_types: list[str] | None = None) -> Path:
    """`layer_types` overrides the 7 layers' pattern (e.g. all "sliding_attention" to test the window)."""
    import mlx.core as mx
    from tokenizers import Tokenizer, processors

    folder = tiny_gemma3.write_folder(Path(folder), seed)
    config = {**tiny_gemma3.hf_config(), "use_bidirectional_attention": True, "architectures": ["Gemma3TextModel"]}
    if layer_types:
        config["layer_types"] = layer_types
    (folder / "config.json").write_text(json.dumps(config))
    # EmbeddingGemma's tokenizer wraps every text in <bos> ... <eos>.
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                             special_tokens=[("<bos>", 2), ("<eos>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
        "add_eos_token": True, "padding_side": "right"}))
    hidden = tiny_gemma3.DIMS["hidden_size"]
    rng = np.random.default_rng(seed + 100)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    for i, (fan_in, fan_out) in enumerate(((hidden, 4 * hidden), (4 * hidden, hidden)), start=2):
        path = folder / f"{i}_Dense"
        path.mkdir(exist_ok=True)
        (path / "config.json").write_text(json.dumps({
            "in_features": fan_in, "out_features": fan_out, "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity"}))
        weight = (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
        mx.save_safetensors(str(path / "model.safetensors"), {"linear.weight": mx.array(weight)})
        modules.append({"idx": i, "name": str(i), "path": path.name, "type": "sentence_transformers.models.Dense"})
    modules.append({"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True, "include_prompt": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}))
    return folder
