"""Straggler profiles: parsing (bad strings name the field), canonical strings, seeded sampling statistics."""

import math

import numpy as np
import pytest

from nercc.serving.stragglers import StragglerSampler, parse_straggler, sample_delays_ms


@pytest.mark.parametrize(
    "text, kind, params",
    [
        ("none", "none", {}),
        ("  None ", "none", {}),
        ("shifted-exp:shift_ms=2,scale_ms=5", "shifted-exp", {"shift_ms": 2.0, "scale_ms": 5.0}),
        ("bimodal:p=0.1,slow_ms=40", "bimodal", {"p": 0.1, "slow_ms": 40.0}),
        ("bimodal:slow_ms=40, p=0.1", "bimodal", {"p": 0.1, "slow_ms": 40.0}),
        ("bimodal:p=0.2,factor=5", "bimodal", {"p": 0.2, "factor": 5.0}),
        ("pareto:scale_ms=1.5,alpha=2.5", "pareto", {"scale_ms": 1.5, "alpha": 2.5}),
    ],
)
def test_parse_valid_profiles(text, kind, params):
    profile = parse_straggler(text)
    assert profile.kind == kind
    assert profile.params == params
    assert parse_straggler(str(profile)) == profile  # the canonical string round-trips


@pytest.mark.parametrize(
    "text, named",
    [
        ("gamma:k=2", "gamma"),
        ("bimodal:p=0.1", "slow_ms"),  # needs slow_ms or factor
        ("bimodal:p=0.1,slow_ms=4,factor=2", "slow_ms"),
        ("bimodal:p=1.5,slow_ms=40", "'p'"),
        ("bimodal:p=-0.1,slow_ms=40", "'p'"),
        ("bimodal:p=0.1,slow_ms=-1", "'slow_ms'"),
        ("bimodal:p=0.1,factor=0.5", "'factor'"),
        ("bimodal:p=abc,slow_ms=40", "'p'"),
        ("bimodal:p=nan,slow_ms=40", "'p'"),
        ("bimodal:p=0.1,slow=40", "'slow'"),
        ("bimodal:p=0.1,p=0.2,slow_ms=1", "'p'"),
        ("bimodal:p0.1", "key=value"),
        ("shifted-exp:shift_ms=1", "'scale_ms'"),
        ("shifted-exp:shift_ms=-1,scale_ms=1", "'shift_ms'"),
        ("pareto:scale_ms=0,alpha=2", "'scale_ms'"),
        ("pareto:scale_ms=1,alpha=0", "'alpha'"),
        ("pareto:", "scale_ms"),
        ("none:p=1", "'p'"),
    ],
)
def test_bad_profiles_name_the_field(text, named):
    with pytest.raises(ValueError) as err:
        parse_straggler(text)
    assert named in str(err.value)


def test_non_string_profile_rejected():
    with pytest.raises(ValueError, match="string"):
        parse_straggler(0.1)


def test_sampler_is_seeded_per_worker():
    a = sample_delays_ms("shifted-exp:shift_ms=1,scale_ms=3", 50, seed=7, worker_indices=[0, 1])
    b = sample_delays_ms("shifted-exp:shift_ms=1,scale_ms=3", 50, seed=7, worker_indices=[0, 1])
    c = sample_delays_ms("shifted-exp:shift_ms=1,scale_ms=3", 50, seed=8, worker_indices=[0, 1])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # workers draw independent streams
    assert not np.array_equal(a, c)


def test_none_never_delays():
    sampler = StragglerSampler("none", seed=3)
    assert all(sampler.next_delay_ms(5.0) == 0.0 for _ in range(100))


def test_bimodal_rate_and_size():
    delays = sample_delays_ms("bimodal:p=0.1,slow_ms=40", 20000, seed=1)[0]
    assert set(np.unique(delays)) == {0.0, 40.0}
    rate = float(np.mean(delays > 0))
    # binomial(20000, 0.1): sd = 0.0021, so 5 sd is 0.0106
    assert abs(rate - 0.1) < 0.0106


def test_bimodal_factor_scales_measured_compute():
    profile = parse_straggler("bimodal:p=1,factor=4")
    delay = profile.sample_delay_ms(np.random.default_rng(0), compute_ms=2.5)
    assert delay == pytest.approx(7.5)  # total time 4 x 2.5 ms
    assert profile.mean_delay_ms(compute_ms=2.5) == pytest.approx(7.5)


def test_shifted_exponential_moments():
    profile = parse_straggler("shifted-exp:shift_ms=2,scale_ms=5")
    delays = profile.sample_delay_ms(np.random.default_rng(0), size=40000)
    assert delays.min() >= 2.0
    # mean 7 with sd 5 / sqrt(40000) = 0.025
    assert delays.mean() == pytest.approx(profile.mean_delay_ms(), abs=0.15)


def test_pareto_minimum_and_tail():
    profile = parse_straggler("pareto:scale_ms=2,alpha=3")
    delays = profile.sample_delay_ms(np.random.default_rng(0), size=40000)
    assert delays.min() >= 2.0
    # P(X > 4) = (2/4)^3 = 0.125 for Pareto I
    assert float(np.mean(delays > 4.0)) == pytest.approx(0.125, abs=0.01)
    assert math.isinf(parse_straggler("pareto:scale_ms=1,alpha=1").mean_delay_ms())
