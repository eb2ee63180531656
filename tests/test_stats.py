"""nercc.stats: intervals with known answers, coverage on simulated data, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from nercc import stats


def test_order_statistic_ranks_known_answers():
    # n = 1000, q = 0.99: B ~ Bin(1000, 0.99); F(981) <= 0.025 < F(982) etc.
    assert stats.quantile_ranks(1000, 0.99) == (983, 997)
    lo, hi = 983, 997
    assert binom.cdf(lo - 1, 1000, 0.99) <= 0.025 < binom.cdf(lo, 1000, 0.99)
    assert 1 - binom.cdf(hi - 1, 1000, 0.99) <= 0.025 < 1 - binom.cdf(hi - 2, 1000, 0.99)
    # the textbook median interval for n = 1000: ranks 469 and 532
    assert stats.quantile_ranks(1000, 0.5) == (469, 532)
    # too few draws for a p99.9 upper end
    assert stats.quantile_ranks(1000, 0.999)[1] == 1001
    assert stats.quantile_coverage(1000, 0.99, 983, 997) == pytest.approx(0.9761, abs=1e-3)


def test_quantile_interval_picks_those_order_statistics():
    values = np.arange(1, 1001, dtype=float)[::-1]  # unsorted on purpose
    assert stats.quantile_interval(values, 0.99) == (983.0, 997.0)
    assert stats.percentile_interval(values, 50) == (469.0, 532.0)
    assert stats.percentile_interval(values, 99.9) == (997.0, math.inf)
    # a never-answered batch is +inf and sorts last
    assert stats.quantile_interval([1.0] * 990 + [math.inf] * 10, 0.99)[1] == math.inf


@pytest.mark.parametrize("n, q", [(200, 0.9), (1000, 0.99), (60, 0.5)])
def test_order_statistic_interval_coverage_on_simulated_data(n, q):
    rng = np.random.default_rng(1)
    truth = -math.log(1 - q)  # the q-quantile of Exp(1)
    lo, hi = stats.quantile_ranks(n, q)
    draws = np.sort(rng.exponential(size=(4000, n)), axis=1)
    lows = draws[:, lo - 1] if lo >= 1 else np.full(4000, -np.inf)
    highs = draws[:, hi - 1] if hi <= n else np.full(4000, np.inf)
    covered = float(np.mean((lows <= truth) & (truth <= highs)))
    exact = stats.quantile_coverage(n, q, lo, hi)
    assert exact >= 0.95
    assert covered == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 4000) + 1e-3)
    assert covered >= 0.94


def test_wilson_known_answers():
    lo, hi = stats.wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert stats.wilson_interval(0, 10)[0] == 0.0
    assert stats.wilson_interval(10, 10)[1] == 1.0
    lo, hi = stats.wilson_interval(990, 1000)
    assert lo < 0.99 < hi and hi < 1.0


def test_bootstrap_mean_and_ratio_cover_the_truth():
    rng = np.random.default_rng(2)
    x = rng.normal(10.0, 2.0, size=400)
    lo, hi = stats.mean_interval(x)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * 2 / 20, rel=0.25)
    num = rng.binomial(4, 0.9, size=500)
    den = np.full(500, 4)
    lo, hi = stats.ratio_of_sums_interval(num, den)
    assert lo < num.sum() / den.sum() < hi
    w = stats.wilson_interval(int(num.sum()), int(den.sum()))
    assert lo == pytest.approx(w[0], abs=0.01) and hi == pytest.approx(w[1], abs=0.01)


def test_percentile_ratio_interval():
    rng = np.random.default_rng(3)
    a = rng.exponential(1.0, size=1000)
    b = rng.exponential(2.0, size=1000)
    lo, hi = stats.percentile_ratio_interval(a, b, 99)
    assert lo < 1.0 and hi > 0.25 and hi < 1.0
    # coverage of the true ratio 0.5 over fresh draws: about 95 % (bootstrap of a p90 is close to nominal)
    hits = 0
    for seed in range(100):
        r = np.random.default_rng(100 + seed)
        lo_, hi_ = stats.percentile_ratio_interval(r.exponential(1.0, 300), r.exponential(2.0, 300), 90,
                                                   resamples=400, seed=seed)
        hits += lo_ <= 0.5 <= hi_
    assert hits >= 85
    # a scheme whose p99 batches were never answered: the ratio is unbounded
    never = np.concatenate([a[:980], np.full(20, np.inf)])
    assert stats.percentile_ratio_interval(never, b, 99)[1] == math.inf
    # 100 batches cannot bound a p99 (no upper end): the bootstrap alone would look sure; the interval opens
    lo, hi = stats.percentile_ratio_interval(a[:100], b[:100], 99)
    assert hi == math.inf and lo == 0.0
    lo, hi = stats.percentile_ratio_interval(a, b[:100], 99)  # only the denominator unbounded
    assert lo == 0.0 and math.isfinite(hi)


def test_verdicts():
    assert stats.verdict((16.9, 18.0), 20, "below") == "met"
    assert stats.verdict((16.9, 18.0), 17.5, "below") == "undecided"
    assert stats.verdict((16.9, 18.0), 16.0, "below") == "not met"
    assert stats.verdict((0.97, 0.99), 0.95, "above") == "met"
    assert stats.verdict((0.94, 0.99), 0.95, "above") == "undecided"
    assert stats.verdict((0.90, 0.93), 0.95, "above") == "not met"
    assert stats.verdict((10.0, None), 20, "below") == "undecided"  # no upper end: cannot say met
    assert stats.verdict((30.0, None), 20, "below") == "not met"
    assert stats.verdict(None, 20) == "undecided"
    assert stats.combine_verdicts(["met", "met", "met"]) == "met"
    assert stats.combine_verdicts(["met", "not met", "met"]) == "undecided"
    assert stats.combine_verdicts(["not met"] * 3) == "not met"
    with pytest.raises(ValueError, match="direction"):
        stats.verdict((1, 2), 3, "over")
    with pytest.raises(ValueError, match="verdicts"):
        stats.combine_verdicts(["yes"])


def test_overlap_and_format():
    assert stats.intervals_overlap((1, 3), (2, 5)) and not stats.intervals_overlap((1, 2), (2.5, 3))
    assert stats.intervals_overlap((1, None), (50, 60)) and not stats.intervals_overlap(None, (1, 2))
    assert stats.format_with_interval(17.43, (16.91, 18.0)) == "17.4 [16.9, 18.0]"
    assert stats.format_with_interval(17.43, (16.91, None)) == "17.4 [16.9, never]"
    assert stats.json_interval((1.23456, math.inf)) == [1.235, None]


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="q must"):
        stats.quantile_interval([1, 2], 99)
    with pytest.raises(ValueError, match="confidence"):
        stats.quantile_ranks(10, 0.5, confidence=95)
    with pytest.raises(ValueError, match="empty"):
        stats.quantile_interval([], 0.5)
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(11, 10)
