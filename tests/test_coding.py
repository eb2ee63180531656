"""The coding core against independent references: scipy's smoothing spline, the Berrut formula written
out, least squares, natural cubic interpolation; plus shapes, dtypes, validation and the decoding cache."""

import threading

import numpy as np
import pytest
from scipy.interpolate import CubicSpline, make_smoothing_spline

from nercc.coding import BACC, NeRCC, chebyshev_first, chebyshev_second, make_scheme
from nercc.coding.splines import natural_spline_evaluation, smoothing_spline_matrix

LAMS = [1e-7, 1e-5, 1e-3, 1e-1, 10.0]


def scipy_spline_with_tangents(knots, y, lam, points):
    """scipy's smoothing spline inside the knot range; beyond it the tangent line at the end knot.

    scipy's BSpline extrapolates the end cubic piece, which is not linear; the natural smoothing
    spline (the minimiser over all functions) continues with its tangent line, where s'' = 0.
    """
    spl = make_smoothing_spline(knots, y, lam=lam)
    der = spl.derivative()
    out = spl(points)
    left, right = points < knots[0], points > knots[-1]
    out[left] = spl(knots[0]) + np.multiply.outer(points[left] - knots[0], der(knots[0]))
    out[right] = spl(knots[-1]) + np.multiply.outer(points[right] - knots[-1], der(knots[-1]))
    return out


def reinsch_dense(knots, y, lam, points):
    """Textbook dense solve of (I + lam Q R^{-1} Q^T) g = y, gamma = R^{-1} Q^T g (Green & Silverman)."""
    n = knots.size
    h = np.diff(knots)
    Q = np.zeros((n, n - 2))
    R = np.zeros((n - 2, n - 2))
    for c in range(n - 2):
        Q[c, c], Q[c + 1, c], Q[c + 2, c] = 1 / h[c], -1 / h[c] - 1 / h[c + 1], 1 / h[c + 1]
        R[c, c] = (h[c] + h[c + 1]) / 3
        if c + 1 < n - 2:
            R[c, c + 1] = R[c + 1, c] = h[c + 1] / 6
    K = Q @ np.linalg.solve(R, Q.T)
    g = np.linalg.solve(np.eye(n) + lam * K, y)
    gamma = np.linalg.solve(R, Q.T @ g)
    return natural_spline_evaluation(knots, g, gamma, points)


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


# -- nodes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 12, 200])
def test_chebyshev_first_kind(k):
    a = chebyshev_first(k)
    j = np.arange(1, k + 1)
    assert a.shape == (k,) and a.dtype == np.float64
    np.testing.assert_allclose(a, np.sort(np.cos((2 * j - 1) * np.pi / (2 * k))), atol=1e-15)
    assert np.all(np.diff(a) > 0) and np.all(np.abs(a) < 1)
    np.testing.assert_array_equal(a, -a[::-1])  # exactly symmetric


@pytest.mark.parametrize("n", [2, 3, 12, 1000])
def test_chebyshev_second_kind(n):
    b = chebyshev_second(n)
    np.testing.assert_allclose(b, np.sort(np.cos(np.arange(n) * np.pi / (n - 1))), atol=1e-15)
    assert b[0] == -1.0 and b[-1] == 1.0 and np.all(np.diff(b) > 0)


def test_scheme_nodes():
    s = NeRCC(4, 12)
    np.testing.assert_array_equal(s.alphas, chebyshev_first(4))
    np.testing.assert_array_equal(s.betas, chebyshev_second(12))


# -- NeRCC against scipy ----------------------------------------------------------------------------


