"""Rebuild a HF `tokenizers.Tokenizer` from the vocabulary stored in GGUF metadata.

Two kinds: byte-level BPE (`tokenizer.ggml.model == "gpt2"`), whose pre-tokenizer follows
`tokenizer.ggml.pre` the way llama.cpp does, and SentencePiece (`"llama"`: tokens, scores, types, byte
fallback; see gguf_spm.py). Either way the ids match what llama.cpp produces for the same text.
"""

from __future__ import annotations

import logging

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from macllm.errors import MacllmError
from macllm.formats.gguf_spm import build_spm_tokenizer

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf TokenType); CONTROL, USER_DEFINED and UNKNOWN are
# matched whole in input text because llama.cpp tokenizes with parse_special=true.
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Split regexes, as in llama.cpp's llama-vocab.cpp.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")

# `tokenizer.ggml.pre` values grouped by the regex llama.cpp uses for them.
LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}
QWEN2_PRE = {"qwen2", "deepseek-r1-qwen"}
DIGITS_THEN_GPT2_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}
GPT2_PRE = {"gpt2", "gpt-2", "phi-2", "default"}


def build_hf_tokenizer_from_gguf(metadata: dict) -> HFTokenizer:
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens) == 0:
        raise MacllmError("GGUF has no tokenizer metadata; use a model folder with tokenizer.json instead")
    model_type = metadata.get("tokenizer.ggml.model", "gpt2")
    if model_type == "llama":
        hf = build_spm_tokenizer(metadata, [str(t) for t in tokens])
        _add_whole_tokens(hf, [str(t) for t in tokens], metadata.get("tokenizer.ggml.token_type"))
        return hf
    if model_type != "gpt2":
        raise MacllmError(f"GGUF tokenizer model '{model_type}' is not supported "
                          "(supported: byte-level BPE 'gpt2', SentencePiece 'llama')")

    tokens = [str(t) for t in tokens]
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    # Later duplicates win, as in llama.cpp's token_to_id map.
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    merges = _valid_merges(metadata.get("tokenizer.ggml.merges") or [], vocab)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in LLAMA3_PRE))
    hf.pre_tokenizer = _pre_tokenizer_for(pre)
    hf.decoder = decoders.ByteLevel()
    _add_whole_tokens(hf, tokens, metadata.get("tokenizer.ggml.token_type"))
    return hf


def gguf_default_add_bos(metadata: dict) -> bool:
    """llama.cpp's default when `tokenizer.ggml.add_bos_token` is absent."""
    model_type = metadata.get("tokenizer.ggml.model", "gpt2")
    if model_type == "gpt2":
        return str(metadata.get("tokenizer.ggml.pre", "default")) in LLAMA3_PRE
    return model_type == "llama"


def _valid_merges(raw_merges, vocab: dict[str, int]) -> list[tuple[str, str]]:
    # The tokenizers library rejects a merge whose parts or result are not in the
    # vocab; llama.cpp just never applies such a merge, so drop it.
    merges = []
    for merge in raw_merges:
        left, sep, right = str(merge).partition(" ")
        if sep and left in vocab and right in vocab and left + right in vocab:
            merges.append((left, right))
    return merges


def _pre_tokenizer_for(pre: str):
    byte_level_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in LLAMA3_PRE:
        return _split_then_bytes(LLAMA3_REGEX, byte_level_only)
    if pre in QWEN2_PRE:
        return _split_then_bytes(QWEN2_REGEX, byte_level_only)
    if pre in DIGITS_THEN_GPT2_PRE:
        # Same as HF SmolLM2's tokenizer.json: each digit alone, then the GPT-2 regex.
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre not in GPT2_PRE:
        log.warning("unknown GGUF pre-tokenizer '%s'; using the GPT-2 regex (ids may differ slightly)", pre)
    return _split_then_bytes(GPT2_REGEX, byte_level_only)


def _split_then_bytes(regex: str, byte_level):
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
    return pre_tokenizers.Sequence([split, byte_level])


def _add_whole_tokens(hf: HFTokenizer, tokens: list[str], token_types) -> None:
    """Register control/user-defined tokens so text containing them is never split."""
    if token_types is None:
        return
    if len(token_types) != len(tokens):
        raise MacllmError(f"the GGUF tokenizer has {len(tokens)} tokens but {len(token_types)} token types")
    special, user_defined = [], []
    for token, token_type in zip(tokens, token_types, strict=True):
        token_type = int(token_type)
        if not token:
            continue
        if token_type in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN):
            special.append(AddedToken(token, special=True, normalized=False))
        elif token_type == TOKEN_TYPE_USER_DEFINED:
            # Not "special": HF keeps them in decode(skip_special=True) (e.g. <think>).
            user_defined.append(AddedToken(token, special=False, normalized=False))
    if special:
        hf.add_special_tokens(special)
    if user_defined:
        hf.add_tokens(user_defined)
