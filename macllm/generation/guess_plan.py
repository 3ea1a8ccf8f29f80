"""How many tokens speculative decoding guesses next round (speculative.py), from two things it measures as the
answer goes: how often guesses of each kind are kept, and what a guess costs the round in wall time.

A round with k guesses yields E(k) = (1 - a^(k+1)) / (1 - a) tokens when each guess is kept with probability a,
and costs 1 + k * step plain decode steps; the plan takes the k with the most tokens per unit of time, and none
(a plain step) when no k beats a plain step by MIN_GAIN. The cost of a guess is measured, not assumed: on a
CPU the check of k+1 positions costs anywhere from a twentieth of a step per guess (float32, bound by reading the
weights) to a third (the quantized kernel, bound by arithmetic), and the machine's load moves it further. So
the first two rounds, and one in RETIME_EVERY after them, go without guesses to time a plain step.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_K = 10
# Prior of what one more position costs the model's check, in decode steps, until rounds with and without
# guesses have both been timed. Measured on the 2-core CPU with the quantized kernel (SmolLM2-135M and
# Qwen2.5-Coder-0.5B at ~1,500 tokens of context): 2 positions ~1.3 steps, 5 ~2.2, 9 ~3.5.
CHECK_COST_PER_GUESS = 0.3
PRIOR_GUESSES = 2.0  # how many measured guesses weigh as much as the prior cost
FADE = 0.85  # older rounds count less: the load on the machine changes as the answer goes
MIN_GAIN = 1.05  # guess only where the expected speed beats a plain step by this much (timings are noisy)
PROBE_EVERY = 8  # a kind of guess turned off is still tried (one token) every this many chances, to notice a change
RETIME_EVERY = 32  # rounds with guesses between two plain ones, which keep the plain step's time current


class RoundCost:
    """Wall time of speculative rounds, by how many guesses they checked -> what one guess costs, in plain steps.
    Wall time, not CPU time: a plain step overlaps building the next graph with the model's compute and a round
    with guesses waits for its verdict, which CPU time does not see (measured: lookup's CPU time 1.15x better
    than plain while its wall time was 0.71x)."""

    def __init__(self, prior_step: float):
        self.prior_step = prior_step
        self.plain_s: float | None = None  # faded mean seconds of a round without guesses
        self._guesses = self._seconds = self._rounds = 0.0  # faded sums over rounds with guesses
        self._since_plain = 0
        self._warm = False  # the first round after the prefill carries one-time costs: not timed

    def due(self) -> bool:
        """Whether the next round should go without guesses, to time a plain step (the first two rounds, then
        now and then when every round guessed)."""
        return self.plain_s is None or self._since_plain >= RETIME_EVERY

    def observe(self, guesses: int, seconds: float) -> None:
        if not self._warm:
            self._warm = True
            return
        if guesses == 0:
            self.plain_s = seconds if self.plain_s is None else FADE * self.plain_s + (1 - FADE) * seconds
            self._since_plain = 0
            return
        self._since_plain += 1
        self._guesses = FADE * self._guesses + guesses
        self._seconds = FADE * self._seconds + seconds
        self._rounds = FADE * self._rounds + 1

    @property
    def step(self) -> float:
        """One guess's cost in plain steps: the measured one once both kinds of round were timed, leaning on the
        prior while few guesses were timed."""
        if self.plain_s is None or self._guesses == 0:
            return self.prior_step
        measured = (self._seconds - self._rounds * self.plain_s) / self._guesses / self.plain_s
        blended = (self.prior_step * PRIOR_GUESSES + measured * self._guesses) / (PRIOR_GUESSES + self._guesses)
        return max(blended, 0.0)


@dataclass
class _Kept:
    kept: float
    missed: float
    skipped: int = 0  # chances passed up since the last probe

    @property
    def rate(self) -> float:
        return self.kept / (self.kept + self.missed)


class AdaptiveK:
    """The number of guesses for the next round, per kind of guess (prompt lookup: how long the match behind the
    guess is; a draft: one kind). Acceptance a is estimated per kind from its recent rounds (kept guesses, and the
    first rejected one), older rounds fading. A caller's fixed k wins. `least` is the fewest guesses it plans:
    a draft model always guesses (1), prompt lookup may not (0)."""

    def __init__(self, fixed: int = 0, guess_cost: float = 0.0, max_k: int = MAX_K, least: int = 1,
                 priors: dict[int, float] | None = None):
        self.fixed = fixed
        self.max_k = max_k
        self.least = least
        self.cost = RoundCost(guess_cost + CHECK_COST_PER_GUESS)
        # A prior per kind worth two guesses (a = 0.6 unless the proposer knows better).
        self._kinds = {kind: _Kept(2 * a, 2 * (1 - a)) for kind, a in (priors or {0: 0.6}).items()}

    def acceptance(self, kind: int = 0) -> float:
        return self._stats(kind).rate

    def _stats(self, kind: int) -> _Kept:
        if kind not in self._kinds:
            self._kinds[kind] = _Kept(1.2, 0.8)
        return self._kinds[kind]

    @property
    def value(self) -> int:
        return self.k(0)

    def best(self, kind: int = 0) -> int:
        """The k with the most expected tokens per unit of time (0: a plain step beats every k)."""
        a = min(self.acceptance(kind), 0.999)
        step = self.cost.step

        def rate(k: int) -> float:
            return (1 - a ** (k + 1)) / (1 - a) / (1 + k * step)

        k = max(range(1, self.max_k + 1), key=rate)
        return k if rate(k) >= MIN_GAIN or self.least > 0 else 0

    def k(self, kind: int = 0) -> int:
        """How many to guess now for a guess of this kind (a plan that says none probes now and then)."""
        if self.fixed:
            return self.fixed
        if self.cost.due():
            return 0
        k = max(self.best(kind), self.least)
        if k > 0:
            return k
        stats = self._stats(kind)
        stats.skipped += 1
        if stats.skipped < PROBE_EVERY:
            return 0
        stats.skipped = 0
        return 1

    def update(self, proposed: int, accepted: int, kind: int = 0) -> None:
        if self.fixed or proposed == 0:
            return
        stats = self._stats(kind)
        stats.kept = FADE * stats.kept + accepted
        stats.missed = FADE * stats.missed + (1 if accepted < proposed else 0)

    def observe(self, guesses: int, seconds: float) -> None:
        """A round's wall time, from building its graph to knowing its verdict."""
        self.cost.observe(guesses, seconds)
