"""Tiny random-weight models, written the way real ones are shipped (GGUF, HF/MLX folders).

Seeded, so every run writes the same weights. The tokenizer is a small byte-level BPE with ChatML
special tokens, enough to exercise chat templates, EOS handling and streaming.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "u s", "us e", "use r",
          "a s", "as s", "ass i", "assi s", "assis t", "assist a", "assista n", "assistan t"]
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DIMS = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512)


def byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def tokenizer_metadata() -> dict:
    tokens = SPECIAL + byte_chars() + [m.replace(" ", "") for m in MERGES]
    types = [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL))
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML,
    }


def vocab_size() -> int:
    return len(tokenizer_metadata()["tokenizer.ggml.tokens"])


def random_weights(model_type: str = "llama", seed: int = 0, tied: bool = True) -> dict[str, np.ndarray]:
    """Hugging Face names and layout, float32."""
    rng = np.random.default_rng(seed)
    d, f = DIMS["hidden_size"], DIMS["intermediate_size"]
    heads, kv = DIMS["num_attention_heads"], DIMS["num_key_value_heads"]
    hd = d // heads

    def mat(rows, cols, scale=0.08):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(vocab_size(), d, 0.5),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)}
    if not tied:
        w["lm_head.weight"] = mat(vocab_size(), d)
    for i in range(DIMS["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(heads * hd, d)
        w[p + "self_attn.k_proj.weight"] = mat(kv * hd, d)
        w[p + "self_attn.v_proj.weight"] = mat(kv * hd, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, heads * hd)
        w[p + "mlp.gate_proj.weight"] = mat(f, d)
        w[p + "mlp.up_proj.weight"] = mat(f, d)
        w[p + "mlp.down_proj.weight"] = mat(d, f)
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        if model_type == "qwen2":
            for name, rows in (("q_proj", heads * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
                w[p + f"self_attn.{name}.bias"] = (0.1 * rng.standard_normal(rows)).astype(np.float32)
    return w


def hf_config(model_type: str = "llama", tied: bool = True, **overrides) -> dict:
    cfg = {"model_type": model_type, "vocab_size": vocab_size(), "tie_word_embeddings": tied, **DIMS,
           "bos_token_id": 1, "eos_token_id": 2}
    cfg.update(overrides)
    return cfg


def _permute_for_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter reorders q/k rows for its interleaved rope; do the same."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, rest = hf.split(".", 3)
        module, kind = rest.rsplit(".", 1)
        return f"blk.{i}.{_GGUF_NAMES[module]}.{kind}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def write_tiny_gguf(path: Path, quant: str = "f32", seed: int = 0, arch: str = "llama") -> Path:
    """quant: 'f32' (exact), 'q4_1' or 'q8_0' for the 2-D matrices (norms stay F32)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    qtype = {"f32": None, "q4_1": gguf.GGMLQuantizationType.Q4_1,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    meta = tokenizer_metadata()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-" + arch)
    writer.add_block_count(DIMS["num_hidden_layers"])
    writer.add_context_length(DIMS["max_position_embeddings"])
    writer.add_embedding_length(DIMS["hidden_size"])
    writer.add_feed_forward_length(DIMS["intermediate_size"])
    writer.add_head_count(DIMS["num_attention_heads"])
    writer.add_head_count_kv(DIMS["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(DIMS["rms_norm_eps"])
    writer.add_rope_freq_base(DIMS["rope_theta"])
    writer.add_vocab_size(vocab_size())
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    for name, value in random_weights(arch, seed).items():
        if arch == "llama" and ".q_proj." in name:
            value = _permute_for_llama_cpp(value, DIMS["num_attention_heads"])
        elif arch == "llama" and ".k_proj." in name:
            value = _permute_for_llama_cpp(value, DIMS["num_key_value_heads"])
        if qtype is not None and value.ndim == 2:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tokenizer_files(folder: Path) -> None:
    from macllm.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf_metadata(tokenizer_metadata())
    tok.hf_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False, "chat_template": CHATML,
    }))


def write_tiny_folder(folder: Path, model_type: str = "llama", seed: int = 0, dtype: str = "float32",
                      quantize: dict | None = None, shards: int = 1) -> Path:
    """A Hugging Face style folder; `quantize={"bits": 4, "group_size": 32}` writes MLX-quantized weights."""
    import mlx.core as mx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(model_type)
    weights = {k: mx.array(v).astype(getattr(mx, dtype)) for k, v in random_weights(model_type, seed).items()}
    if quantize:
        config["quantization"] = dict(quantize)
        for name in [n for n in weights if n.endswith(".weight") and weights[n].ndim == 2]:
            q = quantize
            prefix = name[: -len(".weight")]
            if isinstance(quantize.get(prefix), dict):
                q = quantize[prefix]
            wq, scales, biases = mx.quantize(weights[name], group_size=q["group_size"], bits=q["bits"])
            weights[name], weights[prefix + ".scales"], weights[prefix + ".biases"] = wq, scales, biases
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(weights)
    if shards == 1:
        mx.save_safetensors(str(folder / "model.safetensors"), weights)
    else:
        weight_map = {}
        for s in range(shards):
            part = {n: weights[n] for n in names[s::shards]}
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            mx.save_safetensors(str(folder / fname), part)
            weight_map.update({n: fname for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_tokenizer_files(folder)
    return folder


def perturbed(path, *noise: tuple[float, int]):
    """The model at `path`, loaded, with noise (scale, seed) added to every weight, once per pair. The tiny model
    itself repeats one token greedily; noise of 0.3 makes a livelier target, 0.02 more a draft that agrees with
    it often (about half its guesses), not always."""
    import mlx.core as mx
    from mlx.utils import tree_map

    from macllm.loader import load_model

    lm = load_model(str(path), progress=False)
    for scale, seed in noise:
        rng = np.random.default_rng(seed)

        def shaken(a, rng=rng, scale=scale):
            return a + mx.array(rng.standard_normal(a.shape).astype(np.float32)) * scale

        lm.model.update(tree_map(shaken, lm.model.parameters()))
    return lm
