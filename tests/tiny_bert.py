"""A tiny random-weight sentence-transformers BERT folder (WordPiece tokenizer, mean pooling) for tests."""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "and", "note", "notes", "search", "index", "python", "sqlite", "model", "cat", "dog", "code"]


def vocab() -> list[str]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return SPECIAL + chars + [f"##{c}" for c in string.ascii_lowercase + string.digits] + WORDS


def write_tiny_bert(folder: Path, *, hidden: int = 32, layers: int = 2, max_seq_length: int = 64,
                    seed: int = 0) -> Path:
    import mlx.core as mx
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from macllm.models.bert import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    words = vocab()
    config = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(words),
              "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
              "intermediate_size": hidden * 2, "max_position_embeddings": 128, "type_vocab_size": 2,
              "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
    (folder / "config.json").write_text(json.dumps(config))
    mx.random.seed(seed)
    model = BertModel(BertConfig.from_dict(config))
    # Random LayerNorm gains too, so that every parameter matters to the output.
    model.update({"embeddings": {"LayerNorm": {"weight": 1 + 0.1 * mx.random.normal((hidden,))}}})
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}))
    return folder
