"""The prompt cache on disk (macllm/prompt_cache): a saved and restored KV cache gives the very logits the cache
in memory gives, for every cache type (full, sliding window, quantized, mlx-lm's); files are found only under
their own key; damaged, truncated, foreign and other-version files are ignored with one line; the cap evicts
the least recently used; writes are atomic under a full disk. Tiny random models."""

from __future__ import annotations

import json
import struct

import mlx.core as mx
import pytest
from mlx_lm.models import cache as mlx_lm_cache

from macllm.cache import make_cache
from macllm.cache.sliding import SlidingWindowCache
from macllm.generation import steps
from macllm.loader import load_model
from macllm.models.mlx_lm_family import MlxLmLayerCache
from macllm.prompt_cache import PromptCache, cache_file
from macllm.prompt_cache.key import make_key
from tests import tiny_gemma3
from tests.test_mlx_lm_family import save_mlx_lm_folder

PROMPT = [(i * 7 + 3) % 200 + 10 for i in range(300)]  # 300 tokens inside every tiny vocabulary
NEXT = [11, 12, 13, 14, 15]
KEY = make_key("model-a", [], None)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_folder):
    return load_model(str(tiny_llama_folder), progress=False)


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    return load_model(str(tiny_gemma3.write_folder(tmp_path_factory.mktemp("gemma") / "g")), progress=False)


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory):
    return load_model(str(save_mlx_lm_folder("olmo2", tmp_path_factory.mktemp("olmo2") / "olmo2")), progress=False)


def store_at(tmp_path, **kw) -> PromptCache:
    return PromptCache(limit_bytes=kw.pop("limit_bytes", 2**30), folder=tmp_path / "cache", min_tokens=16, **kw)


def read_then_save(store, model, kv_bits, key=KEY, prompt=PROMPT, decode: int = 0):
    """Prefill `prompt` (and decode `decode` tokens one at a time, as answers are), save, and return the cache
    kept in memory with the tokens it holds."""
    cache = make_cache(model, kv_bits)
    tokens = list(prompt)
    logits = steps.prefill(model, tokens, cache)
    for _ in range(decode):
        token = int(mx.argmax(logits, axis=-1).item())
        tokens.append(token)
        logits = model(mx.array([[token]]), cache=cache)[:, -1, :]
    mx.eval([c.state for c in cache])
    assert store.save(key, "tiny", tokens, cache) is not None
    return cache, tokens


def next_logits(model, cache, tokens: list[int]) -> mx.array:
    return steps.prefill(model, tokens, cache)


@pytest.mark.parametrize("kind", ["full", "quantized-8-past-threshold", "quantized-4-below-threshold", "sliding",
                                  "mlx-lm", "mlx-lm-quantized", "mlx-lm-rotating", "bfloat16"])
def test_a_restored_cache_gives_the_logits_of_the_cache_in_memory(kind, tiny_llama, tiny_gemma, olmo2, tmp_path,
                                                                   monkeypatch, tiny_llama_folder):
    model, kv_bits, prompt = tiny_llama.model, None, PROMPT
    if kind.startswith("quantized"):
        kv_bits = 8 if "8" in kind else 4
        prompt = PROMPT if "past" in kind else PROMPT[:200]
        if "past" in kind:
            model = tiny_gemma.model  # head width 64: groups of 64 divide it (the tiny llama's 16 never quantize)
    if kind == "sliding":
        model = tiny_gemma.model
        monkeypatch.setattr(SlidingWindowCache, "slack", 4)  # the window (8) drops old positions within 300
        monkeypatch.setattr(SlidingWindowCache, "step", 16)
    if kind.startswith("mlx-lm"):
        model, kv_bits = olmo2.model, (8 if "quantized" in kind else None)
    if kind == "mlx-lm-rotating":  # mlx-lm's ring buffer (sliding-window families): a 64-position window wraps
        wrapped = MlxLmLayerCache
        monkeypatch.setattr(model, "make_cache", lambda kv_bits=None: [
            wrapped(mlx_lm_cache.RotatingKVCache(max_size=64)) for _ in range(model.num_layers)])
    if kind == "bfloat16":  # Metal computes in half precision: the file holds BF16 arrays
        model = load_model(str(tiny_llama_folder), progress=False).model
        model.set_dtype(mx.bfloat16)
    store = store_at(tmp_path)
    in_memory, tokens = read_then_save(store, model, kv_bits, prompt=prompt, decode=4)
    if kind == "bfloat16":
        assert in_memory[0].keys.dtype == mx.bfloat16
    if kind == "sliding":
        assert any(getattr(c, "start", 0) > 0 for c in in_memory), "the window never dropped a position"
    if kind == "mlx-lm-rotating":
        assert all(c.inner.offset > c.inner.max_size for c in in_memory)
    if kind == "quantized-8-past-threshold":
        assert any(getattr(c, "full", 0) is None for c in in_memory), "no layer switched to quantized"

    found = store.find(model, kv_bits, KEY, tokens + NEXT, have=0)
    assert found is not None and found.tokens == tokens
    expected = next_logits(model, in_memory, NEXT)
    got = next_logits(model, found.cache, NEXT)
    assert mx.array_equal(expected, got).item()


