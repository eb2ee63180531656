"""Coding schemes: K inputs -> N coded inputs (encode), answers of the arrived workers -> K outputs (decode).

Both steps are linear along the first axis, so a scheme is two matrices: the (N, K) encoding matrix and,
for each set of arrived workers F, a (K, |F|) decoding matrix. Matrices are built in float64, cached, and
cast once per dtype; encode/decode are one matrix product in the data's dtype.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence, Tuple, Union

import numpy as np

from nercc.coding._validation import (
    all_finite,
    check_arrived,
    check_count,
    check_data,
    check_finite,
    check_lam,
)
from nercc.coding.berrut import berrut_matrix
from nercc.coding.points import SYSTEMATIC_GEOMETRIES, chebyshev_first, chebyshev_second, systematic_points
from nercc.coding.splines import smoothing_spline_matrix

__all__ = ["CodingScheme", "NeRCC", "BACC", "SystematicNeRCC", "SystematicBACC"]

Arrived = Union[Sequence[int], np.ndarray]

#: Default bound of the decoding-matrix cache: entries and bytes (float64 and float32 copies together).
DEFAULT_CACHE_SIZE = 128
DEFAULT_CACHE_BYTES = 64 * 2**20


#: float32 copies drop entries below this fraction of the largest one (see _flush_negligible)
FLOAT32_DROP_BELOW = 2.0**-64  # 5.4e-20


def _flush_negligible(matrix: np.ndarray, relative: float = 0.0) -> None:
    """Set entries below ``relative * max|matrix|`` and subnormal entries to 0, in place.

    Spline operators decay exponentially away from each evaluation point, so with hundreds of knots the far
    entries become tiny: subnormal after a float32 cast, or small enough that their products with the data
    are subnormal. Subnormal operands make BLAS matmuls several times slower (measured: float32 decoding of
    K = 200 from 800 workers, 2.4-24x the plain matmul). Entries below 2**-64 of the largest one change a
    float32 result by far less than its rounding error (2**-24).
    """
    magnitude = np.abs(matrix)
    threshold = max(np.finfo(matrix.dtype).tiny, relative * float(magnitude.max(initial=0.0)))
    matrix[magnitude < threshold] = 0.0


class _Operator:
    """A float64 matrix and its lazily made float32 copy, both read-only."""

    __slots__ = ("float64", "_float32", "_lock")

    def __init__(self, matrix: np.ndarray):
        # the builders return fresh arrays, so no copy. No flush in float64: the banded solve's round-off
        # keeps entries above ~1e-60, far from float64's subnormals (2.2e-308)
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        matrix.setflags(write=False)
        self.float64 = matrix
        self._float32 = None
        self._lock = threading.Lock()

    def as_dtype(self, dtype) -> np.ndarray:
        if dtype == np.float64:
            return self.float64
        if self._float32 is None:
            with self._lock:
                if self._float32 is None:
                    m32 = self.float64.astype(np.float32)
                    _flush_negligible(m32, FLOAT32_DROP_BELOW)
                    m32.setflags(write=False)
                    self._float32 = m32
        return self._float32

    @property
    def nbytes(self) -> int:
        return self.float64.nbytes * 3 // 2  # counts the float32 copy too, made or not


def _raw_key(arrived) -> tuple | None:
    """A hashable key for a cache lookup before validation, or None when there is no cheap one."""
    try:
        if isinstance(arrived, np.ndarray):
            if arrived.ndim != 1 or arrived.dtype.kind not in "iu":
                return None
            key = tuple(arrived.tolist())
        elif isinstance(arrived, (list, tuple)):
            key = tuple(arrived)
        else:
            return None
        hash(key)
    except TypeError:
        return None
    return key


class CodingScheme:
    """Common machinery: nodes, validation, encode/decode, the LRU cache of decoding matrices.

    Subclasses implement ``_build_encoding()`` (N, K) and ``_regression_matrix(knot_workers, points)``, the
    decoding regression through the betas of ``knot_workers`` evaluated at ``points``.
    """

    name = "base"
    #: True for the systematic codes (:class:`SystematicNeRCC`, :class:`SystematicBACC`)
    systematic = False

    def __init__(
        self,
        n_inputs: int,
        n_workers: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        self.n_inputs = check_count("n_inputs", n_inputs, minimum=2)
        self.n_workers = check_count("n_workers", n_workers, minimum=2)
        if self.n_workers < self.n_inputs:
            raise ValueError(
                f"n_workers must be >= n_inputs = {self.n_inputs} (at least one worker per input), "
                f"got {self.n_workers}"
            )
        self.cache_size = check_count("cache_size", cache_size, minimum=0)
        self.cache_bytes = check_count("cache_bytes", cache_bytes, minimum=0)
        alphas = chebyshev_first(self.n_inputs)
        betas = self._worker_points()
        alphas.setflags(write=False)
        betas.setflags(write=False)
        self.alphas = alphas
        self.betas = betas
        self._encoding = None
        self._cache: OrderedDict[Tuple[int, ...], _Operator] = OrderedDict()
        self._cache_used = 0
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    def _worker_points(self) -> np.ndarray:
        """The N betas: second-kind Chebyshev points (the systematic codes override it)."""
        return chebyshev_second(self.n_workers)

    # -- systematic view (plain codes: no systematic worker, every worker is a parity worker) ----------
    @property
    def systematic_workers(self) -> Tuple[int, ...]:
        """The K workers whose point is an alpha (they get the inputs unchanged), ascending; () here."""
        return ()

    @property
    def parity_workers(self) -> Tuple[int, ...]:
        """The workers that get coded inputs, ascending: all N here."""
        return tuple(range(self.n_workers))

    def parity_matrix(self) -> np.ndarray:
        """The (N - K', K) rows of the encoding matrix at the parity workers (here: the whole matrix)."""
        return self.encoding_matrix()

    def encode_parity(self, x) -> np.ndarray:
        """The coded inputs of the parity workers only (what a master computes); here :meth:`encode`."""
        return self.encode(x)

    def recovered(self, arrived: Arrived) -> np.ndarray:
        """bool (K,): True where output k is a regression estimate, not its own worker's answer (here: all)."""
        check_arrived(arrived, self.n_workers)
        return np.ones(self.n_inputs, dtype=bool)

    # -- to implement -------------------------------------------------------------------------------
    def _build_encoding(self) -> np.ndarray:
        raise NotImplementedError

    def _regression_matrix(self, knot_workers: Tuple[int, ...], points: np.ndarray) -> np.ndarray:
        """(len(points), len(knot_workers)): the decoding regression through those workers' betas, at points."""
        raise NotImplementedError

    def _build_decoding(self, arrived: Tuple[int, ...]) -> np.ndarray:
        return self._regression_matrix(arrived, self.alphas)

    # -- matrices -----------------------------------------------------------------------------------
    def _finite(self, matrix: np.ndarray, which: str) -> np.ndarray:
        """The built matrix, or a ValueError when it overflowed (a lam near the float64 maximum)."""
        if not np.isfinite(matrix).all():
            lam = getattr(self, "lam_enc" if which == "encoding" else "lam_dec", None)
            detail = f" (lam_{'enc' if which == 'encoding' else 'dec'} = {lam!r} is too large: any lam above " \
                     "~1e12 already gives the least-squares line)" if lam is not None else ""
            raise ValueError(f"the {which} matrix of {self!r} is not finite{detail}")
        return matrix

    def _encoding_operator(self) -> _Operator:
        if self._encoding is None:
            with np.errstate(over="ignore", invalid="ignore"):
                op = _Operator(self._finite(self._build_encoding(), "encoding"))
            with self._lock:
                if self._encoding is None:
                    self._encoding = op
        return self._encoding

    def _decoding_operator(self, arrived: Arrived) -> _Operator:
        # Serving decodes the same few arrived sets over and over: look the raw key up first, and validate
        # only on a miss (a key in the cache was validated when it went in).
        raw = _raw_key(arrived)
        if raw is not None:
            with self._lock:
                op = self._cache.get(raw)
                if op is not None:
                    self._cache.move_to_end(raw)
                    self.cache_hits += 1
                    return op
        key = check_arrived(arrived, self.n_workers)
        with self._lock:
            op = self._cache.get(key)
            if op is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return op
            self.cache_misses += 1
        with np.errstate(over="ignore", invalid="ignore"):  # outside the lock: other threads keep decoding
            op = self._make_decoding_operator(key, self._finite(self._build_decoding(key), "decoding"))
        return self._cache_put(key, op)

    def _make_decoding_operator(self, arrived: Tuple[int, ...], matrix: np.ndarray) -> _Operator:
        return _Operator(matrix)

    def _build_loo_residual(self, arrived: Tuple[int, ...]) -> np.ndarray:
        """L = I - P, P[i, j] = weight of answer j in the decoding regression fitted without i, at beta_i."""
        n = len(arrived)
        L = np.eye(n)
        betas = self.betas[list(arrived)]
        for i in range(n):
            others = arrived[:i] + arrived[i + 1:]
            row = self._regression_matrix(others, betas[i : i + 1])[0]
            L[i, :i] -= row[:i]
            L[i, i + 1:] -= row[i:]
        return L

    def loo_residual_operator(self, arrived: Arrived) -> np.ndarray:
        """The (|F|, |F|) float64 leave-one-out residual operator L of the decoding regression (read-only).

        Row i of ``L @ y`` is y_i minus the decoding regression fitted to the other arrived answers,
        evaluated at beta_i (see :mod:`nercc.coding.robust`). Cached with the decoding matrices.
        """
        key = check_arrived(arrived, self.n_workers)
        if len(key) < 3:
            raise ValueError(f"arrived must hold at least 3 workers for leave-one-out residuals, got {len(key)}")
        cache_key = ("loo",) + key
        with self._lock:
            op = self._cache.get(cache_key)
            if op is not None:
                self._cache.move_to_end(cache_key)
                return op.float64
        with np.errstate(over="ignore", invalid="ignore"):
            op = _Operator(self._finite(self._build_loo_residual(key), "decoding"))
        self._cache_put(cache_key, op)
        return op.float64

    def _cache_put(self, key, op: _Operator) -> _Operator:
        if self.cache_size == 0 or op.nbytes > self.cache_bytes:
            return op
        with self._lock:
            existing = self._cache.get(key)
            if existing is not None:  # another thread built it meanwhile: keep one object per key
                self._cache.move_to_end(key)
                return existing
            self._cache[key] = op
            self._cache_used += op.nbytes
            while len(self._cache) > self.cache_size or self._cache_used > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cache_used -= old.nbytes
        return op

    def encoding_matrix(self) -> np.ndarray:
        """The (N, K) float64 encoding matrix (read-only): coded = E @ x along the first axis."""
        return self._encoding_operator().float64

    def decoding_matrix(self, arrived: Arrived) -> np.ndarray:
        """The (K, len(arrived)) float64 decoding matrix (read-only) for the ascending worker indices.

        Cached per arrived set in a bounded LRU; the same set returns the same array object while cached.
        """
        return self._decoding_operator(arrived).float64

    @property
    def nbytes(self) -> int:
        """Bytes held by this scheme's matrices: the encoding operator (once built) and the decoding cache."""
        with self._lock:
            encoding = self._encoding.nbytes if self._encoding is not None else 0
            return encoding + self._cache_used

    def cache_info(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._cache),
                "bytes": self._cache_used,
                "hits": self.cache_hits,
                "misses": self.cache_misses,
                "max_entries": self.cache_size,
                "max_bytes": self.cache_bytes,
            }

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cache_used = 0

    # -- data ---------------------------------------------------------------------------------------
    @staticmethod
    def _apply(matrix: np.ndarray, data: np.ndarray) -> np.ndarray:
        flat = data.reshape(data.shape[0], -1)
        return (matrix @ flat).reshape((matrix.shape[0],) + data.shape[1:])

    def encode(self, x) -> np.ndarray:
        """Coded inputs: x (K, ...) -> (N, ...), same trailing shape; float32 stays float32, else float64."""
        x = check_data("x", x, self.n_inputs, "one per input, n_inputs")
        check_finite("x", x)
        return self._apply(self._encoding_operator().as_dtype(x.dtype), x)

    def decode(self, y, arrived: Arrived) -> np.ndarray:
        """Approximate f(x): y (len(arrived), ...) answers of the arrived workers -> (K, ...)."""
        op = self._decoding_operator(arrived)
        y = check_data("y", y, op.float64.shape[1], "one per arrived worker, len(arrived)")
        out = self._apply(op.as_dtype(y.dtype), y)
        # every output row mixes every input row (0 * inf is nan), so a finite output means a finite y;
        # checking the K output rows is cheaper than the |F| input rows
        if not all_finite(out):
            check_finite("y", y)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_inputs={self.n_inputs}, n_workers={self.n_workers})"


