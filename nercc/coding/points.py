"""Interpolation nodes on [-1, 1]: alphas (data points) and betas (worker points)."""

from __future__ import annotations

import numpy as np

from nercc.coding._validation import check_count

__all__ = ["chebyshev_first", "chebyshev_second", "systematic_points", "SYSTEMATIC_GEOMETRIES"]


def chebyshev_first(n_points: int) -> np.ndarray:
    r"""Chebyshev points of the first kind, ascending: :math:`-\cos\frac{(2j-1)\pi}{2n}`, j = 1..n.

    All lie strictly inside (-1, 1). Written as a sine of a symmetric angle so that the set is exactly
    antisymmetric and the middle point of an odd set is exactly 0.
    """
    n = check_count("n_points", n_points, minimum=1)
    j = np.arange(1, n + 1)
    return np.sin(np.pi * (2 * j - n - 1) / (2 * n))


def chebyshev_second(n_points: int) -> np.ndarray:
    r"""Chebyshev points of the second kind, ascending: :math:`-\cos\frac{i\pi}{n-1}`, i = 0..n-1.

    Includes both end points -1 and 1 exactly; needs n >= 2.
    """
    n = check_count("n_points", n_points, minimum=2)
    i = np.arange(n)
    return np.sin(np.pi * (2 * i - n + 1) / (2 * (n - 1)))


#: Geometries of the systematic worker points (see :func:`systematic_points`); the first is the default.
SYSTEMATIC_GEOMETRIES = ("near", "interleaved", "interleaved-ends", "chebyshev2", "chebyshev1")
#: ``near``: the outermost parity point of an alpha sits this fraction of the half-gap pi/(2K) away (in angle);
#: 0.1 measured best of 0.1 / 0.25 / 0.5 (docs/coding.md, `nercc bench geometry`)
NEAR_OFFSET = 0.1


