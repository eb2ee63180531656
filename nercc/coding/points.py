"""Interpolation nodes on [-1, 1]: alphas (data points) and betas (worker points)."""

from __future__ import annotations

import numpy as np

from nercc.coding._validation import check_count

__all__ = ["chebyshev_first", "chebyshev_second"]


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