class NeRCC(CodingScheme):
    """Nested regression coded computing with natural cubic smoothing splines.

    Encoding fits the smoothing spline with penalty ``lam_enc`` through (alphas, x) and evaluates it at
    the betas; decoding fits one with ``lam_dec`` through (betas[arrived], y) and evaluates it at the
    alphas. lam has the meaning of :func:`scipy.interpolate.make_smoothing_spline` (sum of squared
    residuals + lam * integral of s''^2); ``lam_enc = lam_dec = 0`` is natural cubic spline
    interpolation. Splines are linear beyond the end knots.
    """

    name = "nercc"

    def __init__(
        self,
        n_inputs: int,
        n_workers: int,
        lam_enc: float = 0.0,
        lam_dec: float = 0.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        self.lam_enc = check_lam("lam_enc", lam_enc)
        self.lam_dec = check_lam("lam_dec", lam_dec)
        super().__init__(n_inputs, n_workers, cache_size=cache_size, cache_bytes=cache_bytes)

    def _build_encoding(self) -> np.ndarray:
        return smoothing_spline_matrix(self.alphas, self.lam_enc, self.betas)

    def _regression_matrix(self, knot_workers: Tuple[int, ...], points: np.ndarray) -> np.ndarray:
        return smoothing_spline_matrix(self.betas[list(knot_workers)], self.lam_dec, points)

    def __repr__(self) -> str:
        return (
            f"NeRCC(n_inputs={self.n_inputs}, n_workers={self.n_workers}, "
            f"lam_enc={self.lam_enc!r}, lam_dec={self.lam_dec!r})"
        )


class BACC(CodingScheme):
    """Berrut approximate coded computing: Berrut's rational interpolant for encoding and decoding.

    Decoding re-signs the arrived workers by their position in the arrived list (see ``berrut``).
    """

    name = "bacc"

    def _build_encoding(self) -> np.ndarray:
        return berrut_matrix(self.alphas, self.betas)

    def _regression_matrix(self, knot_workers: Tuple[int, ...], points: np.ndarray) -> np.ndarray:
        return berrut_matrix(self.betas[list(knot_workers)], points)



class _SystematicOperator(_Operator):
    """A systematic decoding matrix with its plan: which outputs are copies of which answers, which are estimated.

    ``copy_rows[i]`` is the output row that answer ``copy_cols[i]`` (a position in the arrived list) fills
    verbatim; ``missing_rows`` are the outputs whose own systematic worker is not in the arrived set, estimated
    with the rows ``missing_rows`` of the matrix (made per dtype on first use, from the dtype's copy).
    """

    __slots__ = ("copy_rows", "copy_cols", "missing_rows", "_missing")

    def __init__(self, matrix: np.ndarray, copy_rows: np.ndarray, copy_cols: np.ndarray, missing_rows: np.ndarray):
        super().__init__(matrix)
        for arr in (copy_rows, copy_cols, missing_rows):
            arr.setflags(write=False)
        self.copy_rows, self.copy_cols, self.missing_rows = copy_rows, copy_cols, missing_rows
        self._missing = {}

    def missing(self, dtype) -> np.ndarray:
        """The (len(missing_rows), |F|) rows of the decoding matrix that estimate the missing inputs."""
        m = self._missing.get(np.dtype(dtype))
        if m is None:
            m = np.ascontiguousarray(self.as_dtype(dtype)[self.missing_rows])
            m.setflags(write=False)
            self._missing[np.dtype(dtype)] = m  # a benign race: two threads may both build the same rows
        return m

    @property
    def nbytes(self) -> int:
        k, f = self.float64.shape
        return super().nbytes + self.missing_rows.size * f * 12  # the float64 and float32 missing rows


class _Systematic:
    r"""Systematic coding on top of a plain scheme (a mixin: ``class SystematicNeRCC(_Systematic, NeRCC)``).

    The worker points contain the data points: ``betas[systematic_workers[k]] == alphas[k]`` exactly
    (:func:`nercc.coding.points.systematic_points`). Write :math:`\mathcal{S}` for the systematic workers and
    :math:`\mathcal{P}` for the N - K parity workers.

    Encoding
        :math:`\tilde x_{\mathcal{S}_k} = x_k` (a copy, no arithmetic: bit-exact) and
        :math:`\tilde x_{\mathcal{P}} = P x`, P the plain scheme's encoder (smoothing spline with ``lam_enc``
        through the alphas, or Berrut's interpolant) evaluated at the parity points. The encoding matrix is
        P at the parity rows and the unit vector :math:`e_k` at row :math:`\mathcal{S}_k`.
    Decoding
        For arrived workers F with answers :math:`y_F`: output k is :math:`y_{\mathcal{S}_k}` itself (a copy)
        when :math:`\mathcal{S}_k \in F`; otherwise the plain scheme's decoding regression fitted on *all*
        arrived answers (systematic ones included) and evaluated at :math:`\alpha_k`. Row k of the decoding
        matrix is the unit vector at the position of :math:`\mathcal{S}_k` in F, or the regression's row.

    When every systematic worker answered, decoding does no arithmetic and returns the exact answers of the
    uncoded inputs; the regression only fills in the inputs whose own worker is late (:meth:`recovered`).
    """

    systematic = True

    def _worker_points(self) -> np.ndarray:
        betas, workers = systematic_points(self.n_inputs, self.n_workers, self.geometry)
        n, k = self.n_workers, self.n_inputs
        sys_idx = np.asarray(workers, dtype=np.intp)
        is_sys = np.zeros(n, dtype=bool)
        is_sys[sys_idx] = True
        input_of = np.full(n, -1, dtype=np.intp)
        input_of[sys_idx] = np.arange(k)
        for arr in (sys_idx, input_of):
            arr.setflags(write=False)
        self._sys_idx = sys_idx
        self._par_idx = np.flatnonzero(~is_sys)
        self._par_idx.setflags(write=False)
        self._input_of_worker = input_of  # worker -> its input k, or -1 for a parity worker
        self._systematic_workers = tuple(workers)
        self._parity_workers = tuple(int(w) for w in self._par_idx)
        self._parity = None
        return betas

    @property
    def systematic_workers(self) -> Tuple[int, ...]:
        """The K workers at the alphas, ascending: worker ``systematic_workers[k]`` gets input k unchanged."""
        return self._systematic_workers

    @property
    def parity_workers(self) -> Tuple[int, ...]:
        """The N - K workers that get coded inputs, ascending."""
        return self._parity_workers

    # -- encoding -----------------------------------------------------------------------------------
    def _build_encoding(self) -> np.ndarray:
        matrix = super()._build_encoding()
        matrix[self._sys_idx] = 0.0
        matrix[self._sys_idx, np.arange(self.n_inputs)] = 1.0
        return matrix

    def _parity_operator(self) -> _Operator:
        if self._parity is None:
            op = _Operator(self.encoding_matrix()[self._par_idx])
            with self._lock:
                if self._parity is None:
                    self._parity = op
        return self._parity

    def parity_matrix(self) -> np.ndarray:
        """The (N - K, K) float64 encoding rows of the parity workers (read-only)."""
        return self._parity_operator().float64

    def encode_parity(self, x) -> np.ndarray:
        """Only the parity workers' coded inputs: x (K, ...) -> (N - K, ...), one matrix product ``P @ x``."""
        x = check_data("x", x, self.n_inputs, "one per input, n_inputs")
        check_finite("x", x)
        return self._apply(self._parity_operator().as_dtype(x.dtype), x)

    def encode(self, x) -> np.ndarray:
        """Coded inputs (N, ...): x[k] copied bit-exactly to worker ``systematic_workers[k]``, ``P @ x`` elsewhere."""
        x = check_data("x", x, self.n_inputs, "one per input, n_inputs")
        check_finite("x", x)
        out = np.empty((self.n_workers,) + x.shape[1:], dtype=x.dtype)
        out[self._sys_idx] = x
        out[self._par_idx] = self._apply(self._parity_operator().as_dtype(x.dtype), x)
        return out

    # -- decoding -----------------------------------------------------------------------------------
    def _plan(self, arrived: Tuple[int, ...]):
        inputs = self._input_of_worker[np.asarray(arrived, dtype=np.intp)]
        copy_cols = np.flatnonzero(inputs >= 0)
        copy_rows = inputs[copy_cols]
        missing = np.ones(self.n_inputs, dtype=bool)
        missing[copy_rows] = False
        return copy_rows, copy_cols, np.flatnonzero(missing)

    def _build_decoding(self, arrived: Tuple[int, ...]) -> np.ndarray:
        matrix = self._regression_matrix(arrived, self.alphas)
        copy_rows, copy_cols, _ = self._plan(arrived)
        matrix[copy_rows] = 0.0
        matrix[copy_rows, copy_cols] = 1.0
        return matrix

    def _make_decoding_operator(self, arrived: Tuple[int, ...], matrix: np.ndarray) -> _Operator:
        return _SystematicOperator(matrix, *self._plan(arrived))

    def decode(self, y, arrived: Arrived) -> np.ndarray:
        """f(x) from the arrived answers: own answers copied bit-exactly, the regression for the missing inputs.

        y (len(arrived), ...) -> (K, ...); float32 stays float32. No arithmetic at all when every
        systematic worker is in ``arrived``.
        """
        op = self._decoding_operator(arrived)
        y = check_data("y", y, op.float64.shape[1], "one per arrived worker, len(arrived)")
        out = np.empty((self.n_inputs,) + y.shape[1:], dtype=y.dtype)
        out[op.copy_rows] = y[op.copy_cols]
        if op.missing_rows.size:
            out[op.missing_rows] = self._apply(op.missing(y.dtype), y)
        if not all_finite(out):
            check_finite("y", y)
        return out

    def recovered(self, arrived: Arrived) -> np.ndarray:
        """bool (K,): True where input k's own systematic worker is not in ``arrived`` (its output is estimated)."""
        key = check_arrived(arrived, self.n_workers)
        inputs = self._input_of_worker[np.asarray(key, dtype=np.intp)]
        out = np.ones(self.n_inputs, dtype=bool)
        out[inputs[inputs >= 0]] = False
        return out


class SystematicNeRCC(_Systematic, NeRCC):
    """Systematic NeRCC: K workers get the inputs unchanged, N - K get smoothing-spline parity inputs.

    See :class:`_Systematic` for encoding and decoding; ``geometry`` chooses the parity points
    (:func:`nercc.coding.points.systematic_points`). Needs N > K.
    """

    name = "nercc-sys"

    def __init__(
        self,
        n_inputs: int,
        n_workers: int,
        lam_enc: float = 0.0,
        lam_dec: float = 0.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        geometry: str = SYSTEMATIC_GEOMETRIES[0],
    ):
        self.geometry = geometry
        super().__init__(n_inputs, n_workers, lam_enc, lam_dec, cache_size=cache_size, cache_bytes=cache_bytes)

    def __repr__(self) -> str:
        return (
            f"SystematicNeRCC(n_inputs={self.n_inputs}, n_workers={self.n_workers}, "
            f"lam_enc={self.lam_enc!r}, lam_dec={self.lam_dec!r}, geometry={self.geometry!r})"
        )


class SystematicBACC(_Systematic, BACC):
    """Systematic BACC: K workers get the inputs unchanged, N - K get Berrut parity inputs. Needs N > K."""

    name = "bacc-sys"

    def __init__(
        self,
        n_inputs: int,
        n_workers: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        geometry: str = SYSTEMATIC_GEOMETRIES[0],
    ):
        self.geometry = geometry
        super().__init__(n_inputs, n_workers, cache_size=cache_size, cache_bytes=cache_bytes)

    def __repr__(self) -> str:
        return f"SystematicBACC(n_inputs={self.n_inputs}, n_workers={self.n_workers}, geometry={self.geometry!r})"
