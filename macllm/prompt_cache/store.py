"""The prompt cache on disk: `$MACLLM_HOME/cache/`, one file per saved token sequence, bounded by a size cap
with least-recently-used eviction (a file's modification time is its last use: a hit touches it).

File names are `<key hash>-<head hash>-<tokens hash>.safetensors`, the head being the first HEAD tokens: a
prompt only reads the headers of files with its own key and opening, and a prompt sharing fewer than HEAD
tokens with every file has nothing worth loading anyway. Among those, the file sharing the longest prefix with
the prompt wins; it may be longer than the prompt (a chat's file serves the same chat with an earlier edit)
and is trimmed after loading. A file that cannot be trusted is ignored with one stderr line (once per file).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from macllm.cache import make_cache, trim_cache
from macllm.errors import MacllmError
from macllm.generation.steps import common_prefix_length
from macllm.paths import macllm_home, private_folder
from macllm.prompt_cache import cache_file, layers
from macllm.prompt_cache.cache_file import SUFFIX, Header, UnusableFile
from macllm.prompt_cache.key import head_hash, key_hash
from macllm.prompt_cache.limit import resolve_limit_bytes

HEAD = 64  # tokens a prompt must share with a file before the file is considered
MIN_GAIN = 64  # a file must hold at least this many more reusable tokens than the cache in memory
MIN_TOKENS = 256  # shorter sequences are quicker to compute than to save and load
STALE_TEMP_S = 3600  # a hidden temporary file this old was left by a killed writer


def cache_dir() -> Path:
    return macllm_home() / "cache"


@dataclass
class Entry:
    """One file, as `macllm cache list` shows it."""

    path: Path
    size: int
    last_used: float
    header: Header | None
    problem: str | None = None


@dataclass
class Found:
    cache: list  # the restored per-layer caches, trimmed to `tokens`
    tokens: list[int]
    path: Path


class PromptCache:
    def __init__(self, limit_bytes: int | None = None, folder: Path | None = None, min_tokens: int = MIN_TOKENS):
        self._limit = limit_bytes  # 0: off (nothing read or written); None: resolved on first use (limit.py)
        self._folder = folder
        self.min_tokens = min_tokens
        self._said: set[str] = set()
        # (id(model), kv bits) -> (weak reference to the model, its per-layer array signatures)
        self._probes: dict[tuple[int, int | None], tuple[weakref.ref, list]] = {}

    @property
    def limit_bytes(self) -> int:
        if self._limit is None:
            self._limit = resolve_limit_bytes()
        return self._limit

    @limit_bytes.setter
    def limit_bytes(self, value: int) -> None:
        self._limit = value

    @property
    def folder(self) -> Path:
        return self._folder if self._folder is not None else cache_dir()

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0

    def note(self, line: str) -> None:
        """Say something once per process, in one line."""
        if line not in self._said:
            self._said.add(line)
            print(f"macllm: note: {line}", file=sys.stderr)

    # --- finding -----------------------------------------------------------------------------
    def find(self, model, kv_bits: int | None, key: dict, prompt: list[int], have: int) -> Found | None:
        """The cache of the file sharing the longest prefix with `prompt` (at most all but its last token), if
        that is at least MIN_GAIN tokens more than the `have` tokens the caller already holds."""
        if not self.enabled or len(prompt) < HEAD + 1 or not self.folder.is_dir():
            return None
        candidates: list[tuple[int, Header]] = []
        for path in self.folder.glob(f"{key_hash(key)}-{head_hash(prompt[:HEAD])}-*{SUFFIX}"):
            header = self._header(path)
            if header is None:
                continue
            if header.key != key:
                self.note(f"ignored the prompt cache file {path.name}: it was made for another model, adapter "
                          "blend or KV width than its name says")
                continue
            usable = min(common_prefix_length(header.tokens, prompt), len(prompt) - 1)
            if usable >= have + MIN_GAIN:
                candidates.append((usable, header))
        for usable, header in sorted(candidates, key=lambda c: c[0], reverse=True):  # the longest that loads
            cache = self._restore(model, kv_bits, header)
            # A sliding window may have dropped positions a shorter prefix needs: then it cannot serve.
            if cache is not None and trim_cache(cache, len(header.tokens) - usable):
                _touch(header.path)
                return Found(cache, header.tokens[:usable], header.path)
        return None

    def _header(self, path: Path) -> Header | None:
        try:
            return cache_file.read_header(path)
        except UnusableFile as e:
            self.note(f"ignored the prompt cache file {path.name}: {e}")
            return None

    def _restore(self, model, kv_bits: int | None, header: Header) -> list | None:
        fresh = make_cache(model, kv_bits)
        try:
            cache_file.check_against(header, fresh, self._probe(model, kv_bits), model.config.vocab_size)
            snapshots = cache_file.load_layers(header)
        except UnusableFile as e:
            self.note(f"ignored the prompt cache file {header.path.name}: {e}")
            return None
        for layer, (meta, arrays) in zip(fresh, snapshots, strict=True):
            layers.restore(layer, meta, arrays)
        return fresh

    def _probe(self, model, kv_bits: int | None) -> list:
        """Per layer, the (shape, dtype) of each array a fresh cache holds after one token: what the model
        itself writes, so a file is checked against the model rather than against its own claims."""
        slot = (id(model), kv_bits)
        held = self._probes.get(slot)
        if held is None or held[0]() is not model:
            cache = make_cache(model, kv_bits)
            mx.eval(model(mx.array([[0]]), cache=cache, last_only=True))
            self._probes = {k: v for k, v in self._probes.items() if v[0]() is not None}
            held = self._probes[slot] = (weakref.ref(model), [[layers.array_signature(a) for a in
                                                              layers.snapshot(layer)[1]] for layer in cache])
        return held[1]

    # --- saving ------------------------------------------------------------------------------
    def save(self, key: dict, model_name: str, tokens: list[int], cache: list) -> Path | None:
        """Write `cache` (holding exactly `tokens`) unless it is short, cannot be saved or exceeds the cap; then
        drop files it supersedes and evict the least recently used beyond the cap. Never raises for the disk."""
        if not self.enabled or len(tokens) < max(self.min_tokens, HEAD + 1):
            return None
        unsaved = layers.unsaved_kind(cache)
        if unsaved is not None:
            self.note(f"this model's {unsaved} layers cannot be saved: its prompts are not cached on disk")
            return None
        snapshots = [layers.snapshot(layer) for layer in cache]
        mx.eval([a for _, arrays in snapshots for a in arrays])
        size = sum(a.nbytes for _, arrays in snapshots for a in arrays)
        if size > self.limit_bytes:
            self.note(f"a {len(tokens)}-token prompt cache ({size / 2**20:.0f} MiB) is over the prompt cache's "
                      f"size cap ({self.limit_bytes / 2**20:.0f} MiB); raise the cap to keep prompts this long")
            return None
        head = head_hash(tokens[:HEAD])
        name = f"{key_hash(key)}-{head}-{hashlib.sha256(str(tokens).encode()).hexdigest()[:16]}{SUFFIX}"
        try:
            folder = private_folder(self.folder)
            path = folder / name
            cache_file.write(path, key, model_name, tokens, snapshots)
        except OSError as e:  # a full disk or a read-only home: the answer stands, the prompt is not kept
            self.note(f"could not save the prompt cache in {self.folder}: {e.strerror or e}")
            return None
        except MacllmError as e:  # the folder cannot be made
            self.note(f"could not save the prompt cache: {e}")
            return None
        self._drop_superseded(path, key, tokens)
        self.evict(keep=path)
        return path

    def _drop_superseded(self, path: Path, key: dict, tokens: list[int]) -> None:
        """Files of the same key whose tokens are a prefix of the new file's: it serves every prompt they did."""
        for other in path.parent.glob(f"{key_hash(key)}-{head_hash(tokens[:HEAD])}-*{SUFFIX}"):
            if other == path:
                continue
            try:
                header = cache_file.read_header(other)
            except UnusableFile:
                continue
            if header.key == key and len(header.tokens) <= len(tokens) and tokens[:len(header.tokens)] == header.tokens:
                other.unlink(missing_ok=True)

    def forget(self, tokens: list[int]) -> int:
        """Delete every file (of any key) that shares its first HEAD tokens with `tokens`, or is a prefix of them;
        returns how many. Runs whether or not the cache is on: a deleted chat's text must not stay here."""
        removed = 0
        for entry in self.entries():
            held = entry.header.tokens if entry.header is not None else []
            shared = common_prefix_length(held, tokens)
            if held and (shared >= HEAD or shared == len(held)):
                entry.path.unlink(missing_ok=True)
                removed += 1
        return removed

    # --- the folder as a whole ----------------------------------------------------------------
    def entries(self, with_headers: bool = True) -> list[Entry]:
        """Every cache file, most recently used first."""
        if not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            entry = Entry(path, st.st_size, st.st_mtime, None)
            if with_headers:
                try:
                    entry.header = cache_file.read_header(path)
                except UnusableFile as e:
                    entry.problem = str(e)
            out.append(entry)
        return sorted(out, key=lambda e: e.last_used, reverse=True)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used files until the folder fits the cap (and stale temporary files)."""
        self._remove_stale_temporaries()
        entries = self.entries(with_headers=False)
        total = sum(e.size for e in entries)
        removed = []
        for entry in reversed(entries):  # oldest first
            if total <= self.limit_bytes:
                break
            if entry.path == keep:
                continue
            entry.path.unlink(missing_ok=True)
            total -= entry.size
            removed.append(entry.path)
        return removed

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for path in self.folder.glob(f".*{SUFFIX}"):
            try:
                if now - path.stat().st_mtime > STALE_TEMP_S:
                    path.unlink(missing_ok=True)
            except OSError:
                continue

    def clear(self) -> tuple[int, int]:
        """Remove every cache file (and leftovers of killed writes); (files, bytes) removed."""
        if not self.folder.is_dir():
            return 0, 0
        count = size = 0
        for path in self.folder.glob(f"*{SUFFIX}"):  # glob's * also matches hidden temporaries here
            try:
                size += path.stat().st_size
                path.unlink()
                count += 1
            except OSError:
                continue
        return count, size


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass
