"""Confidence intervals for the numbers a benchmark reports, and verdicts on targets drawn from them (pure: no I/O).

Every figure the load test reports is an estimate from a finite run; a p99 from 1,000 batches rests on the ~10
slowest of them. This module gives each figure a 95 % interval and decides a target from the interval, never from
the point estimate:

- **percentile** (p50, p99, p99.9 of latency): the distribution-free *order-statistic interval*
  (:func:`quantile_interval`). With n independent draws and their order statistics X(1) <= ... <= X(n), the
  number B of draws below the true q-quantile xi_q is Binomial(n, q) (for a continuous distribution), so
  X(l) <= xi_q  <=>  B >= l  and  xi_q <= X(u)  <=>  B <= u - 1, hence

      P(X(l) <= xi_q <= X(u)) = P(l <= B <= u - 1) = F(u - 1) - F(l - 1),   F = the Binomial(n, q) CDF.

  We take l = the largest rank with F(l - 1) <= alpha / 2 and u = the smallest rank with 1 - F(u - 1) <= alpha / 2
  (equal tails), so the coverage is at least 1 - alpha whatever the latency distribution; no resampling, no
  normal approximation. For n = 1000, q = 0.99 the 95 % ranks are l = 983 and u = 997 (:func:`quantile_ranks`): the
  p99 of 1,000 batches lies between the 983-rd and the 997-th smallest latency (exact coverage 97.6 %; the
  ranks are integers, so the coverage is at least, not exactly, 95 %). When u > n the interval has no
  upper end (too few batches to bound that percentile: a p99.9 needs about 4,000); when l < 1 no lower end.
  A batch that was never answered counts as +inf (it is above every latency), so an interval end that reaches
  into those batches is +inf ("never").
- **proportion** (a share of batches or of inputs, e.g. the late share, an accuracy): the Wilson score interval
  (:func:`wilson_interval`): it stays inside [0, 1], is good at shares near 0 or 1 where the normal (Wald)
  interval collapses, and needs no resampling.
- **RelAcc** (served accuracy / the local model's accuracy on the same inputs) is a *ratio of two correlated
  counts* over inputs that are decoded together per batch, not a single proportion, so Wilson does not apply:
  its interval is a percentile bootstrap over **batches** (:func:`ratio_of_sums_interval`; the batch is the
  independent unit: a coded batch's K inputs share the same answer set and decode errors).
- **mean** (e.g. CPU or latency means): percentile bootstrap over the values (:func:`mean_interval`).
- **ratio of percentiles of two runs** (e.g. NeRCC p99 / uncoded p99): percentile bootstrap, each run's batches
  resampled independently (the runs are independent), the ratio of the two resampled percentiles
  (:func:`percentile_ratio_interval`). A bootstrap cannot see past the largest batch it was given, so for a
  percentile the batches cannot bound (a p99 of fewer than ~370 batches, a p99.9 of fewer than ~3,700: the
  order-statistic interval has no upper end) it would be overconfident exactly where the tail is thin; there the
  ratio's interval is opened on that side (numerator unbounded: no upper end; denominator unbounded: lower end
  0), so a verdict never rests on a tail the run did not measure.

Verdicts (:func:`verdict`): a target "figure <= target" (direction ``"below"``) is **met** when the whole interval
is at or below the target line, **not met** when the whole interval is above it, and **undecided** when the
interval straddles the line (the run cannot tell); ``"above"`` mirrors it. Over repeated runs
(:func:`combine_verdicts`) a target is met (not met) only when every repeat says so; a target that flips, or is
undecided in any repeat, is undecided.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np

#: Interval ends are floats; ``math.inf`` / ``-math.inf`` for an end the data cannot bound.
Interval = Tuple[float, float]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
VERDICTS = ("met", "not met", "undecided")
DIRECTIONS = ("below", "above")


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - float(confidence)


def _check_q(q: float) -> float:
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be a quantile in (0, 1) (p99 -> 0.99), got {q}")
    return float(q)


# ------------------------------------------------------------------------------------------------ percentiles
def quantile_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> Tuple[int, int]:
    """1-based ranks (l, u) of the order statistics bounding the q-quantile with at least ``confidence``.

    l = 0 means "no lower end" and u = n + 1 "no upper end" (too few draws). See the module docstring.
    """
    from scipy.stats import binom

    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    n = int(n)
    q = _check_q(q)
    alpha = _check_confidence(confidence)
    ranks = np.arange(0, n + 2)
    # F(r - 1) for r = 0..n+1: the chance that fewer than r draws are below xi_q
    below = binom.cdf(ranks - 1, n, q)
    lower_ok = np.nonzero(below <= alpha / 2 + 1e-12)[0]
    lo = int(lower_ok.max()) if lower_ok.size else 0
    upper_ok = np.nonzero(1.0 - below <= alpha / 2 + 1e-12)[0]
    hi = int(upper_ok.min()) if upper_ok.size else n + 1
    return lo, hi


def quantile_coverage(n: int, q: float, lo: int, hi: int) -> float:
    """Exact coverage P(X(lo) <= xi_q <= X(hi)) of the rank pair for n draws of a continuous distribution."""
    from scipy.stats import binom

    upper = binom.cdf(hi - 1, n, q) if hi <= n else 1.0
    lower = binom.cdf(lo - 1, n, q) if lo >= 1 else 0.0
    return float(upper - lower)


def quantile_interval(values: Sequence[float], q: float, confidence: float = CONFIDENCE) -> Interval:
    """Distribution-free interval (lo, hi) of the q-quantile of ``values`` (order statistics, binomial ranks).

    ``+inf`` values (batches never answered) sort above every latency. An end the data cannot bound is -inf / +inf.
    """
    v = np.sort(np.asarray(values, dtype=float).ravel())
    if v.size == 0:
        raise ValueError("values must not be empty")
    if np.isnan(v).any():
        raise ValueError("values must not contain NaN (use +inf for a batch that was never answered)")
    lo, hi = quantile_ranks(v.size, q, confidence)
    return (float(v[lo - 1]) if lo >= 1 else -math.inf, float(v[hi - 1]) if hi <= v.size else math.inf)


def percentile_interval(values: Sequence[float], p: float, confidence: float = CONFIDENCE) -> Interval:
    """:func:`quantile_interval` with a percentile p in (0, 100) (99 -> p99)."""
    if not 0.0 < p < 100.0:
        raise ValueError(f"p must be a percentile in (0, 100), got {p}")
    return quantile_interval(values, p / 100.0, confidence)


# ------------------------------------------------------------------------------------------------ proportions
def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion successes / n."""
    from scipy.stats import norm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n={n}, got {successes}")
    alpha = _check_confidence(confidence)
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