@pytest.mark.parametrize("lam", LAMS)
def test_nercc_encoding_matches_scipy(lam):
    K, N = 9, 40
    scheme = NeRCC(K, N, lam_enc=lam, lam_dec=0.0)
    E = scheme.encoding_matrix()
    assert E.shape == (N, K)
    x = np.random.default_rng(0).normal(size=(K, 3))
    ref = scipy_spline_with_tangents(scheme.alphas, x, lam, scheme.betas)
    assert rel_err(E @ x, ref) < 1e-8
    # the betas reach +-1, beyond the alphas: the comparison above covered the tangent lines
    assert (scheme.betas < scheme.alphas[0]).sum() > 0 and (scheme.betas > scheme.alphas[-1]).sum() > 0


@pytest.mark.parametrize("lam", LAMS)
def test_nercc_decoding_matches_scipy(lam):
    K, N = 12, 60
    scheme = NeRCC(K, N, lam_enc=0.0, lam_dec=lam)
    rng = np.random.default_rng(1)
    # workers 0 and N - 1 straggle, so the alphas near +-1 lie beyond the arrived betas
    arrived = np.sort(rng.choice(np.arange(1, N - 1), size=40, replace=False))
    D = scheme.decoding_matrix(arrived)
    assert D.shape == (K, 40)
    y = rng.normal(size=(40, 5))
    ref = scipy_spline_with_tangents(scheme.betas[arrived], y, lam, scheme.alphas)
    assert rel_err(D @ y, ref) < 1e-8


def test_nercc_matches_scipy_on_uneven_knots_and_wide_range():
    rng = np.random.default_rng(2)
    knots = np.sort(rng.uniform(-3, 5, size=30))
    points = np.linspace(-4, 6, 77)
    y = rng.normal(size=30)
    for lam in (1e-4, 1.0, 1e3):
        S = smoothing_spline_matrix(knots, lam, points)
        assert rel_err(S @ y, scipy_spline_with_tangents(knots, y, lam, points)) < 1e-8


@pytest.mark.parametrize("n", [3, 4, 5, 8])
@pytest.mark.parametrize("lam", [0.0, 1e-3, 1.0])
def test_small_point_counts_match_dense_reinsch(n, lam):
    rng = np.random.default_rng(n)
    knots = np.sort(rng.uniform(-1, 1, size=n))
    points = np.linspace(-1.5, 1.5, 31)
    y = rng.normal(size=n)
    S = smoothing_spline_matrix(knots, lam, points)
    assert rel_err(S @ y, reinsch_dense(knots, y, lam, points)) < 1e-10


def test_two_points_give_the_line_through_them():
    knots = np.array([-0.5, 0.25])
    points = np.array([-1.0, -0.5, 0.0, 0.25, 1.0])
    for lam in (0.0, 1e-3, 1e6):
        S = smoothing_spline_matrix(knots, lam, points)
        np.testing.assert_allclose(S @ np.array([1.0, 4.0]), 1.0 + 4.0 * (points + 0.5), atol=1e-14)
    scheme = NeRCC(2, 5, lam_enc=1e-2, lam_dec=1e-2)
    x = np.array([[2.0, 0.0], [3.0, 1.0]])
    coded = scheme.encode(x)
    slope = (x[1] - x[0]) / (scheme.alphas[1] - scheme.alphas[0])
    np.testing.assert_allclose(coded, x[0] + np.outer(scheme.betas - scheme.alphas[0], slope), atol=1e-14)
    np.testing.assert_allclose(scheme.decode(coded[[1, 3]], [1, 3]), x, atol=1e-13)


@pytest.mark.parametrize("n", [3, 4, 7, 25])
def test_lam_zero_is_natural_cubic_interpolation(n):
    rng = np.random.default_rng(10 + n)
    knots = np.sort(rng.uniform(-1, 1, size=n))
    y = rng.normal(size=n)
    np.testing.assert_allclose(smoothing_spline_matrix(knots, 0.0, knots), np.eye(n), atol=1e-12)
    inside = np.linspace(knots[0], knots[-1], 50)
    ref = CubicSpline(knots, y, bc_type="natural")(inside)
    assert rel_err(smoothing_spline_matrix(knots, 0.0, inside) @ y, ref) < 1e-10


