"""How sure a demo finding is: 95 % intervals for a difference of two methods' R@1, and the verdict they give.

Two intervals, for two sources of noise:

- `paired_bootstrap` (queries): both methods ran on the same queries, so the
  unit is the query's hit difference. Hits are averaged over seeds first (the
  seeds share the benchmark, so query i is the same query in every seed), then
  the queries are resampled: a percentile interval of the mean difference
  (scipy.stats.bootstrap). It treats the trained models as fixed, so it suits
  differences between methods on the same models (Slerp against image only).
- `seed_interval` (training): one paired difference per seed, each seed with
  its own training, and a Student t interval over those (df = seeds - 1,
  scipy.stats.ttest_1samp). A rerun on another machine is another draw of
  training noise (floating point sends training down another path), and the
  spread over seeds measures exactly that, query noise included (each seed's
  difference carries its own). It covers the stages that vary by seed: the
  demo pretrains once and tunes per seed, so its intervals carry TAT's training
  noise, not the pretraining's. With few seeds the t quantile is large (4.30 at
  3 seeds), so the interval is honest rather than tight. A bootstrap over
  queries within seeds would miss training noise, which is what made the
  single-seed findings flip between machines.

A difference between methods on the same models still moves with training
(Slerp against sum was +0.20 on one set of seeds and +0.75 on another, each
far outside the other's query interval), so where there are seeds it is
judged by both intervals: `verdict` holds (or reverses) only if each does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 10_000
HELD, REVERSED, NOISE = "held", "reversed", "within noise"


@dataclass(frozen=True)
class Interval:
    """A difference (paper's claim minus its alternative, in the values' unit) and its 95 % interval.

    `spread`: the standard deviation over seeds (seed_interval; 0 for one seed), None for the bootstrap.
    """

    estimate: float
    low: float
    high: float
    method: str
    n: int
    spread: float | None = None

    def verdict(self) -> str:
        """'held' if the interval excludes zero on the claim's side, 'reversed' on the other, else 'within noise'."""
        if self.low > 0:
            return HELD
        if self.high < 0:
            return REVERSED
        return NOISE

    def text(self, digits: int = 2) -> str:
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_bootstrap(hits: np.ndarray, other: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> Interval:
    """Percentile interval of mean(hits - other) in percentage points, resampling queries.

    `hits`, `other`: 0/1 per query, shape (Q,) for one model or (seeds, Q) for the same queries in every seed.
    """
    hits, other = np.atleast_2d(np.asarray(hits, dtype=np.float64)), np.atleast_2d(np.asarray(other, dtype=np.float64))
    if hits.shape != other.shape:
        raise ValueError(f"paired hits must have one shape, got {hits.shape} and {other.shape}")
    if hits.shape[1] < 2:
        raise ValueError(f"a bootstrap over queries needs at least 2 queries, got {hits.shape[1]}")
    per_query = 100.0 * (hits - other).mean(axis=0)
    if np.all(per_query == per_query[0]):  # no spread to resample: the interval is the point
        value = float(per_query[0])
        return Interval(value, value, value, "paired bootstrap over queries", per_query.size)
    result = stats.bootstrap((per_query,), np.mean, n_resamples=resamples, confidence_level=LEVEL,
                             method="percentile", rng=np.random.default_rng(seed), batch=1000)
    low, high = result.confidence_interval
    return Interval(float(per_query.mean()), float(low), float(high), "paired bootstrap over queries", per_query.size)


def seed_interval(differences: np.ndarray) -> Interval:
    """Student t interval of the mean of per-seed paired differences (needs 2 seeds or more)."""
    differences = np.asarray(differences, dtype=np.float64).ravel()
    if differences.size < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds, got {differences.size}")
    spread = float(differences.std(ddof=1))
    mean = float(differences.mean())
    if spread == 0.0:
        return Interval(mean, mean, mean, "t interval over seeds", differences.size, 0.0)
    low, high = stats.ttest_1samp(differences, 0.0).confidence_interval(LEVEL)
    return Interval(mean, float(low), float(high), "t interval over seeds", differences.size, spread)


def mean_spread(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1; 0 for one value) of per-seed values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def verdict(intervals: Sequence[Interval]) -> str:
    """One comparison judged by all its intervals: held (reversed) only if every one excludes zero on that side."""
    if not intervals:
        raise ValueError("a verdict needs at least one interval")
    verdicts = {interval.verdict() for interval in intervals}
    return verdicts.pop() if len(verdicts) == 1 else NOISE
