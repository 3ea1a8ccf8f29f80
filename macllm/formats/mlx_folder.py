"""Writing an MLX / mlx-lm model folder: config.json (+ quantization block), safetensors, tokenizer files.

Written into a temporary sibling folder and renamed into place, so an interrupted write leaves nothing
half-made under the target name.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from macllm.config import ModelConfig
from macllm.formats.arrays import save_arrays
from macllm.storage.atomic import atomic_folder


def write_tokenizer_files(tokenizer, folder: Path) -> None:
    tokenizer.hf_tokenizer.save(str(folder / "tokenizer.json"))
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(tokenizer.add_bos),
        "bos_token": tokenizer.token_string(bos) if bos is not None else None,
        "eos_token": tokenizer.token_string(eos) if eos is not None else None,
        "chat_template": tokenizer.chat_template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False))


def save_mlx_folder(cfg: ModelConfig, weights: dict[str, mx.array], tokenizer, out: Path,
                    overwrite: bool = False) -> Path:
    out = Path(out)
    with atomic_folder(out, overwrite, "choose another output folder or remove it") as tmp:
        config = cfg.to_hf_dict()
        config.setdefault("architectures", ["LlamaForCausalLM"])
        if tokenizer.eos_token_id is not None:
            config.setdefault("eos_token_id", sorted(tokenizer.eos_token_ids))
        if tokenizer.bos_token_id is not None:
            config.setdefault("bos_token_id", tokenizer.bos_token_id)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_arrays(tmp / "model.safetensors", weights, metadata={"format": "mlx"})
        write_tokenizer_files(tokenizer, tmp)
    return out
