"""The demo's intervals against plain numpy references, and the verdicts they give."""

from __future__ import annotations

import numpy as np
import pytest

from cir.demo.stats import (
    HELD,
    NOISE,
    REVERSED,
    Interval,
    mean_spread,
    paired_bootstrap,
    seed_interval,
    verdict,
)

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student t quantiles (df -> t_0.975), from tables


def numpy_bootstrap(per_query: np.ndarray, resamples: int = 10_000, seed: int = 7) -> tuple[float, float]:
    """The percentile bootstrap of the mean, written out: resample queries with replacement, take the 2.5 / 97.5 %."""
    rng = np.random.default_rng(seed)
    means = per_query[rng.integers(0, per_query.size, (resamples, per_query.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def test_paired_bootstrap_matches_numpy_on_one_model() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(600) < 0.3
    b = (a & (rng.random(600) < 0.7)) | (rng.random(600) < 0.05)  # correlated with a, as two methods on one model
    interval = paired_bootstrap(a, b, seed=3)
    low, high = numpy_bootstrap(100.0 * (a.astype(float) - b))
    assert interval.estimate == pytest.approx(100.0 * (a.mean() - b.mean()))
    assert interval.low == pytest.approx(low, abs=0.35) and interval.high == pytest.approx(high, abs=0.35)
    assert interval.n == 600 and interval.spread is None
    assert paired_bootstrap(a, b, seed=3) == interval  # seeded: the same interval every time


def test_paired_bootstrap_averages_seeds_per_query() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 500)) < 0.3, rng.random((3, 500)) < 0.2
    interval = paired_bootstrap(a, b)
    per_query = 100.0 * (a.astype(float) - b).mean(axis=0)
    low, high = numpy_bootstrap(per_query)
    assert interval.estimate == pytest.approx(per_query.mean())
    assert interval.low == pytest.approx(low, abs=0.35) and interval.high == pytest.approx(high, abs=0.35)
    assert interval.n == 500


def test_paired_bootstrap_rejects_unpaired_hits_and_handles_no_spread() -> None:
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.ones(10), np.ones(11))
    same = paired_bootstrap(np.ones(10), np.zeros(10))
    assert (same.estimate, same.low, same.high) == (100.0, 100.0, 100.0)


@pytest.mark.parametrize("seeds", [3, 5])
def test_seed_interval_is_the_t_interval(seeds: int) -> None:
    differences = np.random.default_rng(seeds).normal(0.5, 0.3, seeds)
    interval = seed_interval(differences)
    mean, sd = differences.mean(), differences.std(ddof=1)
    margin = T_975[seeds - 1] * sd / np.sqrt(seeds)
    assert (interval.estimate, interval.spread) == (pytest.approx(mean), pytest.approx(sd))
    assert interval.low == pytest.approx(mean - margin) and interval.high == pytest.approx(mean + margin)
    assert interval.n == seeds
    with pytest.raises(ValueError, match="2 seeds"):
        seed_interval(differences[:1])


@pytest.mark.parametrize("low, high, verdict", [(0.1, 2.0, HELD), (-2.0, -0.1, REVERSED), (-0.5, 1.0, NOISE),
                                                (0.0, 1.0, NOISE)])
def test_verdict_needs_the_interval_to_exclude_zero(low: float, high: float, verdict: str) -> None:
    assert Interval((low + high) / 2, low, high, "x", 3).verdict() == verdict


def test_mean_spread_of_one_seed_has_no_spread() -> None:
    assert mean_spread(np.array([4.0])) == (4.0, 0.0)
    assert mean_spread(np.array([1.0, 3.0])) == (2.0, pytest.approx(np.sqrt(2.0)))


def test_a_comparison_judged_by_two_intervals_holds_or_reverses_only_if_both_do() -> None:
    held, reversed_, noise = (Interval(1.0, 0.5, 1.5, "a", 3), Interval(-1.0, -1.5, -0.5, "b", 3),
                              Interval(0.1, -0.3, 0.5, "c", 3))
    assert verdict((held, held)) == HELD and verdict((reversed_,)) == REVERSED
    assert verdict((held, noise)) == NOISE and verdict((held, reversed_)) == NOISE
    with pytest.raises(ValueError, match="at least one"):
        verdict(())
