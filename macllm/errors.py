"""User-facing errors: one line that says what is wrong and what to do."""


class MacllmError(Exception):
    """An error the CLI prints as one line and exits with code 2 (no traceback)."""
