"""Argument checks shared by the coding core; every failure is a ValueError naming the argument."""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_count(name: str, value, minimum: int) -> int:
    """An integer >= minimum (Python or numpy integer; bool and float are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_lam(name: str, value) -> float:
    """A finite float >= 0."""
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return lam


def check_arrived(arrived, n_workers: int) -> tuple:
    """Ascending, distinct worker indices in 0..n_workers-1, at least 2 of them, as a tuple of ints."""
    allowed = f"ascending distinct worker indices in 0..{n_workers - 1}, at least 2"
    try:
        idx = np.asarray(arrived)
    except Exception:  # pragma: no cover - ragged input on old numpy
        raise ValueError(f"arrived must be {allowed}, got {arrived!r}") from None
    if idx.ndim != 1:
        raise ValueError(f"arrived must be a 1-D sequence of {allowed}, got shape {idx.shape}")
    if idx.size < 2:
        raise ValueError(f"arrived must hold at least 2 workers ({allowed}), got {idx.size}")
    if idx.dtype.kind not in "iu":
        if idx.dtype.kind == "f" and np.all(np.isfinite(idx)) and np.all(idx == np.round(idx)):
            idx = idx.astype(np.int64)
        else:
            raise ValueError(f"arrived must be integer worker indices ({allowed}), got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n_workers:
        bad = idx[(idx < 0) | (idx >= n_workers)]
        raise ValueError(f"arrived has out-of-range indices {bad.tolist()}: allowed {allowed}")
    steps = np.diff(idx)
    if np.any(steps == 0):
        dup = np.unique(idx[1:][steps == 0])
        raise ValueError(f"arrived has duplicated indices {dup.tolist()}: must be {allowed}")
    if np.any(steps < 0):
        raise ValueError(f"arrived must be sorted ascending ({allowed}), got {idx.tolist()}")
    return tuple(idx.tolist())  # Python ints


def check_data(name: str, data, rows: int, rows_meaning: str) -> np.ndarray:
    """A real array with ``rows`` rows along axis 0; float32 stays float32, everything else -> float64."""
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 0 or arr.shape[0] != rows:
        got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows (shape {arr.shape})"
        raise ValueError(f"{name} must have {rows} rows along axis 0 ({rows_meaning}), got {got}")
    return arr


def all_finite(arr: np.ndarray) -> bool:
    """True when every value is finite; ``arr`` is a float32 or float64 array.

    Fast path: x . x is one BLAS pass with no temporary, and it is finite whenever every value is (unless
    it overflows, and then the exact elementwise check decides).
    """
    if arr.flags.c_contiguous and arr.size:
        flat = arr.reshape(-1)
        if np.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.isfinite(arr).all())


def check_finite(name: str, arr: np.ndarray) -> None:
    if not all_finite(arr):
        raise ValueError(f"{name} contains NaN or inf; all values must be finite")
