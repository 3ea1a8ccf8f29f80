"""Retrieve, then rerank: the loaded chat model reads each of the top passages with the question and
says whether the passage answers it; passages are reordered by the log-odds of "yes" over "no".

Each passage costs one prefill of ~300 tokens, so 20 passages are ~6,000 tokens of prompt per question:
seconds on a CPU, where retrieval alone takes tens of milliseconds. docs/rag.md measures whether the
better order is worth it (scripts/eval_rag.py --rerank MODEL). Runs on whichever thread owns the model.
"""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np

from macllm.loaded import LoadedModel
from macllm.rag.retrieve import SearchResult

TOP = 20
_MAX_PASSAGE_TOKENS = 400  # a chunk is at most ~256 embedder tokens; a chat tokenizer may need a few more
_INSTRUCTION = ("Does the note excerpt below answer the question? Reply with one word: yes or no.\n\n"
                "Question: {question}\n\nExcerpt ({title}):\n{text}")


def rerank(loaded: LoadedModel, question: str, results: list[SearchResult], top: int = TOP) -> list[SearchResult]:
    """The first `top` results reordered by the model's verdict (score = log-odds of yes), the rest after."""
    head = [replace(r, score=relevance(loaded, question, r)) for r in results[:top]]
    head.sort(key=lambda r: -r.score)
    return head + results[top:]


def relevance(loaded: LoadedModel, question: str, result: SearchResult) -> float:
    tokenizer = loaded.tokenizer
    text = tokenizer.decode(tokenizer.encode(result.text, add_bos=False)[:_MAX_PASSAGE_TOKENS])
    title = result.path.rsplit("/", 1)[-1] + (f", {result.heading}" if result.heading else "")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": _INSTRUCTION.format(question=question, title=title, text=text)}],
        add_generation_prompt=True)
    logits = loaded.model(mx.array([tokenizer.encode(prompt)]), last_only=True)[0, -1].astype(mx.float32)
    log_probs = logits - mx.logsumexp(logits)
    yes, no = _answer_ids(tokenizer, "yes"), _answer_ids(tokenizer, "no")
    odds = mx.logsumexp(log_probs[mx.array(yes)]) - mx.logsumexp(log_probs[mx.array(no)])
    return float(np.array(odds))


def _answer_ids(tokenizer, word: str) -> list[int]:
    """First tokens of the word as a reply may begin: "yes", "Yes", " yes", " Yes" (deduplicated)."""
    ids = {tokenizer.encode(form, add_bos=False)[0] for form in (word, word.capitalize(), " " + word,
                                                                  " " + word.capitalize())}
    return sorted(ids)
