"""Sampling filters against plain formulas."""

import math

import mlx.core as mx
import numpy as np

from macllm.generation.sampling import Sampler, SamplingParams, apply_repetition_penalty, filter_logprobs


def logprobs_of(probs):
    return mx.log(mx.array([probs], dtype=mx.float32))


def kept(lp):
    return [i for i, v in enumerate(np.array(lp[0])) if math.isfinite(v)]


def test_top_k():
    assert kept(filter_logprobs(logprobs_of([0.1, 0.4, 0.2, 0.3]), 2, 1.0, 0.0)) == [1, 3]


def test_top_p_keeps_smallest_nucleus():
    lp = logprobs_of([0.5, 0.3, 0.15, 0.05])
    assert kept(filter_logprobs(lp, 0, 0.7, 0.0)) == [0, 1]
    assert kept(filter_logprobs(lp, 0, 0.5, 0.0)) == [0]
    assert kept(filter_logprobs(lp, 0, 0.81, 0.0)) == [0, 1, 2]


def test_min_p():
    lp = logprobs_of([0.5, 0.3, 0.15, 0.05])
    assert kept(filter_logprobs(lp, 0, 1.0, 0.2)) == [0, 1, 2]


def test_greedy_at_zero_temperature():
    token, _ = Sampler(SamplingParams(temperature=0))(mx.array([[0.1, 3.0, 0.5]]))
    assert token.item() == 1


def test_repetition_penalty():
    logits = mx.array([[2.0, -1.0, 3.0]])
    out = apply_repetition_penalty(logits, mx.array([0, 1]), 2.0)
    assert np.allclose(np.array(out), [[1.0, -2.0, 3.0]])


def test_sampling_follows_distribution():
    probs = [0.6, 0.3, 0.1]
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0))
    counts = np.zeros(3)
    for _ in range(600):
        counts[sampler(mx.log(mx.array([probs])))[0].item()] += 1
    assert np.allclose(counts / 600, probs, atol=0.07)


def test_repetition_penalty_with_repeated_ids():
    out = apply_repetition_penalty(mx.array([[2.0, -1.0, 3.0]]), mx.array([0, 0, 0]), 2.0)
    assert np.allclose(np.array(out), [[1.0, -1.0, 3.0]])
