"""SentencePiece vocabularies from GGUF (`tokenizer.ggml.model == "llama"`, e.g. Gemma, Llama 2) as a
`tokenizers` BPE model.

llama.cpp's SentencePiece tokenizer starts from single characters and repeatedly merges the adjacent
pair whose concatenation is a token with the highest score (leftmost on ties); characters with no token
fall back to <0xXX> byte tokens. A BPE model whose merges are every (left, right) split of every token,
ranked by that token's score, makes the same choices. Spaces become "▁" first.
"""

from __future__ import annotations

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers

from macllm.errors import MacllmError

SPACE = "\u2581"  # ▁
TOKEN_TYPE_BYTE = 6


def merges_from_scores(tokens: list[str], scores, token_types, vocab: dict[str, int]) -> list[tuple[str, str]]:
    ranked = []
    for token_id, token in enumerate(tokens):
        if len(token) < 2 or (token_types is not None and int(token_types[token_id]) == TOKEN_TYPE_BYTE):
            continue
        score = float(scores[token_id])
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, token_id, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def build_spm_tokenizer(metadata: dict, tokens: list[str]) -> HFTokenizer:
    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise MacllmError("GGUF SentencePiece vocabulary lacks tokenizer.ggml.scores; the file is incomplete")
    types = metadata.get("tokenizer.ggml.token_type")
    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        vocab.setdefault(token, token_id)  # SentencePiece keeps the first of duplicate pieces
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None and int(unk_id) < len(tokens) else None
    model = models.BPE(vocab=vocab, merges=merges_from_scores(tokens, scores, types, vocab), unk_token=unk,
                       byte_fallback=True, fuse_unk=True)
    hf = HFTokenizer(model)
    space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", SPACE)]
    if space_prefix:
        steps.insert(0, normalizers.Prepend(SPACE))
    hf.normalizer = normalizers.Sequence(steps)
    decode_steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    hf.decoder = decoders.Sequence(decode_steps)
    return hf
