"""`macllm serve`: an OpenAI-compatible HTTP server (chat, completions, embeddings, live adapters)."""

from __future__ import annotations

import os
import sys

from macllm.commands.options import (
    MAX_DRAFT_TOKENS,
    add_adapter_option,
    add_model_option,
    add_speculative_options,
    apply_adapters,
    checked_text,
    parse_adapter_specs,
)
from macllm.errors import MacllmError

DEFAULT_PORT = 8080
API_KEY_ENV = "MACLLM_API_KEY"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API",
                       description="Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
                                   "/v1/completions, /v1/embeddings, /v1/models, /v1/adapters, /health). Binds "
                                   "127.0.0.1 unless told otherwise.")
    add_model_option(p)
    add_adapter_option(p)
    add_speculative_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; another needs --api-key or --insecure)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every request but /health (or set ${API_KEY_ENV})")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--embedder", default=None,
                   help="model for /v1/embeddings (default: the notes embedder, minilm-l6; loaded on first use)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted (default 8 MB)")
    p.set_defaults(run=run)


def run(args) -> int:
    # Start-up time: see commands/__init__.py.
    from macllm.engine import Engine
    from macllm.server.app import ServerConfig
    from macllm.server.runner import bind_problem, model_id, port_problem, serve
    from macllm.server.scheduler import Scheduler, Speculation

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    problem = bind_problem(args.host, api_key, args.insecure)
    if problem:
        raise MacllmError(problem)
    if not 0 < args.port < 65536:
        raise MacllmError(f"--port must be from 1 to 65535, got {args.port}")
    if not args.max_body_mb > 0:
        raise MacllmError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    parse_adapter_specs(args.adapter)  # refuse a bad --adapter before the model loads
    if not 0 <= args.draft_tokens <= MAX_DRAFT_TOKENS:
        raise MacllmError(f"--draft-tokens must be 0 (adapt) or 1 to {MAX_DRAFT_TOKENS}, got {args.draft_tokens}")
    if args.draft_model is not None:
        checked_text(args.draft_model, "--draft-model")
    speculation = Speculation(args.draft_model or None, bool(args.prompt_lookup), args.draft_tokens)
    problem = port_problem(args.host, args.port)
    if problem:
        raise MacllmError(problem)
    with Engine(args.model, keep_quantized=args.keep_quantized, kv_bits=args.kv_bits) as engine:
        apply_adapters(engine, args.adapter)
        if speculation.draft_model:  # another vocabulary is refused here, in one line, before serving
            engine.load_draft(speculation.draft_model, keep_quantized=args.keep_quantized).result()
        scheduler = Scheduler(engine, engine.adapters["active"], speculation)
        assert engine.info is not None, "the engine loaded its model"
        config = ServerConfig(model_id=model_id(engine.info), api_key=api_key,
                              max_body_bytes=int(args.max_body_mb * 1024 * 1024), embedder=args.embedder)
        shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
        guessing = (f", draft {speculation.draft_model}" if speculation.draft_model
                    else ", prompt lookup" if speculation.prompt_lookup else "")
        print(f"macllm serve: {config.model_id} at http://{shown}:{args.port}/v1 "
              f"({'API key required' if api_key else 'no API key'}{guessing}); Ctrl-C stops", file=sys.stderr,
              flush=True)
        serve(scheduler, config, args.host, args.port)
    print("macllm serve: stopped", file=sys.stderr)
    return 0