def test_a_prompt_sharing_only_part_of_a_file_reuses_that_part(tiny_llama, tmp_path):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None)
    edited = PROMPT[:200] + NEXT
    found = store.find(tiny_llama.model, None, KEY, edited, have=0)
    assert found is not None and found.tokens == PROMPT[:200]
    fresh = make_cache(tiny_llama.model)
    steps.prefill(tiny_llama.model, PROMPT[:200], fresh)
    assert mx.allclose(next_logits(tiny_llama.model, fresh, NEXT), next_logits(tiny_llama.model, found.cache, NEXT),
                       atol=1e-5).item()


def test_a_file_is_found_only_under_its_own_key(tiny_llama, tmp_path):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None)
    prompt = PROMPT + NEXT
    assert store.find(tiny_llama.model, None, KEY, prompt, have=0) is not None
    for other in (make_key("model-b", [], None), make_key("model-a", [["pirate", 1.0, 2.0, "d1"]], None),
                  make_key("model-a", [], 8)):
        assert store.find(tiny_llama.model, other["kv_bits"], other, prompt, have=0) is None


def test_no_file_is_loaded_when_memory_already_holds_as_much(tiny_llama, tmp_path):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None)
    assert store.find(tiny_llama.model, None, KEY, PROMPT + NEXT, have=len(PROMPT) - 10) is None


def only_file(store) -> cache_file.Header:
    (entry,) = store.entries()
    assert entry.header is not None
    return entry.header