def test_lam_zero_scheme_interpolates():
    scheme = NeRCC(6, 20)  # default lams: 0, the model-agnostic variant
    x = np.random.default_rng(3).normal(size=(6, 4))
    # encoding then decoding from every worker: both splines pass through their data, and the
    # decoder's spline through the coded values is the encoder's spline again (same cubic pieces
    # cannot be guaranteed between different knots, so compare with an explicit interpolant)
    coded = scheme.encode(x)
    ref = CubicSpline(scheme.alphas, x, bc_type="natural")
    inside = (scheme.betas >= scheme.alphas[0]) & (scheme.betas <= scheme.alphas[-1])
    np.testing.assert_allclose(coded[inside], ref(scheme.betas[inside]), atol=1e-12)
    everyone = list(range(20))
    decoded = scheme.decode(coded, everyone)
    np.testing.assert_allclose(
        decoded, CubicSpline(scheme.betas, coded, bc_type="natural")(scheme.alphas), atol=1e-12
    )


def test_large_lam_gives_the_least_squares_line():
    rng = np.random.default_rng(4)
    knots = np.sort(rng.uniform(-1, 1, size=15))
    y = rng.normal(size=15)
    points = np.linspace(-1.2, 1.2, 25)  # includes both extrapolation sides
    line = np.polyval(np.polyfit(knots, y, 1), points)
    S = smoothing_spline_matrix(knots, 1e9, points)
    np.testing.assert_allclose(S @ y, line, atol=1e-8)
    # and smoothing moves monotonically from the interpolant towards the line
    gaps = [
        np.abs(smoothing_spline_matrix(knots, lam, points) @ y - line).max() for lam in (1e-4, 1e-2, 1, 1e2)
    ]
    assert all(a > b for a, b in zip(gaps, gaps[1:]))


def test_spline_rows_reproduce_lines_exactly():
    # a smoothing spline leaves linear data untouched (zero penalty, zero residual), for every lam
    scheme = NeRCC(7, 30, lam_enc=1e-3, lam_dec=1e-1)
    np.testing.assert_allclose(
        scheme.encoding_matrix() @ (2 + 3 * scheme.alphas), 2 + 3 * scheme.betas, atol=1e-12
    )
    arrived = [0, 3, 4, 9, 15, 16, 22, 28]
    D = scheme.decoding_matrix(arrived)
    np.testing.assert_allclose(D @ (2 + 3 * scheme.betas[arrived]), 2 + 3 * scheme.alphas, atol=1e-12)


# -- BACC ---------------------------------------------------------------------------------------------


def berrut_by_hand(nodes, values, z):
    num = den = 0.0
    for i, (xi, fi) in enumerate(zip(nodes, values)):
        if z == xi:
            return fi
        w = (-1) ** i / (z - xi)
        num += w * fi
        den += w
    return num / den


def test_bacc_matches_the_berrut_formula():
    K, N = 5, 16
    scheme = BACC(K, N)
    rng = np.random.default_rng(5)
    x = rng.normal(size=K)
    E = scheme.encoding_matrix()
    ref = [berrut_by_hand(scheme.alphas, x, b) for b in scheme.betas]
    np.testing.assert_allclose(E @ x, ref, rtol=1e-12, atol=1e-12)
    arrived = [1, 2, 5, 6, 7, 11, 15]  # signs alternate by position in this list, not by worker index
    y = rng.normal(size=len(arrived))
    ref = [berrut_by_hand(scheme.betas[arrived], y, a) for a in scheme.alphas]
    np.testing.assert_allclose(scheme.decoding_matrix(arrived) @ y, ref, rtol=1e-12, atol=1e-12)


