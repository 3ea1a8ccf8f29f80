"""One module per `macllm` subcommand: each has `add_parser(subparsers)` and `run(args) -> int`.

Start-up time: `macllm --help` and the app import every command module to build the parser, so a command
module imports at the top only what its parser needs; the engine, MLX and the rest are imported inside
`run`. This is the one place in macllm where imports sit inside functions."""