def rewrite_metadata(path, change) -> None:
    """Rewrite a file's metadata in place (same tensors), as another writer might have left it."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    change(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


@pytest.mark.parametrize("damage, said", [
    ("truncated", "damaged or truncated"),
    ("not-json", "damaged or truncated"),
    ("other-version", "another version of macllm"),
    ("foreign-key", "made for another model"),
    ("wrong-shape", "tensor layer0.0"),
    ("wrong-layer-count", "layers, the model"),
    ("tokens-out-of-vocab", "tokens are not this model's"),
    ("not-ours", "not a macllm prompt-cache file"),
])
def test_an_untrustworthy_file_is_ignored_with_one_line(damage, said, tiny_llama, tmp_path, capsys):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None)
    path = only_file(store).path
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "not-json":
        raw = path.read_bytes()
        path.write_bytes(raw[:8] + b"\xff" * 20 + raw[28:])
    elif damage == "other-version":
        rewrite_metadata(path, lambda h: h["__metadata__"].update(version="0"))
    elif damage == "foreign-key":
        rewrite_metadata(path, lambda h: h["__metadata__"].update(key=json.dumps(make_key("model-b", [], None))))
    elif damage == "wrong-shape":
        def narrower(h):
            entry = h["layer0.0"]
            entry["shape"][3] //= 2
            entry["data_offsets"][1] -= (entry["data_offsets"][1] - entry["data_offsets"][0]) // 2
        rewrite_metadata(path, narrower)
    elif damage == "wrong-layer-count":
        rewrite_metadata(path, lambda h: h["__metadata__"].update(
            layers=json.dumps(json.loads(h["__metadata__"]["layers"])[:1])))
    elif damage == "tokens-out-of-vocab":
        rewrite_metadata(path, lambda h: h["__metadata__"].update(
            tokens=h["__metadata__"]["tokens"] + ",999999"))
    elif damage == "not-ours":
        rewrite_metadata(path, lambda h: h["__metadata__"].update(format="something-else"))
    capsys.readouterr()
    for _ in range(2):  # said once, not at every lookup
        assert store.find(tiny_llama.model, None, KEY, PROMPT + NEXT, have=0) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and said in lines[0] and path.name in lines[0], lines


def test_the_cap_evicts_the_least_recently_used_file(tiny_llama, tmp_path):
    store = store_at(tmp_path)
    prompts = [[p] + PROMPT[1:] for p in (20, 21, 22)]  # three different openings: three files
    for prompt in prompts:
        read_then_save(store, tiny_llama.model, None, prompt=prompt)
    sizes = [e.size for e in store.entries()]
    assert len(sizes) == 3
    oldest = {e.header.tokens[0]: e.path for e in store.entries()}
    import os
    for age, first in ((300, 20), (200, 21), (100, 22)):  # made in this order, minutes apart
        stamp = os.stat(oldest[first]).st_mtime - age
        os.utime(oldest[first], (stamp, stamp))
    assert store.find(tiny_llama.model, None, KEY, prompts[0] + NEXT, have=0) is not None  # 20 used again
    store.limit_bytes = sum(sizes) + sizes[0] // 2  # room for three and a half files
    read_then_save(store, tiny_llama.model, None, prompt=[23] + PROMPT[1:])
    left = sorted(e.header.tokens[0] for e in store.entries())
    assert left == [20, 22, 23]  # 21 was the least recently used
    assert sum(e.size for e in store.entries()) <= store.limit_bytes


def test_a_longer_file_replaces_the_ones_it_extends(tiny_llama, tmp_path):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None, prompt=PROMPT[:200])
    read_then_save(store, tiny_llama.model, None, prompt=PROMPT)
    assert [len(e.header.tokens) for e in store.entries()] == [len(PROMPT)]


def test_a_full_disk_leaves_no_file_and_says_so_once(tiny_llama, tmp_path, monkeypatch, capsys):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None, prompt=PROMPT[:200])
    before = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}

    def full_disk(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)  # a part was written before the disk filled
        raise RuntimeError("[write] Unable to write 395996 bytes to file.")  # what MLX raises

    monkeypatch.setattr(mx, "save_safetensors", full_disk)
    capsys.readouterr()
    cache = make_cache(tiny_llama.model)
    steps.prefill(tiny_llama.model, PROMPT, cache)
    assert store.save(KEY, "tiny", PROMPT, cache) is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "could not save the prompt cache" in err[0]
    after = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
    assert after == before  # the earlier file intact, no temporary left


def test_an_off_cache_reads_and_writes_nothing(tiny_llama, tmp_path):
    store = store_at(tmp_path, limit_bytes=0)
    cache = make_cache(tiny_llama.model)
    steps.prefill(tiny_llama.model, PROMPT, cache)
    assert store.save(KEY, "tiny", PROMPT, cache) is None
    assert not (tmp_path / "cache").exists()


def test_files_are_private(tiny_llama, tmp_path):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None)
    import stat
    assert stat.S_IMODE(only_file(store).path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


KILLED_WRITER = """
import os, signal, sys
import macllm
import mlx.core as mx
from macllm.cache import make_cache
from macllm.generation import steps
from macllm.loader import load_model
from macllm.models.mlx_lm_family import MlxLmLayerCache
from macllm.prompt_cache import PromptCache
from macllm.prompt_cache.key import make_key

