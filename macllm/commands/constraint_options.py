"""--json-schema FILE / --grammar FILE: what a command's output must look like (macllm/structured)."""

from __future__ import annotations

import argparse
import json

from macllm.commands.options import read_text_arg
from macllm.errors import MacllmError


def add_constraint_options(p: argparse.ArgumentParser) -> None:
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", metavar="FILE",
                       help="constrain the output to JSON valid against this JSON Schema file (the answer always "
                            "parses; generation ends when the JSON is complete)")
    shape.add_argument("--grammar", metavar="FILE",
                       help="constrain the output to this grammar: Lark as llguidance reads it (a `start:` rule, "
                            "terminals as /regex/ or \"text\"), or llama.cpp GBNF (a `root ::=` rule)")


def constraint_spec(args) -> dict:
    """The keyword arguments for structured.compile_constraint, read from the files and checked (one line on a
    missing, unreadable or invalid file) before any model loads; {} without either option."""
    from macllm.structured import check_constraint  # start-up time: see commands/__init__.py

    if args.json_schema is not None:
        flag, file = "--json-schema", args.json_schema
        try:
            spec = {"json_schema": json.loads(_read(file, flag))}
        except ValueError as e:
            raise MacllmError(f"{flag} {file} is not valid JSON ({e}); fix the file") from None
    elif args.grammar is not None:
        flag, file = "--grammar", args.grammar
        spec = {"grammar": _read(file, flag)}
    else:
        return {}
    try:
        check_constraint(**spec)
    except MacllmError as e:
        raise MacllmError(f"{flag} {file}: {e}") from None
    return spec


def _read(file: str, flag: str) -> str:
    try:
        return read_text_arg(None, file, what=flag)
    except PermissionError:
        raise MacllmError(f"{flag} file {file} cannot be read (permission denied)") from None
