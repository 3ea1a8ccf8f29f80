"""A tiny random Gemma 3, as a Hugging Face folder and as a GGUF with k-quant tensors and a
SentencePiece vocabulary (the way llama.cpp's converter writes Gemma: norm weights stored as 1 + w)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# 7 layers with pattern 6: layers 0-4 and 6 slide, layer 5 is global. Window 8 so short tests cross it.
DIMS = dict(hidden_size=256, num_hidden_layers=7, intermediate_size=512, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
            rope_local_base_freq=10_000.0, query_pre_attn_scalar=64, sliding_window=8,
            sliding_window_pattern=6, max_position_embeddings=512)
PIECES = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WORDS = ["▁", "▁t", "he", "▁the", "▁a", "in", "er", "▁c", "at", "▁cat", "▁s", "at▁", "▁on", "on", "▁m",
         "▁mat", "▁hello", "▁wor", "ld", "▁world", "ll", "o", "h", "e", "l", "w", "r", "d", "t", "a", "c", "s",
         "m", "n", "i", "\n"]


def spm_metadata() -> dict:
    tokens = PIECES + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    types = [3] * len(PIECES) + [6] * 256 + [1] * len(WORDS)
    scores = [0.0] * (len(PIECES) + 256) + [-float(i) for i in range(len(WORDS))]
    return {"tokens": tokens, "types": types, "scores": scores}


def vocab_size() -> int:
    return len(spm_metadata()["tokens"])


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """HF names; norm weights are Gemma's w (the norm multiplies by 1 + w)."""
    rng = np.random.default_rng(seed)
    d, f, hd = DIMS["hidden_size"], DIMS["intermediate_size"], DIMS["head_dim"]
    heads, kv = DIMS["num_attention_heads"], DIMS["num_key_value_heads"]

    def mat(rows, cols, scale=0.06):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm(n):
        return (0.2 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(vocab_size(), d, 0.05), "model.norm.weight": norm(d)}
    for i in range(DIMS["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(heads * hd, d)
        w[p + "self_attn.k_proj.weight"] = mat(kv * hd, d)
        w[p + "self_attn.v_proj.weight"] = mat(kv * hd, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, heads * hd)
        w[p + "self_attn.q_norm.weight"] = norm(hd)
        w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "mlp.gate_proj.weight"] = mat(f, d)
        w[p + "mlp.up_proj.weight"] = mat(f, d)
        w[p + "mlp.down_proj.weight"] = mat(d, f)
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            w[p + n + ".weight"] = norm(d)
    return w


def hf_config() -> dict:
    return {"model_type": "gemma3_text", "vocab_size": vocab_size(), **DIMS, "bos_token_id": 2,
            "eos_token_id": 1, "final_logit_softcapping": None, "rope_scaling": None}


def write_folder(folder: Path, seed: int = 0) -> Path:
    import mlx.core as mx

    from macllm.formats.gguf_vocab import build_hf_tokenizer_from_gguf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config()))
    mx.save_safetensors(str(folder / "model.safetensors"), {k: mx.array(v) for k, v in random_weights(seed).items()})
    build_hf_tokenizer_from_gguf(gguf_tokenizer_metadata()).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                              "add_bos_token": True}))
    return folder


def gguf_tokenizer_metadata() -> dict:
    m = spm_metadata()
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": m["tokens"],
            "tokenizer.ggml.scores": np.array(m["scores"], np.float32),
            "tokenizer.ggml.token_type": np.array(m["types"], np.int32), "tokenizer.ggml.bos_token_id": 2,
            "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.unknown_token_id": 3,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False}


_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
         "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
# One of each kind of storage the importer handles.
_TYPES = {"attn_q": "Q5_0", "attn_k": "Q5_0", "attn_v": "Q8_0", "attn_output": "Q4_K", "ffn_gate": "Q4_K",
          "ffn_up": "Q5_K", "ffn_down": "Q6_K"}
# Where each k-quant block keeps its float16 super-scale(s): (byte offset, value).
_KQUANT_SCALES = {"Q4_K": [(0, 0.004), (2, 0.002)], "Q5_K": [(0, 0.002), (2, 0.001)], "Q6_K": [(208, 0.0005)]}


def random_kquant(rows: int, cols: int, name: str, rng) -> np.ndarray:
    """Random k-quant blocks (the gguf package cannot quantize k-quants, only dequantize them)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, name)]
    data = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for offset, value in _KQUANT_SCALES[name]:
        data[..., offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    return data.reshape(rows, -1)


def write_gguf(path: Path, seed: int = 0, arch: str = "gemma3", with_tokenizer: bool = True) -> Path:
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(DIMS["num_hidden_layers"])
    w.add_context_length(DIMS["max_position_embeddings"])
    w.add_embedding_length(DIMS["hidden_size"])
    w.add_feed_forward_length(DIMS["intermediate_size"])
    w.add_head_count(DIMS["num_attention_heads"])
    w.add_head_count_kv(DIMS["num_key_value_heads"])
    w.add_key_length(DIMS["head_dim"])
    w.add_value_length(DIMS["head_dim"])
    w.add_layer_norm_rms_eps(DIMS["rms_norm_eps"])
    w.add_rope_freq_base(DIMS["rope_theta"])
    w.add_sliding_window(DIMS["sliding_window"])
    if with_tokenizer:
        m = spm_metadata()
        w.add_tokenizer_model("llama")
        w.add_token_list(m["tokens"])
        w.add_token_scores(m["scores"])
        w.add_token_types(m["types"])
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
    for name, value in random_weights(seed).items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{i}.{_GGUF[module]}.{kind}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]
        if name.endswith("norm.weight"):
            w.add_tensor(gname, value + 1.0)  # llama.cpp's converter stores 1 + w for Gemma
            continue
        kind = _TYPES.get(gname.split(".")[-2], "Q8_0")
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        if kind in _KQUANT_SCALES:
            data = random_kquant(*value.shape, kind, rng)
        else:
            data = gguf.quants.quantize(value, qtype)
        w.add_tensor(gname, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