def test_bacc_rows_sum_to_one_and_interpolate():
    scheme = BACC(12, 60)
    np.testing.assert_allclose(scheme.encoding_matrix().sum(axis=1), 1.0, atol=1e-12)
    arrived = np.sort(np.random.default_rng(6).choice(60, size=35, replace=False))
    np.testing.assert_allclose(scheme.decoding_matrix(arrived).sum(axis=1), 1.0, atol=1e-12)
    from nercc.coding import berrut_matrix

    nodes = scheme.betas[arrived]
    np.testing.assert_array_equal(berrut_matrix(nodes, nodes), np.eye(35))


def test_bacc_exact_node_hit_gives_a_unit_row():
    scheme = BACC(5, 9)  # alpha 0.0 and beta 0.0 coincide exactly
    E = scheme.encoding_matrix()
    hit = np.flatnonzero(scheme.betas == 0.0)
    assert hit.size == 1
    np.testing.assert_array_equal(E[hit[0]], np.eye(5)[2])
    assert np.isfinite(E).all()
    np.testing.assert_array_equal(scheme.decoding_matrix([0, 4, 8])[2], [0.0, 1.0, 0.0])


# -- encode / decode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [NeRCC, BACC])
@pytest.mark.parametrize("trailing", [(), (3,), (1, 28, 28), (2, 3, 4)])
def test_encode_decode_shapes_and_values(cls, trailing):
    K, N = 4, 12
    scheme = cls(K, N)
    x = np.random.default_rng(7).normal(size=(K,) + trailing)
    coded = scheme.encode(x)
    assert coded.shape == (N,) + trailing
    np.testing.assert_allclose(coded.reshape(N, -1), scheme.encoding_matrix() @ x.reshape(K, -1))
    arrived = [0, 2, 3, 7, 8, 11]
    out = scheme.decode(coded[arrived], arrived)
    assert out.shape == (K,) + trailing
    np.testing.assert_allclose(
        out.reshape(K, -1), scheme.decoding_matrix(arrived) @ coded[arrived].reshape(6, -1)
    )


@pytest.mark.parametrize("cls", [NeRCC, BACC])
def test_dtype_is_preserved(cls):
    scheme = cls(4, 12)
    x64 = np.random.default_rng(8).normal(size=(4, 10))
    x32 = x64.astype(np.float32)
    assert scheme.encode(x32).dtype == np.float32
    assert scheme.encode(x64).dtype == np.float64
    assert scheme.encode(np.arange(40).reshape(4, 10)).dtype == np.float64  # integers -> float64
    np.testing.assert_allclose(scheme.encode(x32), scheme.encode(x64), rtol=1e-5, atol=1e-5)
    arrived = np.array([1, 4, 5, 9, 10])
    y32 = scheme.encode(x32)[arrived]
    assert scheme.decode(y32, arrived).dtype == np.float32
    assert scheme.decode(y32.astype(np.float64), tuple(arrived)).dtype == np.float64
    assert scheme.decoding_matrix(arrived).dtype == np.float64


def test_encode_decode_recovers_a_linear_function_exactly():
    # inputs that are a linear function of alpha survive encoding and decoding exactly, for any lam and
    # any arrived set: a smoothing spline leaves data on a line untouched
    scheme = NeRCC(6, 18, lam_enc=1e-4, lam_dec=1e-4)
    x = np.outer(1 + 0.5 * scheme.alphas, [1.0, -2.0, 3.0])  # linear in alpha
    arrived = [0, 1, 4, 6, 7, 10, 12, 17]
    np.testing.assert_allclose(scheme.decode(scheme.encode(x)[arrived], arrived), x, atol=1e-12)


def test_make_scheme():
    assert isinstance(make_scheme("nercc", 4, 12, 1e-3, 1e-2), NeRCC)
    assert isinstance(make_scheme("BACC", 4, 12), BACC)
    with pytest.raises(ValueError, match="scheme"):
        make_scheme("uncoded", 4, 12)


