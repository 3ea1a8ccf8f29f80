"""Training data: a notes folder (or an mlx-lm data folder) -> token examples, split by file.

Notes become plain causal-LM text: each heading-aware chunk (rag/chunking.py) is prefixed with its
note's title and heading path, so the model learns what belongs where. Validation holds out whole
notes: a chunk of a note seen in training would make the held-out loss look better than it is.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
from pathlib import Path

from macllm.errors import MacllmError
from macllm.rag.chunking import chunk_file
from macllm.tuner.data_jsonl import load_jsonl_folder
from macllm.tuner.examples import Example, TrainingData

NOTE_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd", ".txt", ".text", ".rst", ".org"}
IGNORE_FILE = ".macllmignore"


# --- finding notes ---------------------------------------------------------------------------
def _ignore_patterns(root: Path) -> list[str]:
    path = root / IGNORE_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        if fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts):
            return True
    return False


def _read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (NUL bytes or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def find_notes(root: Path) -> tuple[dict[str, str], dict]:
    """Relative path -> text for every note; and counts of what was skipped and why."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MacllmError(f"notes folder {root} does not exist or is not a folder")
    patterns = _ignore_patterns(root)
    notes: dict[str, str] = {}
    skipped = {"hidden": 0, "ignored": 0, "binary": 0, "other_type": 0, "empty": 0}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or path.name == IGNORE_FILE:
            continue
        if any(part.startswith(".") for part in rel.split("/")):
            skipped["hidden"] += 1
        elif _ignored(rel, patterns):
            skipped["ignored"] += 1
        elif path.suffix.lower() not in NOTE_SUFFIXES:
            skipped["binary" if _read_text(path) is None else "other_type"] += 1
        else:
            text = _read_text(path)
            if text is None:
                skipped["binary"] += 1
            elif not text.strip():
                skipped["empty"] += 1
            else:
                notes[rel] = text
    return notes, skipped


def note_title(rel: str, text: str) -> str:
    """The first '# ' heading, else the file name without its suffix."""
    for line in text.splitlines()[:40]:
        if line.startswith("# "):
            return line[2:].strip()
    return Path(rel).stem.replace("-", " ").replace("_", " ")


# --- notes -> examples -----------------------------------------------------------------------
def note_examples(rel: str, text: str, tokenizer, max_seq: int) -> list[Example]:
    """Heading-aware chunks of one note, each `title > heading path` + blank line + text + EOS."""
    def count(texts):
        return [len(tokenizer.encode(t, add_bos=False)) for t in texts]

    title = note_title(rel, text)
    # Room for BOS/EOS and the title line that chunk_file does not know about.
    limit = max(16, max_seq - count([title])[0] - 4)
    out = []
    for chunk in chunk_file(rel, text, count, limit, overlap=0):
        path = chunk.heading if chunk.heading.startswith(title) else " > ".join(filter(None, [title, chunk.heading]))
        tokens = tokenizer.encode(f"{path}\n\n{chunk.text}")
        if tokenizer.eos_token_id is not None:
            tokens.append(tokenizer.eos_token_id)
        if len(tokens) >= 2:
            out.append(Example(tokens[:max_seq], 0, rel))
    return out


def split_files(files: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Whole files held out for validation: round(fraction * n), at least one when there are >= 2 files."""
    if val_fraction <= 0 or len(files) < 2:
        return list(files), []
    shuffled = sorted(files)
    random.Random(seed).shuffle(shuffled)
    n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
    return sorted(shuffled[n_val:]), sorted(shuffled[:n_val])


def load_notes(root: Path, tokenizer, max_seq: int, val_fraction: float, seed: int) -> TrainingData:
    notes, skipped = find_notes(root)
    if not notes:
        what = sum(skipped.values())
        raise MacllmError(f"no notes in {root}: found no Markdown or text files"
                          + (f" ({what} other file(s) skipped: {_describe(skipped)})" if what else ""))
    train_files, valid_files = split_files(list(notes), val_fraction, seed)
    train = [e for f in train_files for e in note_examples(f, notes[f], tokenizer, max_seq)]
    valid = [e for f in valid_files for e in note_examples(f, notes[f], tokenizer, max_seq)]
    if not train:
        raise MacllmError(f"no text to train on in {root} (the notes are empty after chunking)")
    stats = {"source": str(root), "kind": "notes", "files": len(notes), "train_files": len(train_files),
             "valid_files": len(valid_files), "valid_file_names": valid_files,
             "chunks": len(train) + len(valid), "train_chunks": len(train), "valid_chunks": len(valid),
             "tokens": sum(len(e.tokens) for e in train + valid),
             "train_tokens": sum(len(e.tokens) for e in train),
             "valid_tokens": sum(len(e.tokens) for e in valid), "skipped": skipped,
             "file_hashes": {rel: note_hash(text) for rel, text in notes.items()}}
    return TrainingData(train, valid, stats)


def note_hash(text: str) -> str:
    """Short content hash of a note as training read it (16 hex digits: ~100 KB of metadata for 5k notes)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def notes_changed_since(data_stats: dict) -> int | None:
    """How many notes of the training folder were added, edited or deleted since; None when the adapter
    was not trained on a notes folder that recorded its files (older adapters) or the folder is gone."""
    before = data_stats.get("file_hashes")
    if data_stats.get("kind") != "notes" or not isinstance(before, dict) or not data_stats.get("source"):
        return None
    try:
        notes, _ = find_notes(Path(data_stats["source"]))
    except (MacllmError, OSError):
        return None
    now = {rel: note_hash(text) for rel, text in notes.items()}
    return sum(1 for rel in before.keys() | now.keys() if before.get(rel) != now.get(rel))


def _describe(skipped: dict) -> str:
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in skipped.items() if n) or "none"


def is_jsonl_folder(root: Path) -> bool:
    return (Path(root) / "train.jsonl").is_file()


def load_data(root: Path, tokenizer, max_seq: int, val_fraction: float, seed: int,
              mask_prompt: bool = False) -> TrainingData:
    """A notes folder, or an mlx-lm data folder (train.jsonl [+ valid.jsonl])."""
    root = Path(root).expanduser()
    if is_jsonl_folder(root):
        return load_jsonl_folder(root, tokenizer, max_seq, mask_prompt)
    if mask_prompt:
        raise MacllmError("--mask-prompt applies to chat or completions data (train.jsonl), not to notes")
    return load_notes(root, tokenizer, max_seq, val_fraction, seed)
