r"""Berrut's rational interpolant as a linear operator.

Through nodes :math:`x_0 < \dots < x_{n-1}` with values :math:`f_i`, Berrut's first interpolant is

.. math::

    r(z) = \frac{\sum_i w_i f_i / (z - x_i)}{\sum_i w_i / (z - x_i)}, \qquad w_i = (-1)^i ,

which has no real poles for any node set and interpolates (``r(x_i) = f_i``). The signs alternate by
position in the node list, so when workers straggle the remaining nodes are re-signed 0, 1, 2, ...
"""

from __future__ import annotations

import numpy as np

__all__ = ["berrut_matrix"]


def berrut_matrix(nodes, points) -> np.ndarray:
    """The (m, n) matrix B with B @ f = r(points); a point that hits a node exactly gets a unit row."""
    nodes = np.asarray(nodes, dtype=float)
    points = np.asarray(points, dtype=float)
    signs = np.where(np.arange(nodes.size) % 2 == 0, 1.0, -1.0)
    diff = points[:, None] - nodes[None, :]
    hit = diff == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = signs / diff
        B = terms / terms.sum(axis=1, keepdims=True)
    hit_rows = hit.any(axis=1)
    if hit_rows.any():
        B[hit_rows] = hit[hit_rows].astype(float)
    return B