# -- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_inputs=1, n_workers=4), "n_inputs"),
        (dict(n_inputs=0, n_workers=4), "n_inputs"),
        (dict(n_inputs=4.0, n_workers=12), "n_inputs"),
        (dict(n_inputs="4", n_workers=12), "n_inputs"),
        (dict(n_inputs=True, n_workers=12), "n_inputs"),
        (dict(n_inputs=4, n_workers=3), "n_workers"),
        (dict(n_inputs=4, n_workers=12.5), "n_workers"),
        (dict(n_inputs=4, n_workers=12, lam_enc=-1e-3), "lam_enc"),
        (dict(n_inputs=4, n_workers=12, lam_dec=float("nan")), "lam_dec"),
        (dict(n_inputs=4, n_workers=12, lam_dec=float("inf")), "lam_dec"),
        (dict(n_inputs=4, n_workers=12, lam_enc="big"), "lam_enc"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NeRCC(**kwargs)


def test_bad_constructor_arguments_bacc():
    with pytest.raises(ValueError, match=r"n_inputs must be an integer >= 2"):
        BACC(1, 5)
    with pytest.raises(ValueError, match=r"n_workers must be >= n_inputs = 5"):
        BACC(5, 4)
    assert NeRCC(np.int64(4), np.int32(12)).n_workers == 12


@pytest.mark.parametrize("cls", [NeRCC, BACC])
@pytest.mark.parametrize(
    "arrived, pattern",
    [
        ([3, 1, 5], r"arrived must be sorted ascending"),
        ([1, 3, 3, 5], r"arrived has duplicated indices \[3\]"),
        ([0, 5, 12], r"arrived has out-of-range indices \[12\].*0\.\.11"),
        ([-1, 5], r"arrived has out-of-range indices \[-1\]"),
        ([4], r"arrived must hold at least 2 workers"),
        ([], r"arrived must hold at least 2 workers"),
        ([[1, 2], [3, 4]], r"arrived must be a 1-D"),
        ([0.5, 2.0], r"arrived must be integer worker indices"),
    ],
)
def test_bad_arrived(cls, arrived, pattern):
    scheme = cls(4, 12)
    with pytest.raises(ValueError, match=pattern):
        scheme.decoding_matrix(arrived)
    with pytest.raises(ValueError, match=pattern):
        scheme.decode(np.zeros((max(len(arrived), 1), 3)), arrived)


@pytest.mark.parametrize("cls", [NeRCC, BACC])
def test_bad_data(cls):
    scheme = cls(4, 12)
    with pytest.raises(ValueError, match=r"x must have 4 rows .*got 3 rows"):
        scheme.encode(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"x must have 4 rows .*got a scalar"):
        scheme.encode(1.0)
    with pytest.raises(ValueError, match=r"y must have 3 rows .*len\(arrived\).*got 4 rows"):
        scheme.decode(np.zeros((4, 5)), [0, 1, 2])
    bad = np.zeros((4, 5))
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or inf"):
        scheme.encode(bad)
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"x contains NaN or inf"):
        scheme.encode(bad.astype(np.float32))
    y = np.ones((3, 5), dtype=np.float32)
    y[0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"y contains NaN or inf"):
        scheme.decode(y, [0, 5, 9])
    with pytest.raises(ValueError, match=r"x must be a real numeric array"):
        scheme.encode(np.zeros((4, 2), dtype=complex))


# -- cache -------------------------------------------------------------------------------------------


def test_decoding_matrix_cache_returns_the_same_object():
    scheme = NeRCC(4, 12, 1e-4, 1e-4)
    D = scheme.decoding_matrix([0, 3, 5, 9])
    assert scheme.decoding_matrix((0, 3, 5, 9)) is D
    assert scheme.decoding_matrix(np.array([0, 3, 5, 9])) is D
    assert not D.flags.writeable and not scheme.encoding_matrix().flags.writeable
    assert scheme.encoding_matrix() is scheme.encoding_matrix()
    info = scheme.cache_info()
    assert info["entries"] == 1 and info["hits"] == 2 and info["misses"] == 1


