"""Answers from notes: retrieve, number the chunks, fit them into the model's context, ask for citations.

Works on any Engine (CLI and TUI alike): retrieval runs on the engine thread, like all MLX work. An answer
is a one-off generation: no engine conversation, so no KV cache outlives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from macllm.engine import Engine, TokenStream
from macllm.errors import MacllmError
from macllm.generation import GenerationParams
from macllm.rag.retrieve import Retriever, SearchResult

SYSTEM_PROMPT = (
    "You answer questions from the user's own notes. Use only the numbered note excerpts you are given. "
    "After each statement, cite the excerpts it comes from by number in square brackets, like [1] or [2][3]. "
    "If the excerpts do not answer the question, say that the notes do not cover it."
)
CITATION = re.compile(r"\[(\d+)\]")
_SAFETY_TOKENS = 16  # the template's closing tokens and rounding


@dataclass
class Answer:
    """The streamed reply (iterate `stream`), the sources numbered as in the prompt, and the prompt size."""

    stream: TokenStream
    sources: list[SearchResult]
    prompt_tokens: int

    def cited(self, text: str) -> list[int]:
        """Source numbers (1-based) that `text` cites, in order, each once, only ones that exist."""
        numbers = dict.fromkeys(int(n) for n in CITATION.findall(text))
        return [n for n in numbers if 1 <= n <= len(self.sources)]


def source_label(result: SearchResult) -> str:
    return result.location


def user_message(question: str, sources: list[SearchResult]) -> str:
    parts = ["Notes:"]
    for number, r in enumerate(sources, start=1):
        title = r.path.rsplit("/", 1)[-1] + (f" — {r.heading}" if r.heading else "")
        parts.append(f"[{number}] {title}\n{r.text}")
    parts.append(f"Question: {question}\n\nAnswer from the notes above and cite them by number, like [1].")
    return "\n\n".join(parts)


def prompt_ids(question: str, sources: list[SearchResult], tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_message(question, sources)}],
                                         add_generation_prompt=True, system=SYSTEM_PROMPT)
    return tokenizer.encode(text)


def fit_sources(question: str, results: list[SearchResult], tokenizer, context_length: int,
                max_new_tokens: int) -> tuple[list[SearchResult], int]:
    """The best-ranked results whose prompt fits the context with room for the answer; (sources, prompt tokens)."""
    budget = context_length - max_new_tokens - _SAFETY_TOKENS

    def count(sources):
        return len(prompt_ids(question, sources, tokenizer))

    used: list[SearchResult] = []
    tokens = count(used)
    if tokens > budget:
        raise MacllmError(f"the question alone needs {tokens} tokens; the model's context ({context_length}) "
                          f"leaves {budget} after {max_new_tokens} for the answer; shorten it or lower --max-tokens")
    for result in results:  # in rank order; a chunk that does not fit is skipped, a smaller one may still fit
        trial = count(used + [result])
        if trial <= budget:
            used.append(result)
            tokens = trial
    return used, tokens


def ask(engine: Engine, retriever: Retriever, question: str, *, k: int = 8, mode: str = "hybrid",
        path: str | None = None, params: GenerationParams | None = None) -> Answer:
    """Retrieve, build the cited-answer prompt and start streaming the answer on `engine`."""
    params = params or GenerationParams(max_tokens=512)
    if params.prompt_lookup is None:  # answers copy from their sources: guessing from the prompt pays
        params = replace(params, prompt_lookup=True)
    if not question.strip():
        raise MacllmError("the question is empty")
    if retriever.is_empty():
        raise MacllmError(f"the notes index {retriever.store.path} is empty; add notes with `macllm index DIR`")
    results = engine.submit(retriever.search, question, k, mode, path).result()
    if not results:
        raise MacllmError("no note matches the question" + (f" under {path}" if path else ""))
    info = engine.info
    if info is None:
        raise MacllmError("no model is loaded; load one before asking the notes")
    tokenizer = engine.tokenizer
    sources, prompt_tokens = fit_sources(question, results, tokenizer, info.context_length or 2048, params.max_tokens)
    stream = engine.generate(prompt_ids(question, sources, tokenizer), params)
    return Answer(stream, sources, prompt_tokens)
