"""The prompt cache's size cap, in MiB (0 turns the cache off). The first of these that is set wins:
`--prompt-cache-mb` on a command, $MACLLM_PROMPT_CACHE_MB, the saved setting (`macllm cache limit MB`, or the
app's settings), DEFAULT_MB. The setting lives in $MACLLM_HOME/prompt_cache.json, written atomically."""

from __future__ import annotations

import json
import os

from macllm.errors import MacllmError
from macllm.paths import macllm_home
from macllm.storage.atomic import atomic_write

DEFAULT_MB = 2048
MAX_MB = 1024 * 1024  # a mebibyte short of a tebibyte is more disk than any cache needs
ENV = "MACLLM_PROMPT_CACHE_MB"


def _settings_path():
    return macllm_home() / "prompt_cache.json"


def check_mb(value, where: str) -> int:
    """A whole number of MiB from 0 to MAX_MB, else a one-line error naming `where` it came from."""
    try:
        mb = int(str(value).strip())
    except ValueError:
        mb = -1
    if not 0 <= mb <= MAX_MB:
        raise MacllmError(f"{where} must be a whole number of MiB from 0 (off) to {MAX_MB}, got {value!r}")
    return mb


def saved_mb() -> int | None:
    """The saved setting, or None when there is none (or it cannot be read: the default then applies)."""
    try:
        data = json.loads(_settings_path().read_text())
        return check_mb(data["limit_mb"], "limit_mb")
    except (OSError, ValueError, KeyError, TypeError, MacllmError):
        return None


def save_mb(mb: int) -> None:
    path = _settings_path()
    try:
        atomic_write(path, json.dumps({"limit_mb": check_mb(mb, "the prompt cache size")}) + "\n")
    except OSError as e:
        raise MacllmError(f"cannot save the prompt cache cap in {path}: {e.strerror or e}; check that "
                          f"{path.parent} is writable, or set ${ENV} instead") from None


def resolve_mb(explicit: int | None = None) -> int:
    if explicit is not None:
        return check_mb(explicit, "--prompt-cache-mb")
    if os.environ.get(ENV, "").strip():
        return check_mb(os.environ[ENV], f"${ENV}")
    saved = saved_mb()
    return DEFAULT_MB if saved is None else saved


def resolve_limit_bytes(explicit: int | None = None) -> int:
    return resolve_mb(explicit) * 2**20


def given_limit_bytes(explicit: int | None = None) -> int | None:
    """The cap from the flag or the environment, checked now (a bad value is one line before any work); None
    when neither is set: the saved setting is read on first use, so an engine touches no file until it needs to."""
    if explicit is None and not os.environ.get(ENV, "").strip():
        return None
    return resolve_limit_bytes(explicit)