model = load_model(sys.argv[1], progress=False).model
store = PromptCache(limit_bytes=2**30, folder=__import__("pathlib").Path(sys.argv[2]), min_tokens=16)
cache = make_cache(model)
prompt = [int(t) for t in sys.argv[3].split(",")]
steps.prefill(model, prompt, cache)
real_save = mx.save_safetensors

def killed_while_writing(path, arrays, metadata=None):
    real_save(path, arrays, metadata=metadata)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)  # half the bytes reached the disk
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[4] == "mid-write":
    mx.save_safetensors = killed_while_writing
else:  # just before the rename
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
store.save(make_key("model-a", [], None), "tiny", prompt, cache)
"""


@pytest.mark.parametrize("when", ["mid-write", "before-rename"])
def test_a_writer_killed_part_way_leaves_the_earlier_file_and_no_readable_half(when, tiny_llama_folder, tmp_path,
                                                                               tiny_llama, capsys):
    import os
    import subprocess
    import sys

    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None, prompt=PROMPT[:200])
    (earlier,) = store.entries()
    longer = PROMPT + NEXT
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tiny_llama_folder), str(tmp_path / "cache"),
                           ",".join(map(str, longer)), when], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert [e.path for e in store.entries()] == [earlier.path]  # no file under a real name but the earlier one
    leftovers = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1  # the hidden temporary of the killed write
    capsys.readouterr()
    found = store.find(tiny_llama.model, None, KEY, longer + [16], have=0)
    assert found is not None and found.path == earlier.path and capsys.readouterr().err == ""
    old = leftovers[0].stat().st_mtime - 2 * 3600
    os.utime(leftovers[0], (old, old))
    store.evict()  # a temporary older than an hour is a killed writer's: removed
    assert not leftovers[0].exists()


def test_a_model_with_recurrent_layers_is_not_saved_and_says_so_once(tmp_path, capsys):
    lfm2 = load_model(str(save_mlx_lm_folder("lfm2", tmp_path / "lfm2")), progress=False)
    store = store_at(tmp_path)
    cache = make_cache(lfm2.model)
    steps.prefill(lfm2.model, PROMPT, cache)
    capsys.readouterr()
    for _ in range(2):
        assert store.save(KEY, "lfm2", PROMPT, cache) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "ArraysCache layers cannot be saved" in lines[0], lines
    assert not (tmp_path / "cache").exists()


def test_a_damaged_longer_file_leaves_the_next_longest_in_use(tiny_llama, tmp_path, capsys):
    store = store_at(tmp_path)
    read_then_save(store, tiny_llama.model, None, prompt=PROMPT[:200] + [30] * 50)  # shares 200 tokens
    read_then_save(store, tiny_llama.model, None, prompt=PROMPT)  # shares all 300
    longest = max(store.entries(), key=lambda e: len(e.header.tokens)).path
    # Layers that do not fit the model: found by the header, refused when checked against the model.
    rewrite_metadata(longest, lambda h: h["__metadata__"].update(
        layers=json.dumps(json.loads(h["__metadata__"]["layers"])[:1])))
    found = store.find(tiny_llama.model, None, KEY, PROMPT + NEXT, have=0)
    assert found is not None and found.tokens == PROMPT[:200]
    assert "layers, the model" in capsys.readouterr().err


def test_a_ring_buffer_whose_write_position_does_not_fit_is_ignored(olmo2, tmp_path, monkeypatch, capsys):
    model = olmo2.model
    monkeypatch.setattr(model, "make_cache", lambda kv_bits=None: [
        MlxLmLayerCache(mlx_lm_cache.RotatingKVCache(max_size=64)) for _ in range(model.num_layers)])
    store = store_at(tmp_path)
    read_then_save(store, model, None)
    path = only_file(store).path

    def past_the_buffer(h):
        metas = json.loads(h["__metadata__"]["layers"])
        metas[0]["idx"] = 10_000
        h["__metadata__"]["layers"] = json.dumps(metas)

    rewrite_metadata(path, past_the_buffer)
    capsys.readouterr()
    assert store.find(model, None, KEY, PROMPT + NEXT, have=0) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "ring buffer does not fit" in lines[0], lines
