"""The installed `macllm` command: the core CLI with the full-screen app plugged in for `macllm chat`.

It lives here, not in `macllm/`, so the engine package never imports the UI (a layering contract)."""

from __future__ import annotations

import sys

from macllm import cli


def launch_app(**options) -> None:
    """Start-up time: Textual and the app load only when `macllm chat` opens it, not for other commands."""
    from tui.launch import launch_app as launch

    launch(**options)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, app=launch_app)


if __name__ == "__main__":
    sys.exit(main())
