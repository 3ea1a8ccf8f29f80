"""Hugging Face repo ids -> a model folder in the usual HF cache (offline once cached)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from macllm.errors import MacllmError
from macllm.hub.folder import model_in_folder

HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja", "*.txt"]


def from_hugging_face(repo_id: str, progress: bool) -> Path:
    # Start-up time: huggingface_hub brings in its HTTP stack (~0.1 s); only a repo id needs it.
    import huggingface_hub
    from huggingface_hub.utils import RepositoryNotFoundError

    cache_dir = _hf_cache_dir()
    # The cache first: it works offline and costs no round trip.
    try:
        return model_in_folder(Path(huggingface_hub.snapshot_download(
            repo_id, local_files_only=True, allow_patterns=HF_ALLOW_PATTERNS, cache_dir=cache_dir)))
    except MacllmError as error:  # cached, but not a model folder: the Hub may have the rest
        reason = str(error)
    except Exception:  # not cached or partial
        reason = "HF_HUB_OFFLINE is set" if _hf_offline() else "not cached"
    if not _hf_offline():
        if progress:
            print(f"Downloading {repo_id} from Hugging Face…", file=sys.stderr)
        try:
            with _hf_progress_bars(progress):
                return model_in_folder(Path(huggingface_hub.snapshot_download(
                    repo_id, allow_patterns=HF_ALLOW_PATTERNS, cache_dir=cache_dir)))
        except RepositoryNotFoundError:
            raise MacllmError(
                f"no Hugging Face repo {repo_id} (or it is private/gated: log in with `hf auth login`)"
            ) from None
        except MacllmError:
            raise
        except Exception as error:
            reason = _one_line(error)
    raise MacllmError(
        f"cannot download {repo_id} from Hugging Face (offline?) and it is not in the local cache ({reason}); "
        "connect once to fetch it, or pass a local model folder"
    )


def _hf_cache_dir() -> str | None:
    """Read at call time: huggingface_hub reads its env only once, at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _hf_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in {"1", "true", "yes", "on"} for flag in flags)


@contextmanager
def _hf_progress_bars(enabled: bool):
    from huggingface_hub.utils import (  # start-up time
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__