def _parse_geometry(geometry) -> tuple:
    """'near' or 'near:0.3' -> ('near', 0.3); other names -> (name, None). ValueError naming the choices."""
    if isinstance(geometry, str) and geometry.startswith("near"):
        rest = geometry[4:]
        if rest == "":
            return "near", NEAR_OFFSET
        if rest.startswith(":"):
            try:
                t = float(rest[1:])
            except ValueError:
                t = -1.0
            if 0.0 < t < 1.0:
                return "near", t
        raise ValueError(f"geometry 'near:T' needs 0 < T < 1 (fraction of the half-gap), got {geometry!r}")
    if geometry not in SYSTEMATIC_GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(SYSTEMATIC_GEOMETRIES)} (or near:T); got {geometry!r}")
    return geometry, None


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainders).

    Among gaps tied on the remainder, the extra points are spread evenly over the tied ones (a mirror-symmetric
    choice when the tie allows one), not bunched at one end.
    """
    quota = weights * (total / weights.sum())
    counts = np.floor(quota + 1e-9).astype(int)
    rem = np.round(quota - counts, 9)
    short = total - int(counts.sum())
    for level in sorted(set(rem.tolist()), reverse=True):
        if short <= 0:
            break
        tied = np.flatnonzero(rem == level)
        take = min(short, tied.size)
        pick = np.floor((np.arange(take) + 0.5) * tied.size / take).astype(int)
        counts[tied[pick]] += 1
        short -= take
    return counts


def systematic_points(n_inputs: int, n_workers: int, geometry: str = SYSTEMATIC_GEOMETRIES[0]):
    r"""Worker points of a systematic code: the K alphas themselves plus N - K parity points.

    Returns ``(betas, systematic_workers)``: ``betas`` (N,) strictly ascending with
    ``betas[systematic_workers[k]] == chebyshev_first(K)[k]`` exactly (the same float), and the K worker
    indices ascending. The parity points are:

    ``near`` (default) / ``near:T``
        Every alpha gets about (N - K)/K parity points close beside it (see below). Measured best for the
        recovered inputs (docs/coding.md): a late systematic worker leaves near-copies of its input behind.
    ``interleaved``
        In the angle :math:`\theta` of :math:`x = -\cos\theta` the alphas sit at
        :math:`\theta_k = (2k-1)\pi/(2K)`, so they cut :math:`[0, \pi]` into K - 1 inner gaps of width
        :math:`\pi/K` and two end gaps of width :math:`\pi/(2K)`. The N - K parity points go into the gaps in
        proportion to their widths (largest remainders), evenly spaced in angle: inner gaps as
        :math:`\theta_k + i\,w/(n+1)`, end gaps at half a step from the end like first-kind points. When N/K
        is an odd integer this is exactly ``chebyshev_first(N)``.
    ``interleaved-ends``
        The same, but the end gaps' outermost points are -1 and 1 (second-kind style ends).
    ``chebyshev2``
        ``chebyshev_second(N - K)`` (the issue's untuned sketch); a ValueError where one of them coincides
        with an alpha (e.g. K and N - K both odd put both sets through 0).
    ``chebyshev1``
        ``chebyshev_first(N)``, which contains the alphas exactly when N/K is an odd integer (else a ValueError).
    ``near`` / ``near:T`` in detail
        Every alpha gets about (N - K)/K parity points close beside it (extras spread evenly over the alphas),
        on alternating sides, the outermost at angle :math:`\theta_k \pm T\,\pi/(2K)` (T = ``NEAR_OFFSET``
        by default) and the others evenly inside: near-copies of each input, so that a late systematic
        worker leaves answers at nearby points for the regression.
    """
    k = check_count("n_inputs", n_inputs, minimum=2)
    n = check_count("n_workers", n_workers, minimum=3)
    if n <= k:
        raise ValueError(f"n_workers must be > n_inputs = {k} for a systematic code (N - K >= 1 parity "
                         f"workers), got {n}")
    geometry, near_offset = _parse_geometry(geometry)
    alphas = chebyshev_first(k)
    if geometry == "chebyshev1":
        return _chebyshev1_systematic(alphas, n)
    if geometry == "chebyshev2":
        parity = _chebyshev2_parity(alphas, n)
    elif geometry == "near":
        parity = _near_parity(k, n - k, near_offset)
    else:
        parity = _interleaved_parity(k, n - k, ends=geometry == "interleaved-ends")
    betas = np.concatenate([alphas, parity])
    order = np.argsort(betas, kind="stable")
    betas = betas[order]
    if np.any(np.diff(betas) <= 0):  # pragma: no cover - the constructions keep the points apart
        raise ValueError(f"geometry {geometry!r} gives coinciding worker points at K = {k}, N = {n}")
    workers = np.flatnonzero(order < k)
    return betas, tuple(int(w) for w in workers)


def _alpha_angles(k: int) -> np.ndarray:
    """The alphas' angles theta_k = (2k-1) pi / 2K in x = -cos(theta)."""
    return np.pi * (2 * np.arange(1, k + 1) - 1) / (2 * k)


def _chebyshev1_systematic(alphas: np.ndarray, n: int):
    """``chebyshev_first(N)`` with the alphas' exact floats at their workers (N/K an odd integer)."""
    k = alphas.size
    if n % k or (n // k) % 2 == 0:
        raise ValueError(f"geometry 'chebyshev1' needs N/K to be an odd integer (then the first-kind points "
                         f"of N contain the alphas), got K = {k}, N = {n}")
    betas = chebyshev_first(n)
    m = n // k
    workers = m // 2 + m * np.arange(k)  # x_{(2k-1)m/2N} in chebyshev_first(N): index (2k-1)m/2 - 1/2
    betas[workers] = alphas  # the same angles; copy the alphas' exact floats
    return betas, tuple(int(w) for w in workers)


def _chebyshev2_parity(alphas: np.ndarray, n: int) -> np.ndarray:
    """``chebyshev_second(N - K)``, refused where a point falls on an alpha."""
    k, p = alphas.size, n - alphas.size
    parity = chebyshev_second(p) if p >= 2 else np.zeros(1)
    close = np.abs(parity[:, None] - alphas[None, :]).min(axis=1) < 1e-12
    if close.any():
        raise ValueError(f"geometry 'chebyshev2' puts a parity point on a data point at K = {k}, N = {n} "
                         f"(at {parity[close].tolist()}); use another geometry")
    return parity


def _near_parity(k: int, p: int, near_offset: float) -> np.ndarray:
    """About p/K parity points beside each alpha, alternating sides, the outermost at theta_k +- T pi/2K."""
    theta = _alpha_angles(k)
    counts = _apportion(np.ones(k), p)
    half = np.pi / (2 * k)
    angles = []
    for j, c in enumerate(counts):
        pairs = (c + 1) // 2
        inward = 1.0 if theta[j] < np.pi / 2 else -1.0  # towards the middle (mirror-symmetric sets)
        for i in range(c):
            side = inward if i % 2 == 0 else -inward
            angles.append(theta[j] + side * near_offset * half * (i // 2 + 1) / pairs)
    return np.sin(np.asarray(angles) - np.pi / 2)


def _interleaved_parity(k: int, p: int, ends: bool) -> np.ndarray:
    """p parity points in the gaps between alphas, in proportion to the gaps' angular widths."""
    theta = _alpha_angles(k)
    widths = np.concatenate([[theta[0]], np.diff(theta), [np.pi - theta[-1]]])
    counts = _apportion(widths, p)
    angles = []
    for g, c in enumerate(counts):
        if c == 0:
            continue
        i = np.arange(1, c + 1)
        if g == 0:  # from theta_1 towards 0
            step = theta[0] / (c if ends else c + 0.5)
            angles.append(theta[0] - i * step)
        elif g == k:  # from theta_K towards pi
            step = (np.pi - theta[-1]) / (c if ends else c + 0.5)
            angles.append(theta[-1] + i * step)
        else:
            angles.append(theta[g - 1] + i * (widths[g] / (c + 1)))
    ang = np.concatenate(angles)
    parity = np.sin(ang - np.pi / 2)  # -cos(theta), exactly antisymmetric like chebyshev_first
    if ends:
        parity[np.isclose(ang, 0.0, atol=1e-12)] = -1.0
        parity[np.isclose(ang, np.pi, atol=1e-12)] = 1.0
    return parity