# ------------------------------------------------------------------------------------------------ bootstrap
def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def _check_resamples(resamples: int) -> int:
    if int(resamples) != resamples or resamples < 100:
        raise ValueError(f"resamples must be an integer >= 100, got {resamples}")
    return int(resamples)


def _bootstrap_ends(stats: np.ndarray, alpha: float) -> Interval:
    """Percentile-bootstrap ends; +inf resampled statistics (e.g. a percentile reaching unanswered batches) kept."""
    s = np.sort(stats)
    k = s.size
    lo = s[max(0, int(math.floor(alpha / 2 * k)))]
    hi = s[min(k - 1, int(math.ceil((1 - alpha / 2) * k)) - 1)]
    return float(lo), float(hi)


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray],
                       confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap of ``statistic`` (vectorised: gets a (resamples, n) array, returns (resamples,))."""
    alpha = _check_confidence(confidence)
    resamples = _check_resamples(resamples)
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise ValueError("values must not be empty")
    idx = _rng(seed).integers(0, v.size, size=(resamples, v.size))
    return _bootstrap_ends(np.asarray(statistic(v[idx]), dtype=float), alpha)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of the mean."""
    return bootstrap_interval(values, lambda a: a.mean(axis=1), confidence, resamples, seed)


def ratio_of_sums_interval(numerators: Sequence[float], denominators: Sequence[float],
                           confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = 0) -> Interval:
    """Interval of sum(num) / sum(den), resampling the (num, den) pairs (e.g. per batch: served hits, base hits).

    RelAcc = (correct served predictions) / (correct local predictions) over the same inputs: one pair per batch.
    """
    alpha = _check_confidence(confidence)
    resamples = _check_resamples(resamples)
    num = np.asarray(numerators, dtype=float).ravel()
    den = np.asarray(denominators, dtype=float).ravel()
    if num.size == 0 or num.size != den.size:
        raise ValueError(f"numerators and denominators must be non-empty and of one length, got {num.size} and "
                         f"{den.size}")
    if den.sum() <= 0:
        raise ValueError("denominators must sum to > 0")
    idx = _rng(seed).integers(0, num.size, size=(resamples, num.size))
    d = den[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(d > 0, num[idx].sum(axis=1) / np.where(d > 0, d, 1.0), np.inf)
    return _bootstrap_ends(ratios, alpha)


_HUGE = 1e300  # stands in for +inf inside interpolating percentiles; anything past _INF_LINE maps back to inf
_INF_LINE = 1e200


def _resampled_percentile(v: np.ndarray, p: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    finite = np.where(np.isfinite(v), v, _HUGE)
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    out = np.percentile(finite[idx], p, axis=1)
    return np.where(out >= _INF_LINE, np.inf, out)


def percentile_ratio_interval(a: Sequence[float], b: Sequence[float], p: float, confidence: float = CONFIDENCE,
                              resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Interval:
    """Interval of (p-th percentile of a) / (p-th percentile of b) for two independent runs (bootstrap, each run's
    batches resampled on their own). +inf (never answered) in a gives an +inf ratio; in b a ratio of 0."""
    alpha = _check_confidence(confidence)
    resamples = _check_resamples(resamples)
    if not 0.0 < p < 100.0:
        raise ValueError(f"p must be a percentile in (0, 100), got {p}")
    va, vb = (np.asarray(x, dtype=float).ravel() for x in (a, b))
    if va.size == 0 or vb.size == 0:
        raise ValueError("a and b must not be empty")
    rng = _rng(seed)
    pa = _resampled_percentile(va, p, resamples, rng)
    pb = _resampled_percentile(vb, p, resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isinf(pa), np.inf, np.where(np.isinf(pb), 0.0, pa / pb))
    lo, hi = _bootstrap_ends(ratio, alpha)
    # where the order statistics cannot bound a percentile, neither can the bootstrap: open that side
    a_lo, a_hi = quantile_interval(va, p / 100.0, confidence)
    b_lo, b_hi = quantile_interval(vb, p / 100.0, confidence)
    if math.isinf(a_hi) or b_lo <= 0:
        hi = math.inf
    if math.isinf(b_hi) or a_lo <= 0:
        lo = 0.0
    return lo, hi


# ------------------------------------------------------------------------------------------------ verdicts
def verdict(interval: Optional[Sequence[Optional[float]]], target: float, direction: str = "below") -> str:
    """'met' | 'not met' | 'undecided' of "figure <= target" (``below``) or "figure >= target" (``above``).

    ``interval`` is (lo, hi); None for an end means unbounded on that side; None for the whole interval (nothing
    measured) is 'undecided'. A target exactly on an interval end counts as inside (met for that end).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if target is None or (isinstance(target, float) and math.isnan(target)):
        raise ValueError("target must be a number")
    if interval is None:
        return "undecided"
    lo, hi = interval
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"interval must be (lo, hi) with lo <= hi, got {tuple(interval)}")
    if direction == "below":
        return "met" if hi <= target else "not met" if lo > target else "undecided"
    return "met" if lo >= target else "not met" if hi < target else "undecided"


def combine_verdicts(verdicts: Iterable[str]) -> str:
    """One verdict over repeats: 'met' / 'not met' only when every repeat agrees, else 'undecided'."""
    vs = list(verdicts)
    bad = [v for v in vs if v not in VERDICTS]
    if bad:
        raise ValueError(f"verdicts must be among {VERDICTS}, got {bad}")
    if not vs:
        return "undecided"
    return vs[0] if all(v == vs[0] for v in vs) else "undecided"


def intervals_overlap(a: Optional[Sequence[Optional[float]]], b: Optional[Sequence[Optional[float]]]) -> bool:
    """Whether two intervals share a point (None ends unbounded); False when either is missing."""
    if a is None or b is None:
        return False
    alo, ahi = (-math.inf if a[0] is None else a[0]), (math.inf if a[1] is None else a[1])
    blo, bhi = (-math.inf if b[0] is None else b[0]), (math.inf if b[1] is None else b[1])
    return alo <= bhi and blo <= ahi


# ------------------------------------------------------------------------------------------------ formatting
def json_interval(interval: Optional[Interval], digits: int = 3) -> Optional[list]:
    """[lo, hi] for JSON: rounded, an unbounded or never-answered end as None."""
    if interval is None:
        return None
    return [round(float(x), digits) if math.isfinite(x) else None for x in interval]


def format_with_interval(value: Optional[float], interval: Optional[Sequence[Optional[float]]], digits: int = 1,
                         none: str = "never") -> str:
    """'17.4 [16.9, 18.0]'; a missing value or end prints ``none`` (an upper end the data cannot bound: '>max')."""
    def one(x):
        return none if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"

    if value is None:
        return none
    if interval is None:
        return one(value)
    lo, hi = interval
    return f"{one(value)} [{'-' if lo is None else one(lo)}, {one(hi)}]"
