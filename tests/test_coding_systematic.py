"""Systematic NeRCC / BACC: worker points, bit-exact systematic rows, decoding plan, validation."""

import numpy as np
import pytest

from nercc.coding import (
    BACC,
    SYSTEMATIC_GEOMETRIES,
    CodedSetting,
    NeRCC,
    SystematicBACC,
    SystematicNeRCC,
    chebyshev_first,
    make_scheme,
    systematic_points,
)
from nercc.coding.registry import BACC_SYS_NAME, NERCC_SYS_NAME, SYSTEMATIC_SCHEMES

SETTINGS = [(4, 12), (6, 12), (8, 12), (5, 12), (3, 4), (20, 100)]


def sys_schemes(k, n):
    return [make_scheme(NERCC_SYS_NAME, k, n, 1e-4, 1e-3), make_scheme(BACC_SYS_NAME, k, n)]


@pytest.mark.parametrize("k,n", SETTINGS)
@pytest.mark.parametrize("geometry", ["near", "near:0.4", "interleaved", "interleaved-ends"])
def test_points_contain_the_alphas_exactly(k, n, geometry):
    betas, workers = systematic_points(k, n, geometry)
    assert betas.shape == (n,) and np.all(np.diff(betas) > 0)
    assert len(workers) == k and list(workers) == sorted(workers)
    assert np.array_equal(betas[list(workers)], chebyshev_first(k))  # the same floats, not just close
    assert betas.min() >= -1.0 and betas.max() <= 1.0


def test_interleaved_is_first_kind_chebyshev_when_n_over_k_is_odd():
    for k, n in [(4, 12), (3, 9), (20, 100), (5, 15)]:
        np.testing.assert_allclose(systematic_points(k, n, "interleaved")[0], chebyshev_first(n), atol=1e-15)
        np.testing.assert_allclose(systematic_points(k, n, "chebyshev1")[0], chebyshev_first(n), atol=1e-15)
    betas = systematic_points(4, 12, "interleaved-ends")[0]
    assert (betas[0], betas[-1]) == (-1.0, 1.0)


def test_geometry_errors():
    with pytest.raises(ValueError, match="geometry must be one of"):
        systematic_points(4, 12, "random")
    with pytest.raises(ValueError, match="odd integer"):
        systematic_points(6, 12, "chebyshev1")
    with pytest.raises(ValueError, match="parity point on a data point"):
        systematic_points(5, 12, "chebyshev2")  # both sets go through 0
    with pytest.raises(ValueError, match="geometry must be one of"):
        make_scheme(NERCC_SYS_NAME, 4, 12, geometry="nope")
    with pytest.raises(ValueError, match="needs 0 < T < 1"):
        systematic_points(4, 12, "near:1.5")


def test_near_puts_parity_points_beside_each_alpha():
    betas, workers = systematic_points(4, 12, "near")
    alphas = chebyshev_first(4)
    parity = np.delete(betas, workers)
    # each parity point is closer to its nearest alpha than a tenth of the alphas' spacing in angle allows
    gap = np.abs(np.arccos(-parity)[:, None] - np.arccos(-alphas)[None, :]).min(axis=1)
    assert np.all(gap <= 0.1 * np.pi / 8 + 1e-12) and np.allclose(betas, -betas[::-1])
    assert SYSTEMATIC_GEOMETRIES[0] == "near" and SystematicNeRCC(4, 12).geometry == "near"


@pytest.mark.parametrize("cls", [SystematicNeRCC, SystematicBACC])
def test_validation_errors(cls):
    with pytest.raises(ValueError, match=r"n_workers must be > n_inputs = 4 for a systematic code"):
        cls(4, 4)
    with pytest.raises(ValueError, match="n_workers must be >= n_inputs"):
        cls(4, 3)
    with pytest.raises(ValueError, match="n_inputs must be an integer >= 2"):
        cls(1, 4)
    s = cls(4, 12)
    with pytest.raises(ValueError, match="x must have 4 rows"):
        s.encode(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="x contains NaN"):
        s.encode_parity(np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="y must have 3 rows"):
        s.decode(np.zeros((2, 5)), [0, 1, 2])
    with pytest.raises(ValueError, match="y contains NaN"):
        s.decode(np.full((4, 5), np.inf), [1, 4, 7, 10])  # all copies: still refused
    with pytest.raises(ValueError, match="y contains NaN"), np.errstate(invalid="ignore"):
        s.decode(np.full((3, 5), np.inf), [1, 4, 7])
    with pytest.raises(ValueError, match="arrived has duplicated"):
        s.recovered([1, 1, 2])


