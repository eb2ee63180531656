"""The scheme registry and the resolved setting of a coded batch (nercc.coding.registry / setting)."""

from __future__ import annotations

import numpy as np
import pytest

from nercc.coding import (
    BACC,
    BASELINE_SCHEMES,
    CODED_SCHEMES,
    FALLBACK_LAMS,
    SCHEME_ORDER,
    SCHEMES,
    CodedSetting,
    NeRCC,
    evaluate,
    make_scheme,
    profile_lams,
    random_straggler_sets,
    scheme_info,
)

PROFILE = {
    "default": {"lam_enc": 1e-4, "lam_dec": 1e-3},
    "entries": [
        {"n_inputs": 4, "n_workers": 12, "n_stragglers": 2, "lam_enc": 1e-6, "lam_dec": 1e-3,
         "lam_dec_by_arrived": {"10": 2e-3, "9": 5e-3}},
        {"n_inputs": 4, "n_workers": 12, "n_stragglers": 4, "lam_enc": 1e-5, "lam_dec": 1e-2},
    ],
}


def test_registry_lists_every_scheme_once():
    assert SCHEME_ORDER == tuple(SCHEMES) == BASELINE_SCHEMES + CODED_SCHEMES
    assert SCHEME_ORDER == ("uncoded", "replication", "hedged", "bacc", "nercc", "bacc-sys", "nercc-sys")
    assert set(CODED_SCHEMES) == {NeRCC.name, BACC.name, "nercc-sys", "bacc-sys"}
    for name in CODED_SCHEMES:
        assert SCHEMES[name].coder.name == name
    assert scheme_info("NeRCC").smoothing and not scheme_info("bacc").smoothing
    assert scheme_info("nercc-sys").smoothing and not scheme_info("bacc-sys").smoothing
    assert [n for n in SCHEME_ORDER if scheme_info(n).systematic] == ["bacc-sys", "nercc-sys"]
    assert (scheme_info("nercc-sys").label, scheme_info("bacc-sys").label) == ("NeRCC-sys", "BACC-sys")
    assert not scheme_info("hedged").coded
    with pytest.raises(ValueError, match="scheme must be one of nercc|bacc"):
        scheme_info("hedged", coded_only=True)
    with pytest.raises(ValueError, match="got 'turbo'"):
        make_scheme("turbo", 4, 12)


def test_profile_lams_choice_order():
    assert profile_lams(PROFILE, 4, 12, 2) == (1e-6, 1e-3)
    assert profile_lams(PROFILE, 4, 12, 3.9) == (1e-5, 1e-2)  # closest straggler count
    assert profile_lams(PROFILE, 4, 12, 2, n_arrived=10) == (1e-6, 2e-3)  # the per-|F| table
    assert profile_lams(PROFILE, 8, 24, 4) == (1e-6, 1e-3)  # same redundancy N/K, closest S/N
    assert profile_lams(PROFILE, 4, 13) == (1e-4, 1e-3)  # the default
    assert profile_lams({"entries": []}, 4, 13) == FALLBACK_LAMS


def test_setting_resolves_once_and_decodes_per_answer_count():
    setting = CodedSetting.from_profile(PROFILE, "nercc", 4, 12, n_stragglers=2)
    assert (setting.lam_enc, setting.lam_dec) == (1e-6, 1e-3)
    assert setting.lam_dec_for(10) == 2e-3 and setting.lam_dec_for(12) == 1e-3
    assert setting.lam_dec_for(8) == profile_lams(PROFILE, 4, 12, n_arrived=8)[1] == 1e-2
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    coded = setting.encode(x)
    assert coded.dtype == np.float32
    np.testing.assert_array_equal(coded, NeRCC(4, 12, 1e-6, 0.0).encode(x))
    arrived = [0, 1, 2, 4, 5, 6, 8, 9, 10, 11]
    np.testing.assert_allclose(setting.decode(coded[arrived], arrived),
                               NeRCC(4, 12, 1e-6, 2e-3).decode(coded[arrived], arrived))
    # given lams override the profile, for every answer count
    fixed = CodedSetting.from_profile(PROFILE, "nercc", 4, 12, n_stragglers=2, lam_enc=0.0, lam_dec=0.0)
    assert (fixed.lam_enc, fixed.lam_dec_for(10)) == (0.0, 0.0)
    bacc = CodedSetting.from_profile(PROFILE, "bacc", 4, 12, n_stragglers=2)
    assert (bacc.lam_enc, bacc.lam_dec_for(10)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="n_workers must be >= n_inputs"):
        CodedSetting("nercc", 4, 3)


def test_setting_evaluate_matches_the_schemes():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(5, 3))

    def f(x):
        return np.tanh(x @ weights)

    x_batches = rng.normal(size=(6, 4, 5))
    sets = random_straggler_sets(12, 2, 6, seed=0)
    setting = CodedSetting("nercc", 4, 12, 1e-6, 1e-3, lam_dec_by_arrived={10: 1e-2})
    got = setting.evaluate(f, x_batches, sets)
    want = evaluate(NeRCC(4, 12, 1e-6, 1e-2), f, x_batches, sets)
    np.testing.assert_allclose(got, want)
    paired = evaluate(NeRCC(4, 12, 1e-6, 1e-2), f, x_batches, sets, paired=True)
    np.testing.assert_allclose(paired, np.diag(want))
    with pytest.raises(ValueError, match="one straggler set per batch"):
        evaluate(setting, f, x_batches, sets[:2], paired=True)
