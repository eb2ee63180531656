"""Robust decoding (nercc.coding.robust): leave-one-out residuals, detection of wrong answers, validation."""

import numpy as np
import pytest

from nercc.coding import BACC, NeRCC
from nercc.coding.robust import DEFAULT_THRESHOLD, detect_outliers, outlier_score, robust_decode
from nercc.coding.splines import smoothing_spline_matrix


def _answers(scheme, dim=10, seed=0):
    """Honest answers of a smooth nonlinear f on the scheme's coded inputs (softmax of a linear map)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((scheme.n_inputs, 6))
    W = rng.standard_normal((6, dim))
    coded = scheme.encode(x)
    z = coded @ W
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("lam", [1e-4, 1e-2])
def test_loo_operator_matches_closed_form_for_smoothing_splines(lam):
    scheme = NeRCC(4, 12, lam_enc=0.0, lam_dec=lam)
    arrived = (0, 1, 2, 4, 5, 7, 8, 10, 11)
    L = scheme.loo_residual_operator(arrived)
    H = smoothing_spline_matrix(scheme.betas[list(arrived)], lam, scheme.betas[list(arrived)])
    y = np.random.default_rng(1).standard_normal((len(arrived), 3))
    closed = (y - H @ y) / (1.0 - np.diag(H))[:, None]  # the r_i / (1 - H_ii) identity
    np.testing.assert_allclose(L @ y, closed, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("scheme", [NeRCC(4, 12), BACC(4, 12)], ids=["nercc", "bacc"])
def test_loo_operator_is_refit_without_each_worker(scheme):
    arrived = (0, 2, 3, 5, 6, 9, 11)
    L = scheme.loo_residual_operator(arrived)
    assert np.allclose(np.diag(L), 1.0)
    y = np.random.default_rng(2).standard_normal(len(arrived))
    for i, w in enumerate(arrived):
        others = [a for a in arrived if a != w]
        refit = (scheme._regression_matrix(tuple(others), scheme.betas[[w]]) @ y[np.arange(len(arrived)) != i])[0]
        assert (L @ y)[i] == pytest.approx(y[i] - refit, abs=1e-10)


@pytest.mark.parametrize("scheme", [NeRCC(4, 12), BACC(4, 12), NeRCC(4, 20, 1e-6, 1e-6)],
                         ids=["nercc", "bacc", "nercc20"])
def test_one_large_wrong_answer_is_dropped_and_decode_equals_straggling(scheme):
    y = _answers(scheme)
    arrived = np.arange(scheme.n_workers)
    bad = y.copy()
    bad[5] = 1e6 * np.random.default_rng(3).standard_normal(bad.shape[1])
    result = robust_decode(scheme, bad, arrived)
    assert result.dropped == (5,)
    honest = np.delete(arrived, 5)
    np.testing.assert_allclose(result.predictions, scheme.decode(np.delete(y, 5, axis=0), honest))
    assert np.abs(scheme.decode(bad, arrived)).max() > 1e3  # the plain decode is ruined


def test_two_wrong_answers_are_dropped():
    scheme = NeRCC(4, 20)
    y = _answers(scheme, seed=4)
    bad = y.copy()
    bad[[3, 14]] = -50.0
    dropped, kept = detect_outliers(scheme, bad, np.arange(20))
    assert sorted(dropped) == [3, 14] and len(kept) == 18


@pytest.mark.parametrize("scheme", [NeRCC(4, 12), BACC(4, 12)], ids=["nercc", "bacc"])
def test_honest_answers_are_kept(scheme):
    for seed in range(20):
        y = _answers(scheme, seed=seed)
        result = robust_decode(scheme, y, np.arange(scheme.n_workers))
        assert result.dropped == ()
        np.testing.assert_array_equal(result.predictions, scheme.decode(y, np.arange(scheme.n_workers)))


@pytest.mark.parametrize("scheme", [NeRCC(4, 12), BACC(4, 12)], ids=["nercc", "bacc"])
def test_outlier_score_is_the_statistic_the_detector_thresholds(scheme):
    arrived = np.arange(scheme.n_workers)
    y = _answers(scheme, seed=7)
    worker, honest = outlier_score(scheme, y, arrived)
    assert honest <= DEFAULT_THRESHOLD and detect_outliers(scheme, y, arrived)[0] == ()
    bad = y.copy()
    bad[6] += 3.0 * np.random.default_rng(5).standard_normal(bad.shape[1])
    worker, score = outlier_score(scheme, bad, arrived)
    assert worker == 6 and score > DEFAULT_THRESHOLD > honest
    # the detector drops exactly when the score is over its threshold
    assert detect_outliers(scheme, bad, arrived, threshold=score * 0.99)[0][:1] == (6,)
    assert detect_outliers(scheme, bad, arrived, threshold=score * 1.01)[0] == ()
    with pytest.raises(ValueError, match="at least 3 answers"):
        outlier_score(scheme, y[:2], arrived[:2])


def test_never_drops_below_n_inputs_and_respects_max_faulty():
    scheme = NeRCC(4, 6)
    y = _answers(scheme)
    y[[0, 2, 4]] = 1e9
    dropped, kept = detect_outliers(scheme, y, np.arange(6))
    assert len(kept) >= 4 and len(dropped) <= 1  # (6 - 4) // 2
    dropped, _ = detect_outliers(scheme, y, np.arange(6), max_faulty=0)
    assert dropped == ()


def test_bad_arguments_are_named():
    scheme = NeRCC(4, 12)
    y = _answers(scheme)
    with pytest.raises(ValueError, match="threshold"):
        robust_decode(scheme, y, np.arange(12), threshold=0.0)
    with pytest.raises(ValueError, match="threshold"):
        robust_decode(scheme, y, np.arange(12), threshold=float("nan"))
    with pytest.raises(ValueError, match="max_faulty"):
        robust_decode(scheme, y, np.arange(12), max_faulty=-1)
    bad = y.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        robust_decode(scheme, bad, np.arange(12))
    with pytest.raises(ValueError, match="rows"):
        robust_decode(scheme, y[:5], np.arange(12))
    with pytest.raises(ValueError, match="at least 3"):
        scheme.loo_residual_operator([0, 1])


def test_overflowing_lam_is_a_clear_error():
    scheme = NeRCC(4, 12, lam_enc=1e308, lam_dec=1e308)
    with pytest.raises(ValueError, match="lam_enc = 1e.308 is too large"):
        scheme.encode(np.ones((4, 3)))
    with pytest.raises(ValueError, match="lam_dec = 1e.308 is too large"):
        scheme.decode(np.ones((12, 3)), np.arange(12))
