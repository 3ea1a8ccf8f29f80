"""Speculative decoding on tiny random models: greedy output identical to plain decoding (the model as its own
draft: every guess kept; a perturbed copy: some kept; prompt lookup), the sampled output distributed exactly as
the model's (the accept/reject rule on a small vocabulary, and end to end), caches trimmed to what was kept."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from scipy.stats import chisquare

from macllm.cache import cache_length, make_cache
from macllm.generation import GenerationParams, generate, guess_plan
from macllm.generation import speculative as spec
from macllm.generation.prompt_lookup import PromptLookup
from macllm.generation.steps import Step, prefill
from macllm.loader import load_model
from tests.tiny_models import perturbed

LIVELY = (0.3, 7)


@pytest.fixture(scope="module")
def target(tiny_llama_gguf):
    return perturbed(tiny_llama_gguf, LIVELY)


@pytest.fixture(scope="module")
def self_draft(tiny_llama_gguf):
    return perturbed(tiny_llama_gguf, LIVELY)


@pytest.fixture(scope="module")
def noisy_draft(tiny_llama_gguf):
    return perturbed(tiny_llama_gguf, LIVELY, (0.02, 1))


PROMPTS = ["hello world user", "assistant hello hello world", "the world is a user of hello"]


def draft_of(lm) -> spec.DraftModel:
    return spec.DraftModel(lm.model, lm.tokenizer)


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_with_a_draft_is_plain_greedy(target, self_draft, noisy_draft, text):
    ids = target.tokenizer.encode(text)
    plain = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=40))
    same = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=40), draft=draft_of(self_draft))
    assert same.token_ids == plain.token_ids and same.text == plain.text
    s = same.stats
    assert s.draft_proposed > 0 and s.draft_accepted == s.draft_proposed  # its own draft: every guess kept
    noisy = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=40),
                     draft=draft_of(noisy_draft))
    assert noisy.token_ids == plain.token_ids
    assert 0 < noisy.stats.draft_accepted < noisy.stats.draft_proposed
    assert len(set(plain.token_ids)) > 10  # a lively model: the check is not about one repeated token


@pytest.mark.parametrize("fixed_k", [0, 1, 3, 8])
def test_greedy_with_prompt_lookup_is_plain_greedy(target, fixed_k):
    ids = target.tokenizer.encode("hello world user hello world user hello world")
    plain = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=60))
    looked = generate(target.model, target.tokenizer, ids,
                      GenerationParams(max_tokens=60, prompt_lookup=True, draft_tokens=fixed_k))
    assert looked.token_ids == plain.token_ids
    assert looked.stats.draft_proposed > 0  # random models repeat themselves: there is something to copy


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 9])
def test_limits_and_the_cache_match_plain_decoding(target, self_draft, max_tokens):
    ids = target.tokenizer.encode("hello world user")
    plain = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=max_tokens))
    cache = make_cache(target.model)
    fast = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=max_tokens), cache=cache,
                    draft=draft_of(self_draft))
    assert fast.token_ids == plain.token_ids and len(fast.token_ids) == max_tokens
    assert cache_length(cache) == len(fast.fed_tokens)
    # The cache holds exactly the fed tokens: continuing from it equals a fresh run over them.
    follow = generate(target.model, target.tokenizer, fast.fed_tokens + [5], GenerationParams(max_tokens=6),
                      cache=cache, cached=fast.fed_tokens)
    fresh = generate(target.model, target.tokenizer, fast.fed_tokens + [5], GenerationParams(max_tokens=6))
    assert follow.token_ids == fresh.token_ids


def test_repetition_penalty_and_alternatives_follow_plain_decoding(target, noisy_draft):
    ids = target.tokenizer.encode("hello world user hello")
    params = dict(max_tokens=30, repetition_penalty=1.3, repetition_window=8, top_alternatives=3)
    plain = list(_events(target, ids, GenerationParams(**params)))
    fast = list(_events(target, ids, GenerationParams(**params), draft=draft_of(noisy_draft)))
    assert [e.token_id for e in fast] == [e.token_id for e in plain]
    for a, b in zip(fast, plain, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [i for i, _ in a.alternatives] == [i for i, _ in b.alternatives]
    assert any(e.drafted for e in fast) and not any(e.drafted for e in plain)


def _events(lm, ids, params, **kw):
    from macllm.generation import TokenEvent, stream_generate

    for event in stream_generate(lm.model, lm.tokenizer, ids, params, **kw):
        if isinstance(event, TokenEvent):
            yield event


class Capped(spec.AdaptiveK):
    """A plan that always asks for `cap` guesses: adaptive (a draft may end its round early), or fixed as
    --draft-tokens fixes it."""

    def __init__(self, cap: int, fixed: bool = False):
        super().__init__(fixed=cap if fixed else 0)
        self.cap = cap

    def k(self, kind: int = 0) -> int:
        return self.cap


def test_a_draft_ends_its_round_after_a_guess_it_is_unsure_of(target, noisy_draft):
    ids = target.tokenizer.encode("the world is a user of hello")
    params = GenerationParams(max_tokens=8)
    width = target.model(mx.array([ids[:1]]))[0].shape[-1]
    # The draft's own greedy guesses and its probability of each, decoding alone.
    cache = make_cache(noisy_draft.model)
    logits = prefill(noisy_draft.model, ids, cache)[0]
    sure = []
    for _ in range(6):
        probs = mx.softmax(logits.astype(mx.float32))
        token = int(mx.argmax(probs).item())
        sure.append(float(probs[token].item()))
        logits = noisy_draft.model(mx.array([[token]]), cache=cache)[0, -1]
    # The first guess after the first one that the draft is less sure of than of every guess before it.
    unsure = next(i for i in range(1, 5) if sure[i] < min(sure[:i]))
    threshold = (sure[unsure] + min(sure[:unsure])) / 2

    def guesses(confidence: float, fixed: bool) -> int:
        draft = spec.DraftModel(noisy_draft.model, noisy_draft.tokenizer, confidence=confidence)
        draft.start(ids[:-1], params, width)
        proposal = draft.propose(ids, Capped(6, fixed), room=10)
        assert proposal is not None
        return proposal.size

    assert guesses(0.0, fixed=False) == 6
    assert guesses(threshold, fixed=False) == unsure + 1  # the unsure guess is still made, then the round ends
    assert guesses(1.01, fixed=False) == 1  # a draft always guesses at least one
    assert guesses(1.01, fixed=True) == 6  # --draft-tokens is exact


def test_a_draft_cache_is_reused_across_turns(target, self_draft):
    draft = draft_of(self_draft)
    ids = target.tokenizer.encode("hello world user")
    first = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=10), draft=draft)
    assert cache_length(draft.cache) == len(draft.cached) > len(ids)
    longer = first.fed_tokens + target.tokenizer.encode(" world")
    again = generate(target.model, target.tokenizer, longer, GenerationParams(max_tokens=10), draft=draft)
    plain = generate(target.model, target.tokenizer, longer, GenerationParams(max_tokens=10))
    assert again.token_ids == plain.token_ids


def test_sliding_window_and_quantized_caches_trim_rejected_guesses(tiny_llama_gguf, noisy_draft, target):
    ids = target.tokenizer.encode("hello world user " * 30)  # past the quantized cache's 256-token threshold
    for bits in (8, 4):
        cache = make_cache(target.model, bits)
        plain = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=30),
                         cache=make_cache(target.model, bits))
        fast = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=30), cache=cache,
                        draft=spec.DraftModel(noisy_draft.model, noisy_draft.tokenizer, kv_bits=bits))
        assert fast.token_ids == plain.token_ids
        assert cache_length(cache) == len(fast.fed_tokens)


# --- the accept/reject rule, on a five-token vocabulary --------------------------------------------------------

def _rule_draws(p_logits: np.ndarray, q: np.ndarray | None, guesses: list[list[int]], seed: int) -> list[list[int]]:
    """Run `judge`/`resolve` once per guess list; return the emitted tokens of each round."""
    keys = spec._Keys(seed)
    params = GenerationParams(temperature=1.0)
    logits = mx.array(p_logits)
    out = []
    for g in guesses:
        proposal = spec.Proposal(mx.array(g, dtype=mx.int32), None if q is None else mx.array(q))
        out.append(spec.resolve(spec.judge(logits, proposal, [0], params, keys), len(g)).tokens)
    return out


def _expected(probs: np.ndarray, n: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum() * n


def test_accept_reject_emits_exactly_the_models_distribution():
    rng = np.random.default_rng(0)
    vocab, n = 5, 1500
    p_logits = rng.standard_normal((3, vocab)).astype(np.float32) * 1.5
    p = np.exp(p_logits) / np.exp(p_logits).sum(-1, keepdims=True)
    q = rng.dirichlet(np.ones(vocab), size=2).astype(np.float32)  # a draft that is rather wrong
    guesses = [[int(rng.choice(vocab, p=q[0])), int(rng.choice(vocab, p=q[1]))] for _ in range(n)]
    rounds = _rule_draws(p_logits, q, guesses, seed=1)
    first = np.bincount([r[0] for r in rounds], minlength=vocab)
    assert chisquare(first, _expected(p[0], n)).pvalue > 1e-3
    # The token after a kept first guess comes from p at position 1, whatever was guessed there.
    second = np.bincount([r[1] for r in rounds if len(r) > 1], minlength=vocab)
    assert chisquare(second, _expected(p[1], second.sum())).pvalue > 1e-3
    # A wrong draft is rejected about as often as the rule says: 1 - sum(min(p, q)).
    rejected = np.mean([len(r) == 1 for r in rounds])
    assert rejected == pytest.approx(1 - np.minimum(p[0], q[0]).sum(), abs=0.05)  # ~4 standard errors at n = 1500


def test_certain_guesses_emit_exactly_the_models_distribution():
    rng = np.random.default_rng(2)
    vocab, n = 5, 1500
    p_logits = rng.standard_normal((2, vocab)).astype(np.float32)
    p = np.exp(p_logits) / np.exp(p_logits).sum(-1, keepdims=True)
    rounds = _rule_draws(p_logits, None, [[3]] * n, seed=3)  # prompt lookup always guesses token 3
    first = np.bincount([r[0] for r in rounds], minlength=vocab)
    assert chisquare(first, _expected(p[0], n)).pvalue > 1e-3


class DraftCappedAtTwo(spec.DraftModel):
    def plan(self, model, fixed: int) -> spec.AdaptiveK:
        return Capped(2)


@pytest.mark.parametrize("unsure_below", [None, 0.5])
def test_sampling_with_a_draft_matches_the_models_joint_distribution(target, noisy_draft, unsure_below):
    """Two tokens after a fixed context, many times: their joint frequencies against the model's own
    probabilities (top-k 3 at temperature 1.2 keeps nine pairs). With `unsure_below`, the draft ends a round
    early after a guess it gave less than that: the rounds' lengths then depend on the draft's draws."""
    params = GenerationParams(temperature=1.2, top_k=3, draft_tokens=2 if unsure_below is None else 0, seed=11)
    ids = target.tokenizer.encode("hello world user")
    cache = make_cache(target.model)
    mx.eval(prefill(target.model, ids[:-1], cache))
    base = cache_length(cache)
    draft = (draft_of(noisy_draft) if unsure_below is None
             else DraftCappedAtTwo(noisy_draft.model, noisy_draft.tokenizer, confidence=unsure_below))
    draft.start(ids[:-1], params, width=target.model(mx.array([ids[:1]]))[0].shape[-1])

    def top3(context):
        logits = target.model(mx.array([context]))[0, -1] / 1.2
        order = np.argsort(-np.array(logits))[:3]
        probs = np.exp(np.array(logits)[order] - np.array(logits)[order].max())
        return order.tolist(), probs / probs.sum()

    firsts, p1 = top3(ids)
    expected = {}
    for a, pa in zip(firsts, p1, strict=True):
        seconds, p2 = top3(ids + [a])
        for b, pb in zip(seconds, p2, strict=True):
            expected[(a, b)] = pa * pb
    counts: dict[tuple[int, int], int] = {}
    stats = spec.SpeculationStats()
    n = 400
    keys = spec._Keys(5)
    for _ in range(n):
        first = Step(ids[-1], 0.0, None, False)
        trial = GenerationParams(**{**params.__dict__, "seed": int(mx.random.randint(0, 2**31, key=keys.next()))})
        steps = list(spec.decode_steps(target.model, cache, first, ids[:-1], trial, draft, 3, stats))
        pair = (steps[1].token_id, steps[2].token_id)
        counts[pair] = counts.get(pair, 0) + 1
        cache_trim = cache_length(cache) - base
        for c in cache:
            c.trim(cache_trim)
    assert set(counts) <= set(expected)
    cells = sorted(expected)
    observed = [counts.get(c, 0) for c in cells]
    assert chisquare(observed, _expected(np.array([expected[c] for c in cells]), n)).pvalue > 1e-3
    assert 0 < stats.accepted < stats.proposed


def test_prompt_lookup_copies_what_followed_the_longest_tail():
    index = PromptLookup(max_ngram=3, min_ngram=2)
    index.extend([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    assert index.propose(3) == [4, 5, 9]  # "1 2 3" wins over the later "2 3" (followed by 7)
    index.extend([6, 2, 3])
    assert index.propose(2) == [6, 2]  # no earlier "6 2 3"... "2 3": its latest earlier occurrence, then 6 2
    assert PromptLookup().propose(4) == []
    lone = PromptLookup(max_ngram=2, min_ngram=2)
    lone.extend([5, 6, 7])
    assert lone.propose(4) == []


def test_prompt_lookup_says_how_far_back_its_match_reaches():
    index = PromptLookup(max_ngram=3, min_ngram=2)
    index.extend([9, 8, 1, 2, 3, 4, 5, 7, 8, 1, 2, 3])
    found = index.match(2)
    assert found is not None and found.guesses == [4, 5] and found.length == 4  # "8 1 2 3": the 3-gram and one more
    index.extend([6, 2, 3])
    short = index.match(4)
    assert short is not None and short.length == 2  # only "2 3" recurs (followed by 4 the first time)
    assert [spec.match_kind(n) for n in (2, 3, 4, 7, 8, 15, 16, 32)] == [0, 1, 2, 2, 3, 3, 4, 4]


def test_adaptive_k_grows_while_guesses_land_and_shrinks_when_they_miss():
    free = spec.AdaptiveK(guess_cost=0.0)  # prompt lookup: a guess costs only its place in the check
    assert free.value == 0  # the first rounds time a plain step (the very first one is not timed: warm-up)
    free.observe(0, 5.0)
    assert free.value == 0
    free.observe(0, 1.0)
    for _ in range(30):
        free.update(free.value, free.value)
    assert free.value >= 6  # kept nearly always: guess far even at ~0.3 of a step per guess
    for _ in range(20):
        free.update(free.value, 0)
    assert free.value == 1
    # A draft a third of the model's size whose guess adds 0.4 of a step in all, kept 75% of the time: two or
    # three pay best, not ten.
    drafted = spec.AdaptiveK(guess_cost=0.33)
    for _ in range(40):
        drafted.update(4, 3)  # 3 kept then a rejection: a = 0.75
        drafted.observe(0, 1.0)
        drafted.observe(4, 2.6)
    assert drafted.value in (2, 3)
    fixed = spec.AdaptiveK(3)
    fixed.update(3, 0)
    assert fixed.value == 3


def test_a_kind_of_guess_that_keeps_missing_stops_guessing_but_probes():
    plan = spec.AdaptiveK(least=0, priors={0: 0.3, 4: 0.8})
    plan.observe(0, 1.0)
    plan.observe(0, 1.0)
    assert plan.k(4) > 0 and plan.best(0) == 0  # a long match guesses from the start, two tokens do not
    asked = [plan.k(0) for _ in range(2 * guess_plan.PROBE_EVERY)]
    assert asked.count(1) == 2 and asked.count(0) == 2 * guess_plan.PROBE_EVERY - 2  # a probe now and then
    for _ in range(10):
        plan.update(1, 1, kind=0)  # the probes land: the short matches copy after all
    assert plan.best(0) > 0


def test_the_cost_of_a_guess_is_measured_from_round_times():
    cost = guess_plan.RoundCost(prior_step=0.3)
    assert cost.step == 0.3  # nothing timed yet
    for _ in range(30):
        cost.observe(0, 0.100)  # a plain round: 100 ms
        cost.observe(4, 0.120)  # four guesses add 20 ms: 0.05 of a step each
    assert cost.step == pytest.approx(0.05, abs=0.03)  # (the prior still weighs a little)
    for _ in range(30):
        cost.observe(0, 0.100)
        cost.observe(2, 0.200)  # the load changed: 0.5 of a step each
    assert cost.step == pytest.approx(0.5, abs=0.05)
    drafted = guess_plan.RoundCost(prior_step=0.6)
    assert drafted.due()  # the first round times a plain step
    drafted.observe(3, 0.5)  # guesses, but no plain round to compare with yet: the prior stands
    assert drafted.step == 0.6
    drafted.observe(0, 0.4)
    for _ in range(guess_plan.RETIME_EVERY - 1):
        drafted.observe(3, 0.5)
    assert not drafted.due()
    drafted.observe(3, 0.5)
    assert drafted.due()  # every round guessed for a while: time a plain one again
    # What a guess costs moves k: the same acceptance guesses fewer when a guess costs half a step.
    cheap, dear = spec.AdaptiveK(least=0), spec.AdaptiveK(least=0)
    for plan, extra in ((cheap, 0.005), (dear, 0.05)):
        for _ in range(20):
            plan.update(4, 3)
            plan.observe(0, 0.1)
            plan.observe(2, 0.1 + 2 * extra)
    assert cheap.value > dear.value > 0


def test_a_drafts_guess_costs_its_share_of_the_weights(target, tiny_llama_gguf):
    assert draft_of(target).guess_cost(target.model) == pytest.approx(1.0)
    assert spec.LookupProposer().guess_cost(target.model) == 0.0


def test_sliding_window_layers_check_guesses_exactly(tmp_path):
    """Gemma 3's local layers see 8 positions back: the check's k+1 queries get the windowed mask, and the
    draft and model caches of those layers trim what was not kept."""
    from tests import tiny_gemma3

    folder = tiny_gemma3.write_folder(tmp_path / "gemma")
    gemma = load_model(str(folder), progress=False)
    draft = perturbed(folder, (0.02, 1))
    ids = gemma.tokenizer.encode("one two three four five six seven eight nine ten eleven twelve " * 3)
    assert len(ids) > 2 * tiny_gemma3.DIMS["sliding_window"]
    plain = generate(gemma.model, gemma.tokenizer, ids, GenerationParams(max_tokens=30))
    fast = generate(gemma.model, gemma.tokenizer, ids, GenerationParams(max_tokens=30), draft=draft_of(draft))
    assert fast.token_ids == plain.token_ids
    assert 0 < fast.stats.draft_accepted < fast.stats.draft_proposed


def test_recurrent_layers_decode_plainly_with_lookup_and_refuse_a_draft(tmp_path):
    """lfm2 (mlx-lm's class) has convolution state that cannot step back: prompt lookup, on by default for notes
    answers, quietly decodes plainly; a draft is refused in one line."""
    from macllm.errors import MacllmError
    from tests.test_mlx_lm_family import save_mlx_lm_folder

    lm = load_model(str(save_mlx_lm_folder("lfm2", tmp_path / "lfm2")), progress=False)
    ids = [5, 6, 7, 5, 6, 7, 5, 6]
    plain = generate(lm.model, lm.tokenizer, ids, GenerationParams(max_tokens=12))
    looked = generate(lm.model, lm.tokenizer, ids, GenerationParams(max_tokens=12, prompt_lookup=True))
    assert looked.token_ids == plain.token_ids and looked.stats.draft_proposed == 0
    with pytest.raises(MacllmError, match="cannot step back") as refused:
        generate(lm.model, lm.tokenizer, ids, GenerationParams(max_tokens=12), draft=draft_of(lm))
    assert "\n" not in str(refused.value)


def test_the_largest_seed_reproduces_a_sampled_drafted_answer(target, noisy_draft):
    ids = target.tokenizer.encode("hello world user")
    params = GenerationParams(max_tokens=12, temperature=1.0, seed=2**64 - 1)
    a = generate(target.model, target.tokenizer, ids, params, draft=draft_of(noisy_draft))
    b = generate(target.model, target.tokenizer, ids, params, draft=draft_of(noisy_draft))
    assert a.token_ids == b.token_ids and a.stats.draft_proposed > 0


@pytest.mark.parametrize("after", [1, 2, 5, 9, 17])
def test_handing_over_between_rounds_leaves_the_cache_at_the_text(target, after):
    """The engine's batch takes a row back between two rounds: the returned token is in neither the text nor the
    cache (a round without guesses may have fed it ahead), so plain decoding goes on from it exactly."""
    ids = target.tokenizer.encode("hello world user hello world user hello world")
    plain = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=30))
    cache = make_cache(target.model)
    first = spec.Step(plain.token_ids[0], 0.0, None, False)
    prefill(target.model, ids, cache)
    rounds = spec.decode_steps(target.model, cache, first, ids, GenerationParams(prompt_lookup=True),
                               spec.LookupProposer(), 30, spec.SpeculationStats(), hand_over=lambda: len(got) >= after)
    got: list[int] = []
    while True:
        try:
            got.append(next(rounds).token_id)
        except StopIteration as done:
            handed = done.value
            break
    assert handed is not None and cache_length(cache) == len(ids) + len(got)
    rest = generate(target.model, target.tokenizer, ids + got, GenerationParams(max_tokens=30 - len(got)),
                    cache=cache, cached=ids + got)
    assert got + rest.token_ids == plain.token_ids and rest.token_ids[0] == handed.token_id