def test_decoding_cache_is_bounded_lru():
    scheme = BACC(4, 12, cache_size=3)
    first = scheme.decoding_matrix([0, 1])
    for arrived in ([0, 2], [0, 3], [0, 4]):
        scheme.decoding_matrix(arrived)
    assert scheme.cache_info()["entries"] == 3
    again = scheme.decoding_matrix([0, 1])  # evicted: rebuilt, equal but not the same object
    assert again is not first
    np.testing.assert_array_equal(again, first)
    # recently used entries survive
    keep = scheme.decoding_matrix([0, 4])
    scheme.decoding_matrix([1, 2])
    scheme.decoding_matrix([1, 3])
    assert scheme.decoding_matrix([0, 4]) is keep


def test_decoding_cache_byte_bound_and_disabled_cache():
    scheme = NeRCC(20, 100, cache_bytes=20 * 100 * 8 * 3)  # room for two (K, N) float64 + float32 copies
    for start in range(5):
        scheme.decoding_matrix(list(range(start, 100)))
    info = scheme.cache_info()
    assert info["entries"] == 2 and info["bytes"] <= info["max_bytes"]
    off = NeRCC(4, 12, cache_size=0)
    assert off.decoding_matrix([0, 1, 2]) is not off.decoding_matrix([0, 1, 2])


def test_concurrent_decoding_is_consistent():
    scheme = NeRCC(8, 40, 1e-5, 1e-4, cache_size=16)
    rng = np.random.default_rng(9)
    sets = [np.sort(rng.choice(40, size=30, replace=False)) for _ in range(24)]
    y = rng.normal(size=(30, 10)).astype(np.float32)
    expected = [NeRCC(8, 40, 1e-5, 1e-4).decoding_matrix(s) @ y for s in sets]
    errors = []

    def work(offset):
        try:
            for i in range(60):
                idx = (i + offset) % len(sets)
                out = scheme.decode(y, sets[idx])
                np.testing.assert_allclose(out, expected[idx], rtol=1e-5, atol=1e-5)
        except Exception as exc:  # surfaced below: a thread's assertion would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert scheme.cache_info()["entries"] == 16


def test_cached_matrices_hold_no_subnormals():
    # far entries of a spline operator underflow; subnormal float32 entries made decoding 2-24x slower
    scheme = NeRCC(200, 1000, 1e-5, 1e-5)
    arrived = np.sort(np.random.default_rng(11).choice(1000, size=800, replace=False))
    raw32 = scheme._build_decoding(tuple(arrived.tolist())).astype(np.float32)
    assert np.any((raw32 != 0) & (np.abs(raw32) < np.finfo(np.float32).tiny))  # the case is real
    y = np.ones((800, 3), dtype=np.float32)
    scheme.decode(y, arrived)
    for dtype, smallest in ((np.float32, 2.0**-64), (np.float64, 0.0)):  # float64: none arise
        m = scheme._decoding_operator(arrived).as_dtype(dtype)
        assert not np.any((m != 0) & (np.abs(m) < max(np.finfo(dtype).tiny, smallest * np.abs(m).max())))
    np.testing.assert_allclose(scheme.decode(y, arrived), raw32.astype(np.float64) @ y, atol=1e-6)


def test_finiteness_check_handles_overflow_and_layouts():
    from nercc.coding._validation import all_finite

    a = np.ones((3, 4), dtype=np.float32)
    assert all_finite(a)
    a[1, 2] = 3e38  # x . x overflows in float32: the exact check must still accept it
    assert all_finite(a)
    scheme = NeRCC(3, 6)
    assert np.isfinite(scheme.encode(np.full((3, 2), 1e30, dtype=np.float32))).all()
    for bad in (np.nan, np.inf, -np.inf):
        a[0, 0] = bad
        assert not all_finite(a)
        assert not all_finite(np.asfortranarray(a)) and not all_finite(a[:, ::2])
    assert all_finite(np.zeros((3, 0)))
