r"""Natural cubic smoothing splines as linear operators (Reinsch form, banded O(n) solves).

For knots :math:`x_1 < \dots < x_n` and data :math:`y`, the smoothing spline :math:`s` minimises

.. math::

    \sum_{i=1}^n (y_i - s(x_i))^2 + \lambda \int_{x_1}^{x_n} s''(u)^2 \, du ,

the same objective (unit weights) as :func:`scipy.interpolate.make_smoothing_spline`. The minimiser is a
natural cubic spline: cubic between knots, :math:`s'' = 0` at the end knots and linear beyond them.
Write :math:`g = s(x)` (knot values) and :math:`\gamma = s''(x_{2..n-1})` (interior second derivatives).
With :math:`h_i = x_{i+1} - x_i`, the banded matrices :math:`Q` (n x n-2, three non-zeros per column) and
:math:`R` (tridiagonal, n-2 x n-2) of Green & Silverman (1994, sec. 2.3) give the Reinsch equations

.. math::

    (R + \lambda Q^T Q)\, \gamma = Q^T y, \qquad g = y - \lambda Q \gamma .

Evaluating the spline at points :math:`z` is linear in :math:`(g, \gamma)`: :math:`s(z) = A g + C \gamma`,
with two non-zeros per row in each of :math:`A` and :math:`C`. Substituting gives the operator

.. math::

    s(z) = \big[A + (C - \lambda A Q)\, M^{-1} Q^T\big]\, y, \qquad M = R + \lambda Q^T Q ,

and since :math:`M` is symmetric positive definite and pentadiagonal, the m x n operator costs one banded
Cholesky solve with only m right-hand sides: :math:`M^{-1} (C - \lambda A Q)^T`. ``lam = 0`` is exact
natural cubic interpolation (:math:`M = R`); two knots give the straight line through them.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solveh_banded

__all__ = ["smoothing_spline_matrix", "natural_spline_evaluation"]


def _interval_weights(knots: np.ndarray, points: np.ndarray):
    """Where each point sits and how it weighs the knot values g and second derivatives gamma.

    Every point z uses one interval (j, j + 1) (the end intervals for points beyond the knots) and
    s(z) = a0 g_j + a1 g_{j+1} + c0 gamma_j + c1 gamma_{j+1}. Returns (j, a0, a1, c0, c1), each of shape (m,).
    """
    n = knots.size
    h = np.diff(knots)
    j = np.clip(np.searchsorted(knots, points, side="right") - 1, 0, n - 2)
    hj = h[j]
    a = points - knots[j]  # distance from the interval's left knot (negative left of the range)
    b = knots[j + 1] - points  # distance to its right knot (negative right of the range)
    # linear interpolation of g; its formula already is the straight continuation beyond the ends
    a0 = b / hj
    a1 = a / hj
    c0 = -a * b * (1.0 + b / hj) / 6.0
    c1 = -a * b * (1.0 + a / hj) / 6.0
    # Beyond the end knots the natural spline is the tangent line at the end knot:
    # s(z) = g_0 + (z - x_0) s'(x_0) with s'(x_0) = (g_1 - g_0)/h_0 - h_0 gamma_1 / 6 (gamma_0 = 0), and the
    # mirror image on the right, s'(x_{n-1}) = (g_{n-1} - g_{n-2})/h + h gamma_{n-2} / 6.
    left = points < knots[0]
    c0[left] = 0.0
    c1[left] = -a[left] * hj[left] / 6.0
    right = points > knots[-1]
    c0[right] = -b[right] * hj[right] / 6.0
    c1[right] = 0.0
    return j, a0, a1, c0, c1


def _dense_rows(n: int, j, first, second) -> np.ndarray:
    """(m, n) array with ``first`` in column j and ``second`` in column j + 1 of each row."""
    rows = np.arange(j.size)
    out = np.zeros((j.size, n))
    out[rows, j] = first
    out[rows, j + 1] = second
    return out


def natural_spline_evaluation(knots, values, second_derivatives, points) -> np.ndarray:
    """Evaluate the natural cubic spline with the given knot values and interior second derivatives.

    ``values``: (n, ...) spline values at the knots; ``second_derivatives``: (n - 2, ...) at the interior
    knots. Linear beyond the end knots.
    """
    knots = np.asarray(knots, dtype=float)
    n = knots.size
    j, a0, a1, c0, c1 = _interval_weights(knots, np.asarray(points, dtype=float))
    values = np.asarray(values, dtype=float)
    flat = values.reshape(n, -1)
    gamma = np.zeros((n, flat.shape[1]))
    gamma[1:-1] = np.asarray(second_derivatives, dtype=float).reshape(n - 2, -1)
    out = _dense_rows(n, j, a0, a1) @ flat + _dense_rows(n, j, c0, c1) @ gamma
    return out.reshape((j.size,) + values.shape[1:])


def smoothing_spline_matrix(knots, lam: float, points) -> np.ndarray:
    """The (m, n) matrix S with S @ y = s(points), s the natural cubic smoothing spline of (knots, y).

    Parameters
    ----------
    knots : (n,) strictly ascending float array, n >= 2.
    lam : float >= 0, the smoothing parameter with scipy's meaning (see the module docstring).
    points : (m,) float array, anywhere on the real line (linear extrapolation beyond the end knots).

    No validation: the public classes validate; this is the numerical kernel. Cost O(n m): one banded
    Cholesky solve with m right-hand sides and a few passes over the (m, n) result.
    """
    knots = np.asarray(knots, dtype=float)
    points = np.asarray(points, dtype=float)
    n = knots.size
    m = points.size
    j, a0, a1, c0, c1 = _interval_weights(knots, points)
    if n == 2:
        # no interior knots: the smoothing spline of two points is the line through them, whatever lam
        return _dense_rows(n, j, a0, a1)
    h = np.diff(knots)
    inv_h = 1.0 / h
    k = n - 2
    # Q column c (interior knot c + 1) has rows c, c + 1, c + 2 holding q0[c], q1[c], q2[c]
    q0 = inv_h[:-1]
    q1 = -inv_h[:-1] - inv_h[1:]
    q2 = inv_h[1:]
    # M = R + lam Q^T Q, symmetric pentadiagonal, LAPACK upper banded storage (row 2: the diagonal)
    band = np.zeros((3, k))
    band[2] = (h[:-1] + h[1:]) / 3.0 + lam * (q0 * q0 + q1 * q1 + q2 * q2)
    band[1, 1:] = h[1:-1] / 6.0 + lam * (q1[:-1] * q0[1:] + q2[:-1] * q1[1:])
    band[0, 2:] = lam * (q2[:-2] * q0[2:])

    # B = C_interior - lam A Q, (m, k), at most four non-zeros per row, in columns j - 2 .. j + 1:
    # row j of Q touches columns j - 2, j - 1, j (q2, q1, q0) and row j + 1 columns j - 1, j, j + 1.
    pad = np.zeros(2)
    q0p, q1p, q2p = (np.concatenate([pad, q, pad]) for q in (q0, q1, q2))  # qXp[c + 2] = qX[c]
    rows = np.arange(m)
    B = np.zeros((m, k))
    entries = (
        (-2, -lam * (a0 * q2p[j])),
        (-1, c0 - lam * (a0 * q1p[j + 1] + a1 * q2p[j + 1])),
        (0, c1 - lam * (a0 * q0p[j + 2] + a1 * q1p[j + 2])),
        (1, -lam * (a1 * q0p[j + 3])),
    )
    for offset, value in entries:  # four vectorised scatters, no loop over points
        col = j + offset
        ok = (col >= 0) & (col < k)
        B[rows[ok], col[ok]] = value[ok]
    # the transpose trick: m right-hand sides (the evaluation points), not n (the data)
    W = solveh_banded(band, B.T, overwrite_b=True, check_finite=False)  # (k, m) = M^{-1} B^T
    Wt = W.T  # (m, k), C-contiguous view of the Fortran-ordered solution (B's memory: ours to scale)
    # S = A + B M^{-1} Q^T = A + Wt Q^T: column c of Wt spreads to columns c, c + 1, c + 2 of S.
    # Scaling Wt in place instead of into temporaries halves this step's time (fresh (m, n) arrays cost
    # page faults); q1 < 0 never vanishes, so q2 / q1 is safe.
    S = np.empty((m, n))
    np.multiply(Wt, q0, out=S[:, :-2])
    S[:, -2:] = 0.0
    Wt *= q1
    S[:, 1:-1] += Wt
    Wt *= q2 / q1
    S[:, 2:] += Wt
    S[rows, j] += a0
    S[rows, j + 1] += a1
    return S
