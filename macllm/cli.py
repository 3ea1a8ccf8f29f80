"""The `macllm` command. Errors print one line and exit 2; no tracebacks unless MACLLM_DEBUG=1."""

from __future__ import annotations

import argparse
import os
import sys

import macllm  # noqa: F401  (loads the fast BLAS before anything imports MLX)
from macllm import backend
from macllm.commands import (
    adapters_cmd,
    ask_cmd,
    cache_cmd,
    chat_cmd,
    doctor_cmd,
    fuse_cmd,
    generate_cmd,
    index_cmd,
    models_cmd,
    perplexity_cmd,
    quantize_cmd,
    search_cmd,
    serve_cmd,
    tokenize_cmd,
    train_cmd,
)
from macllm.commands.chat_cmd import AppLauncher
from macllm.errors import MacllmError

COMMANDS = (chat_cmd, generate_cmd, tokenize_cmd, models_cmd, adapters_cmd, fuse_cmd, train_cmd, quantize_cmd,
            perplexity_cmd, index_cmd, search_cmd, ask_cmd, cache_cmd, serve_cmd, doctor_cmd)


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line `macllm: error:` as every other bad input, not a usage dump."""

    def error(self, message: str):
        print(f"macllm: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="macllm",
        description="A local LLM on your own machine: chat, adapters, fine-tuning and notes. "
                    "Run without arguments to start chatting with the default model.",
    )
    parser.add_argument("--version", action="version", version=f"macllm {macllm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None, app: AppLauncher | None = None) -> int:
    """Run one command. `app` starts the full-screen app for `macllm chat`; the installed `macllm`
    command (`tui.main`) passes it, so this package never imports the UI. Without it, chat is line mode."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["chat"]
    args = parser.parse_args(argv)
    args.app = app
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    backend.warn_if_slow_blas()
    try:
        return args.run(args) or 0
    except MacllmError as e:
        # One line, whatever the message holds (a file-supplied name may carry a newline).
        print("macllm: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmacllm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("MACLLM_DEBUG"):
            raise
        first_line = next(iter(str(e).splitlines()), "")  # the promise is one line, even for our own bugs
        print(f"macllm: internal error: {type(e).__name__}: {first_line} (rerun with MACLLM_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
