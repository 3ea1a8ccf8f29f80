"""The CPU op that chooses the next token (csrc/sample_token.cpp, fused.choose_token) against the MLX
composition it replaces (macllm.generation.sampling's logsumexp and argmax, sample_filter.reference's
filters and draw, argpartition for the alternatives).

The op repeats MLX's CPU arithmetic in MLX's order, so the oracle is exact: the same token, the same
log-probability bits, the same alternatives, for random logits with ties, -inf entries, every filter and
their edges (top-k of 1 and of the whole vocabulary, top-p 0 and 1, min-p 1), for thousands of uniforms
per row so that draws land next to the boundaries between tokens. Then the samplers' statistics, seeds,
views, bad input, and whole generations with and without the op.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from macllm import cpu_kernels
from macllm.cpu_kernels import fused
from macllm.generation import GenerationParams, generate, sampling, stream_generate
from macllm.generation.params import TokenEvent
from macllm.generation.sampling import Sampler, SamplingParams
from macllm.kernels import sample_filter
from macllm.loader import load_model
from tests.conftest import ON_CI

if cpu_kernels.extension is None:
    if ON_CI:
        pytest.fail(f"the CPU kernels must be built on CI: {cpu_kernels.build_status}", pytrace=False)
    pytest.skip(f"CPU kernels unavailable: {cpu_kernels.build_status}", allow_module_level=True)

# Filters as (temperature, top_k, top_p, min_p): the app's defaults, each filter alone, all at once, edges.
FILTERS = [
    (0.7, 0, 0.95, 0.05), (1.0, 0, 1.0, 0.0), (0.3, 0, 1.0, 0.0), (1.5, 40, 1.0, 0.0), (1.0, 0, 0.9, 0.0),
    (0.8, 0, 1.0, 0.1), (0.8, 40, 0.9, 0.02), (1.0, 1, 1.0, 0.0), (1.0, -1, 1.0, 0.0), (1.0, 0, 0.0, 0.0),
    (1.0, 0, 1e-6, 0.0), (1.0, 0, 0.999999, 0.0), (1.0, 0, 1.0, 1.0), (2.0, 3, 0.5, 0.5),
]


def logits_of(kind: str, vocab: int, seed: int) -> mx.array:
    """(1, vocab) float32 logits: spread like a model's, rounded into many ties, or partly -inf."""
    key = mx.random.key(seed)
    x = mx.random.normal((1, vocab), key=key) * 4.0 + 3.0
    if kind == "ties":
        x = mx.round(x)
    elif kind == "masked":  # a constraint leaves a few tokens, as structured output does
        drop = mx.random.uniform(shape=x.shape, key=mx.random.split(key)[1]) < 0.9
        x = mx.where(drop & (mx.arange(vocab)[None] != vocab // 3), -mx.inf, x)
    elif kind == "one":
        x = mx.where(mx.arange(vocab)[None] == vocab // 2, x, -mx.inf)
    mx.eval(x)
    return x


def reference_logprobs(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def same_bits(a: mx.array, b: mx.array) -> bool:
    a32, b32 = np.array(a).astype(np.float32), np.array(b).astype(np.float32)
    return a32.shape == b32.shape and (a32.view(np.uint32) == b32.view(np.uint32)).all()


@pytest.mark.parametrize("kind", ["spread", "ties", "masked", "one"])
@pytest.mark.parametrize("vocab", [1, 7, 1000, 49152])
def test_greedy_token_logprob_and_alternatives_are_mlxs(kind, vocab):
    for seed in range(3):
        x = logits_of(kind, vocab, seed)
        lp = reference_logprobs(x)
        k = min(5, vocab)
        token, logprob, (ids, values) = fused.choose_token(x, None, 0.0, 0, 1.0, 0.0, k)
        want = mx.argmax(lp, axis=-1)
        assert token.dtype == want.dtype and token.item() == want.item()
        assert same_bits(logprob, lp[0, want])
        # argpartition's order (and its pick among equal values) is unspecified: compare values, and ids by value.
        top = mx.sort(lp, axis=-1)[:, ::-1][:, :k]
        assert same_bits(values, top)
        assert same_bits(mx.take_along_axis(lp, ids.astype(mx.int32), axis=-1), values)
        assert len(set(ids[0].tolist())) == k


@pytest.mark.parametrize("kind", ["spread", "ties", "masked"])
@pytest.mark.parametrize("vocab", [7, 1000, 49152])
@pytest.mark.parametrize("filters", FILTERS)
def test_sampled_tokens_are_the_references_for_many_uniforms(kind, vocab, filters):
    """One row repeated with a fine grid of uniforms: draws fall on every side of every boundary."""
    temperature, top_k, top_p, min_p = filters
    x = logits_of(kind, vocab, 11)
    rows = 2048 if vocab <= 1000 else 32  # the reference sorts every row: large vocabularies take few
    u = mx.concatenate([mx.arange(rows // 2) / (rows // 2),
                        mx.random.uniform(shape=(rows // 2,), key=mx.random.key(vocab))])
    xs = mx.broadcast_to(x, (rows, vocab))
    lp = reference_logprobs(xs)
    want = sample_filter.reference(lp, u, temperature, top_k, top_p, min_p)
    token, logprob, _ = fused.choose_token(xs, u, temperature, top_k, top_p, min_p, 0)
    assert token.dtype == want.dtype
    assert (token == want).all().item(), f"{(token != want).sum().item()} of {rows} draws differ"
    assert same_bits(logprob, mx.take_along_axis(lp, want[:, None].astype(mx.int32), axis=-1)[:, 0])


def test_rows_that_are_views_are_read_where_they_lie():
    big = logits_of("spread", 3 * 500, 4).reshape(3, 500)
    u = mx.array([0.1, 0.5, 0.9])
    for view in (big[::2], big.T.T[1:], big.reshape(3, 5, 100).transpose(0, 2, 1).reshape(3, 500)):
        plain = mx.array(np.array(view))
        for args in ((None, 0.0, 0, 1.0, 0.0, 3), (u[: view.shape[0]], 0.9, 10, 0.9, 0.01, 3)):
            a, b = fused.choose_token(view, *args), fused.choose_token(plain, *args)
            assert (a[0] == b[0]).all().item() and same_bits(a[1], b[1]) and same_bits(a[2][1], b[2][1])
    # A decode step's logits: the last position of (1, L, vocab).
    seq = logits_of("spread", 4 * 300, 5).reshape(1, 4, 300)
    token, logprob, _ = fused.choose_token(seq[:, -1, :], None, 0.0, 0, 1.0, 0.0, 0)
    assert token.item() == mx.argmax(seq[:, -1, :], axis=-1).item()


def chi_square(counts: np.ndarray, probs: list[float]) -> float:
    expected = np.array(probs) * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_the_sampler_on_the_cpu_follows_the_distribution():
    probs = [0.6, 0.3, 0.1]
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0))
    logits = mx.log(mx.array([probs]))
    assert sampling.one_node(logits)
    counts = np.zeros(3)
    for _ in range(3000):
        counts[sampler.choose(logits)[0].item()] += 1
    assert chi_square(counts, probs) < 13.8  # p = 0.001 with two degrees of freedom
    # Top-p 0.7 keeps the first two (the mass before the second is 0.6), renormalised to 2/3 and 1/3.
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=1))
    counts = np.zeros(3)
    for _ in range(3000):
        counts[sampler.choose(logits)[0].item()] += 1
    assert counts[2] == 0 and chi_square(counts[:2], [2 / 3, 1 / 3]) < 10.8  # p = 0.001, one degree


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, seed=7),
                                    SamplingParams(temperature=0.7, top_p=0.95, min_p=0.05, seed=3),
                                    SamplingParams(temperature=1.0, repetition_penalty=1.3, seed=5)])
def test_a_seed_draws_the_same_tokens_as_the_mlx_composition(params):
    logits = [logits_of("spread", 2000, s) for s in range(40)]
    recent = mx.array([1, 5, 9, 1200], dtype=mx.int32)
    ours, reference = Sampler(params), Sampler(params)
    for x in logits:
        # Each gets its own copy: the repetition penalty writes into the logits it is given.
        token, logprob, _ = ours.choose(mx.array(x), recent)
        want, lp = reference(mx.array(x), recent)
        assert token.item() == want.item()
        assert same_bits(logprob, lp[0, want])


def test_bad_input_is_refused_in_one_line():
    x = logits_of("spread", 10, 1)
    cases = [
        (lambda: fused.choose_token(x.astype(mx.float16), None, 0.0, 0, 1.0, 0.0, 0), "float32"),
        (lambda: fused.choose_token(x, None, 0.7, 0, 1.0, 0.0, 0), "uniform"),
        (lambda: fused.choose_token(x, mx.array([0.5, 0.5]), 0.7, 0, 1.0, 0.0, 0), "uniform"),
        (lambda: fused.choose_token(x, None, 0.0, 0, 1.0, 0.0, 11), "alternatives"),
        (lambda: fused.choose_token(x, None, -1.0, 0, 1.0, 0.0, 0), "temperature"),
    ]
    for call, word in cases:
        with pytest.raises(ValueError, match=word) as e:
            mx.eval(call())
        assert "\n" not in str(e.value) and "macllm choose_token" in str(e.value)


@pytest.mark.parametrize("params", [
    GenerationParams(max_tokens=16, temperature=0.0, top_alternatives=5),
    GenerationParams(max_tokens=16, temperature=0.7, top_p=0.95, min_p=0.05, top_alternatives=5, seed=4),
    GenerationParams(max_tokens=16, temperature=1.2, top_k=8, repetition_penalty=1.2, seed=9),
])
def test_a_model_generates_the_same_with_and_without_the_op(tiny_llama_gguf, monkeypatch, params):
    lm = load_model(str(tiny_llama_gguf), progress=False)
    prompt = list(range(3, 40))
    tokenizer_eos = lm.tokenizer.eos_token_ids
    lm.tokenizer.eos_token_ids = set()  # the whole answer every time: an early end would compare less

    def events():
        out = stream_generate(lm.model, lm.tokenizer, prompt, params)
        return [(e.token_id, e.logprob, sorted(e.alternatives or [])) for e in out if isinstance(e, TokenEvent)]

    with_op = events()
    monkeypatch.setattr(sampling, "one_node", lambda logits: False)
    without = events()
    lm.tokenizer.eos_token_ids = tokenizer_eos
    assert len(with_op) == 16 and with_op == without
    assert generate(lm.model, lm.tokenizer, prompt, params).token_ids  # and the plain path still runs



def test_greedy_choices_per_row_are_the_mlx_compositions(monkeypatch):
    """Speculative decoding's greedy verification: every row's choice, logprob and alternatives at once."""
    x = mx.concatenate([logits_of(kind, 3000, seed) for seed, kind in enumerate(["spread", "ties", "masked"] * 3)])
    ours = sampling.greedy_choices(x, 4)
    monkeypatch.setattr(sampling, "one_node", lambda logits: False)
    reference = sampling.greedy_choices(x, 4)
    assert (ours[0] == reference[0]).all().item() and same_bits(ours[1], reference[1])
    assert same_bits(ours[2][1], reference[2][1])


@pytest.mark.parametrize("filters", [(0.0, 0, 1.0, 0.0), *FILTERS, (1.0, 300, 0.9, 0.0)])
def test_nan_logits_give_a_token_in_range_without_crashing(filters):
    """A broken model's NaNs: no promise of MLX's token, but never a crash or an id outside the vocabulary."""
    x = mx.where(mx.arange(1000)[None] % 3 == 0, mx.nan, logits_of("spread", 1000, 2))
    for u in (0.0, 0.5, 0.999):
        token, _, (ids, _) = fused.choose_token(x, mx.array([u]), *filters, 5)
        assert 0 <= token.item() < 1000 and all(0 <= i < 1000 for i in ids[0].tolist())


def test_smollm2_generates_the_same_with_and_without_the_op(smollm_gguf, monkeypatch):
    """The real 49k vocabulary, greedy with the inspector's alternatives and the app's sampling."""
    lm = load_model(str(smollm_gguf), progress=False)
    prompt = lm.tokenizer.encode("The harbour town woke slowly. Fishing boats came in with the tide,")
    settings = [GenerationParams(max_tokens=24, top_alternatives=5),
                GenerationParams(max_tokens=24, temperature=0.7, top_p=0.95, min_p=0.05, top_alternatives=5, seed=2)]

    def events(params):
        out = stream_generate(lm.model, lm.tokenizer, prompt, params)
        return [(e.token_id, e.logprob, e.alternatives) for e in out if isinstance(e, TokenEvent)]

    with_op = [events(params) for params in settings]
    assert sampling.one_node(mx.zeros((1, 8)))
    monkeypatch.setattr(sampling, "one_node", lambda logits: False)
    without = [events(params) for params in settings]
    assert with_op == without and all(len(run) > 1 for run in with_op)
