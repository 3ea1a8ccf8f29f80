"""`macllm ask "question"`: an answer from your notes, citing them as [1], [2], then the sources."""

from __future__ import annotations

import sqlite3
import sys

from macllm.commands.options import (
    add_adapter_option,
    add_model_option,
    add_prompt_cache_option,
    add_sampling_options,
    add_speculative_options,
    apply_adapters,
    generation_params,
)
from macllm.commands.search_cmd import add_search_options


def add_parser(sub) -> None:
    p = sub.add_parser("ask", help="answer a question from your indexed notes, with citations")
    p.add_argument("question", help="the question")
    add_search_options(p, k=6)
    add_model_option(p)
    add_prompt_cache_option(p)
    add_adapter_option(p)
    add_sampling_options(p)
    add_speculative_options(p)
    # A light repetition penalty: small models loop on greedy answers over long contexts.
    p.set_defaults(run=run, max_tokens=512, repeat_penalty=1.1)


def run(args) -> int:
    from macllm.engine import Engine  # start-up time: see commands/__init__.py
    from macllm.generation import GenerationResult
    from macllm.rag.answer import ask, source_label
    from macllm.rag.retrieve import check_query
    from macllm.rag.session import open_retriever
    from macllm.rag.store import damaged

    check_query(args.question)  # before the index, the embedder and the model load
    params = generation_params(args)
    retriever = open_retriever(args.index)  # before the model: an empty or missing index fails fast
    with Engine(args.model, keep_quantized=args.keep_quantized, kv_bits=args.kv_bits,
                prompt_cache_mb=args.prompt_cache_mb) as engine:
        apply_adapters(engine, args.adapter)
        try:
            answer = ask(engine, retriever, args.question, k=args.k, mode=args.mode, path=args.path, params=params)
        except sqlite3.DatabaseError as e:
            raise damaged(retriever.store.path, e) from None
        result = None
        for event in answer.stream:
            if isinstance(event, GenerationResult):
                result = event
            elif event.text:
                sys.stdout.write(event.text)
                sys.stdout.flush()
    cited = set(answer.cited(result.text if result else ""))
    print("\n\nSources:")
    for number, source in enumerate(answer.sources, start=1):
        mark = "" if number in cited or not cited else "  (not cited)"
        print(f"[{number}] {source_label(source)}{mark}")
    return 0
