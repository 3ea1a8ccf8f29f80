"""One module per `macllm` subcommand: each has `add_parser(subparsers)` and `run(args) -> int`."""