def test_registry_and_api_attributes():
    assert SYSTEMATIC_SCHEMES == (BACC_SYS_NAME, NERCC_SYS_NAME)
    s = make_scheme(NERCC_SYS_NAME, 4, 12, 1e-3, 1e-2)
    assert isinstance(s, SystematicNeRCC) and isinstance(s, NeRCC) and (s.lam_enc, s.lam_dec) == (1e-3, 1e-2)
    assert isinstance(make_scheme(BACC_SYS_NAME, 4, 12), SystematicBACC)
    assert s.systematic and not NeRCC(4, 12).systematic and not BACC(4, 12).systematic
    assert s.systematic_workers == (1, 4, 7, 10)
    assert s.parity_workers == (0, 2, 3, 5, 6, 8, 9, 11)
    plain = NeRCC(4, 12, 1e-3, 1e-2)
    assert plain.systematic_workers == () and plain.parity_workers == tuple(range(12))
    assert plain.parity_matrix() is plain.encoding_matrix()
    x = np.random.default_rng(0).standard_normal((4, 7))
    np.testing.assert_array_equal(plain.encode_parity(x), plain.encode(x))
    assert plain.recovered([0, 3, 5]).tolist() == [True] * 4


@pytest.mark.parametrize("k,n", SETTINGS)
def test_encoding_matrix_has_unit_rows_and_parity_rows(k, n):
    for s in sys_schemes(k, n):
        E = s.encoding_matrix()
        sw, pw = list(s.systematic_workers), list(s.parity_workers)
        assert E.shape == (n, k) and sorted(sw + pw) == list(range(n))
        assert np.array_equal(E[sw], np.eye(k))
        assert np.array_equal(s.parity_matrix(), E[pw]) and s.parity_matrix().shape == (n - k, k)
        assert np.array_equal(s.betas[sw], s.alphas)
        # the parity rows are the plain encoder at the parity points (rows sum to 1: constants are kept)
        np.testing.assert_allclose(E[pw].sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encode_copies_the_inputs_bit_exactly(dtype):
    rng = np.random.default_rng(1)
    for s in sys_schemes(4, 12):
        x = (rng.standard_normal((4, 3, 5)) * 1e3).astype(dtype)
        coded = s.encode(x)
        assert coded.dtype == dtype and coded.shape == (12, 3, 5)
        assert np.array_equal(coded[list(s.systematic_workers)], x)
        parity = s.encode_parity(x)
        assert parity.shape == (8, 3, 5) and np.array_equal(parity, coded[list(s.parity_workers)])
        P = s.parity_matrix().astype(dtype)
        np.testing.assert_allclose(parity.reshape(8, -1), P @ x.reshape(4, -1), rtol=1e-5, atol=1e-3)


def f(z):
    return np.tanh(2 * z) + 0.1 * z**2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decode_with_every_systematic_answer_returns_them_exactly(dtype):
    rng = np.random.default_rng(2)
    for s in sys_schemes(6, 12):
        x = rng.standard_normal((6, 10)).astype(dtype)
        y_all = f(s.encode(x)).astype(dtype)
        for arrived in (list(s.systematic_workers), list(range(12)), sorted(s.systematic_workers + s.parity_workers[1:3])):
            out = s.decode(y_all[arrived], arrived)
            assert out.dtype == dtype
            assert np.array_equal(out, f(x).astype(dtype))  # bit-exact: the workers' own answers
            assert not s.recovered(arrived).any()
            D = s.decoding_matrix(arrived)
            pos = [arrived.index(w) for w in s.systematic_workers]
            assert np.array_equal(D[:, pos], np.eye(6)) and np.count_nonzero(D) == 6


@pytest.mark.parametrize("k,n", SETTINGS)
def test_decode_with_missing_systematic_answers_is_the_regression(k, n):
    rng = np.random.default_rng(3)
    for s in sys_schemes(k, n):
        plain_cls = NeRCC if isinstance(s, NeRCC) else BACC
        x = rng.standard_normal((k, 4))
        y_all = f(s.encode(x))
        late = {s.systematic_workers[0], s.systematic_workers[-1]}
        if n - k > 2:
            late.add(s.parity_workers[len(s.parity_workers) // 2])
        arrived = [w for w in range(n) if w not in late]
        missing = s.recovered(arrived)
        assert missing.tolist() == [i in (0, k - 1) for i in range(k)]
        out = s.decode(y_all[arrived], arrived)
        D = s.decoding_matrix(arrived)
        # rows of arrived inputs are unit vectors at their worker's position, copied bit-exactly
        for i in np.flatnonzero(~missing):
            j = arrived.index(s.systematic_workers[i])
            assert np.array_equal(D[i], np.eye(len(arrived))[j])
            assert np.array_equal(out[i], y_all[s.systematic_workers[i]])
        # the missing rows: the plain decoding regression through ALL arrived betas, evaluated at alpha_k
        if plain_cls is NeRCC:
            from nercc.coding.splines import smoothing_spline_matrix
            R = smoothing_spline_matrix(s.betas[arrived], s.lam_dec, s.alphas[missing])
        else:
            from nercc.coding.berrut import berrut_matrix
            R = berrut_matrix(s.betas[arrived], s.alphas[missing])
        np.testing.assert_array_equal(D[missing], R)
        np.testing.assert_allclose(out[missing], R @ y_all[arrived], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,slope", [(SystematicNeRCC, 1.0), (SystematicBACC, 0.0)])
def test_recovery_is_exact_for_a_line(cls, slope):
    # inputs on a line in alpha and f affine: splines (any lam) reproduce lines and Berrut constants, so the
    # missing rows are exact too
    s = cls(4, 12, lam_enc=1e-3, lam_dec=1e-2) if cls is SystematicNeRCC else cls(4, 12)
    a, b = np.random.default_rng(4).standard_normal((2, 6))
    x = a + slope * s.alphas[:, None] * b
    coded = s.encode(x)
    arrived = [0, 2, 3, 5, 6, 7, 8]  # systematic workers 1, 10 (inputs 0, 3) and 4 late
    y = 3.0 * coded[arrived] - 1.0
    np.testing.assert_allclose(s.decode(y, arrived), 3.0 * x - 1.0, atol=1e-10)


def test_decoding_cache_and_setting_work_for_systematic():
    s = SystematicNeRCC(4, 12, 1e-4, 1e-3)
    arrived = (0, 1, 2, 3, 5)
    assert s.decoding_matrix(arrived) is s.decoding_matrix(list(arrived))
    assert s.cache_info()["entries"] == 1 and s.nbytes > 0
    setting = CodedSetting(NERCC_SYS_NAME, 4, 12, lam_enc=1e-4, lam_dec=1e-3)
    assert setting.smoothing and setting.encoder.systematic
    x = np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32)
    assert np.array_equal(setting.encode(x), s.encode(x))
    prof = {"default": None, "entries": [{"n_inputs": 4, "n_workers": 12, "n_stragglers": 2,
                                          "lam_enc": 0.0, "lam_dec": 2e-3}]}
    assert CodedSetting.from_profile(prof, NERCC_SYS_NAME, 4, 12, 2).lam_dec == 2e-3
    assert not CodedSetting(BACC_SYS_NAME, 4, 12, lam_enc=1.0).smoothing


def test_loo_residuals_work_for_systematic():
    s = SystematicNeRCC(4, 12, 0.0, 1e-3)
    L = s.loo_residual_operator(list(range(12)))
    assert L.shape == (12, 12)
    np.testing.assert_allclose(L @ np.ones(12), 0.0, atol=1e-9)  # constants are predicted exactly


def test_every_geometry_builds_where_it_is_defined():
    for g in SYSTEMATIC_GEOMETRIES:
        s = SystematicNeRCC(4, 12, geometry=g)
        assert np.array_equal(s.betas[list(s.systematic_workers)], s.alphas)
        assert repr(s).endswith(f"geometry={g!r})")


def test_profile_entries_are_per_scheme():
    from nercc.coding import profile_entry, profile_lams

    prof = {"default": {"lam_enc": 1e-4, "lam_dec": 1e-3}, "entries": [
        {"n_inputs": 4, "n_workers": 12, "n_stragglers": 2, "lam_enc": 1e-6, "lam_dec": 1e-3},  # plain (no field)
        {"scheme": "nercc-sys", "n_inputs": 4, "n_workers": 12, "n_stragglers": 2, "lam_enc": 0.0, "lam_dec": 5e-3,
         "lam_dec_by_arrived": {"9": 7e-3}},
    ]}
    assert profile_lams(prof, 4, 12, 2) == (1e-6, 1e-3)
    assert profile_lams(prof, 4, 12, 2, scheme="nercc-sys") == (0.0, 5e-3)
    assert profile_lams(prof, 4, 12, n_arrived=9, scheme="nercc-sys") == (0.0, 7e-3)
    assert profile_entry(prof, 4, 12, 2)["lam_dec"] == 1e-3
    assert profile_entry(prof, 4, 12, 2, "nercc-sys")["lam_dec"] == 5e-3
    setting = CodedSetting.from_profile(prof, NERCC_SYS_NAME, 4, 12, 2)
    assert (setting.lam_enc, setting.lam_dec, setting.lam_dec_for(9)) == (0.0, 5e-3, 7e-3)
    assert CodedSetting.from_profile(prof, "nercc", 4, 12, 2).lam_dec == 1e-3
    # a systematic scheme with no entries of its own uses plain NeRCC's
    plain_only = {"default": None, "entries": prof["entries"][:1]}
    assert profile_lams(plain_only, 4, 12, 2, scheme="nercc-sys") == (1e-6, 1e-3)


def test_save_entry_keeps_one_entry_per_scheme(tmp_path):
    from nercc.profiles import load_profile, lookup, save_entry

    save_entry(tmp_path, {"n_inputs": 4, "n_workers": 12, "n_stragglers": 2, "lam_enc": 1e-6, "lam_dec": 1e-3})
    save_entry(tmp_path, {"scheme": "nercc-sys", "n_inputs": 4, "n_workers": 12, "n_stragglers": 2,
                          "lam_enc": 0.0, "lam_dec": 4e-3})
    save_entry(tmp_path, {"scheme": "nercc-sys", "n_inputs": 4, "n_workers": 12, "n_stragglers": 2,
                          "lam_enc": 0.0, "lam_dec": 2e-3})  # replaces the systematic one only
    prof = load_profile(tmp_path)
    assert len(prof["entries"]) == 2 and prof["default"] == {"lam_enc": 1e-6, "lam_dec": 1e-3}
    assert lookup(tmp_path, 4, 12, 2) == (1e-6, 1e-3)
    assert lookup(tmp_path, 4, 12, 2, scheme="nercc-sys") == (0.0, 2e-3)


def test_tune_systematic_nercc_on_a_smooth_function():
    from nercc.coding import tune

    rng = np.random.default_rng(7)
    x = rng.standard_normal((40 * 4, 6))

    def f(batch):
        return np.tanh(batch) + 0.1 * batch**2

    res = tune(f, x, 4, 12, [2, 3], lam_grid=[0.0, 1e-4], lam_dec_grid=[0.0, 1e-3, 1e-2], n_trials=5, refine=0,
               progress=False, scheme=NERCC_SYS_NAME, geometry="chebyshev2")
    assert res.scheme_name == NERCC_SYS_NAME and isinstance(res.scheme(), SystematicNeRCC)
    assert res.scheme().geometry == "chebyshev2"
    entry = res.profile_entry()
    assert entry["scheme"] == NERCC_SYS_NAME and entry["geometry"] == "chebyshev2"
    assert res.mse <= res.mse_interp and res.mse_bacc is not None and res.mse > 0
    with pytest.raises(ValueError, match="scheme must be one of nercc, nercc-sys"):
        tune(f, x, 4, 12, 2, scheme="bacc", progress=False)
    with pytest.raises(ValueError, match="n_workers must be > n_inputs"):
        tune(f, x, 4, 4, 1, scheme=NERCC_SYS_NAME, progress=False)
