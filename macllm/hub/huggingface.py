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
    raise not_cached_error(repo_id, reason)


def not_cached_error(repo_id: str, reason: str) -> MacllmError:
    """A first run without network: what is missing, where we looked, and the one command that fixes it."""
    where = _hf_cache_dir() or _default_hf_cache()
    if _hf_offline():
        fix = (f"unset HF_HUB_OFFLINE and rerun to download it, or fetch it once online with "
               f"`hf download {repo_id}`")
    else:
        fix = (f"it could not be downloaded now ({reason}); when online, rerun this command or fetch it "
               f"with `hf download {repo_id}`")
    partial = "" if reason in {"not cached", "HF_HUB_OFFLINE is set"} or not _hf_offline() else f": {reason}"
    return MacllmError(f"{repo_id} is not cached here (Hugging Face cache {where}{partial}); {fix}; "
                       "or pass a local model folder or .gguf file")


def hf_cached_models() -> list[tuple[str, Path, int]]:
    """(repo id, model folder or .gguf, bytes on disk) for every model repo in the Hugging Face cache that
    holds a model; the revision `main` names, else the newest. Best-effort: an odd cache lists nothing."""
    # Start-up time: only `macllm models` and the picker list the cache.
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(_hf_cache_dir())
    except Exception:  # no cache folder yet, or one huggingface_hub cannot read
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = next((r for r in repo.revisions if "main" in r.refs),
                        max(repo.revisions, key=lambda r: r.last_modified))
        try:
            model = model_in_folder(Path(revision.snapshot_path))
        except MacllmError:
            continue  # a tokenizer-only or dataset-like repo: not a model to offer
        found.append((repo.repo_id, model, int(repo.size_on_disk)))
    return found


def _hf_cache_dir() -> str | None:
    """Read at call time: huggingface_hub reads its env only once, at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _default_hf_cache() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "huggingface", "hub")


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
