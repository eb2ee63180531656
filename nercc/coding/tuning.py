"""Joint tuning of NeRCC's smoothing parameters (lam_enc, lam_dec) for a model and a straggler regime.

The score of a pair is the mean squared error of the decoded predictions against the model's own outputs
on the uncoded inputs, averaged over calibration batches and random straggler sets:

    MSE = mean over batches, straggler sets and inputs k of || f(x_k) - y_hat_k ||^2 .

Cost structure the search exploits: the model f runs once per distinct coded batch, i.e. once per lam_enc
per calibration batch; every lam_dec reuses those outputs, and each decoding matrix (per lam_dec and
straggler set) is built once per search stage, shared by every lam_enc of the stage and then dropped
(memory: one matrix at a time). f(x) of the originals runs once per batch.
No I/O here: f is any callable batch -> batch (an onnxruntime session, a numpy function...).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Union

import numpy as np

from nercc.coding._validation import check_count, check_lam
from nercc.coding.schemes import BACC, CodingScheme, NeRCC, SystematicBACC, SystematicNeRCC

#: The schemes :func:`tune` tunes (the smoothing ones), with the BACC each is compared against.
_TUNABLE = {NeRCC.name: (NeRCC, BACC), SystematicNeRCC.name: (SystematicNeRCC, SystematicBACC)}

__all__ = [
    "TuneResult",
    "tune",
    "evaluate",
    "random_straggler_sets",
    "coded_outputs",
    "refinement_grid",
    "mean_squared_error",
    "default_lam_grid",
]

BatchFunction = Callable[[np.ndarray], np.ndarray]


def default_lam_grid() -> List[float]:
    """0 and one value per decade from 1e-9 to 1: the coarse grid for both lam_enc and lam_dec."""
    return [0.0] + [float(f"{v:.1e}") for v in np.logspace(-9, 0, 10)]


def mean_squared_error(predictions, reference) -> float:
    """Mean over inputs (axis 0) of the squared Euclidean norm of the error over all other axes."""
    p = np.asarray(predictions, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"predictions shape {p.shape} must equal reference shape {r.shape}")
    diff = (p - r).reshape(p.shape[0], -1)
    return float(np.mean(np.sum(diff * diff, axis=1)))


def random_straggler_sets(n_workers: int, n_stragglers: int, n_trials: int, seed=0) -> List[np.ndarray]:
    """``n_trials`` arrived sets: uniformly random subsets of N - S workers, each sorted ascending.

    ``seed`` is anything numpy's ``default_rng`` accepts (an int or a Generator).
    """
    n_workers = check_count("n_workers", n_workers, minimum=2)
    n_stragglers = check_count("n_stragglers", n_stragglers, minimum=0)
    n_trials = check_count("n_trials", n_trials, minimum=1)
    if n_stragglers > n_workers - 2:
        raise ValueError(
            f"n_stragglers must be in 0..{n_workers - 2} (at least 2 of n_workers = {n_workers} must arrive), "
            f"got {n_stragglers}"
        )
    rng = np.random.default_rng(seed)
    keep = n_workers - n_stragglers
    return [np.sort(rng.choice(n_workers, size=keep, replace=False)) for _ in range(n_trials)]


def _call(f: BatchFunction, batch: np.ndarray, rows: int, what: str) -> np.ndarray:
    out = np.asarray(f(batch))
    if out.ndim == 0 or out.shape[0] != rows:
        raise ValueError(
            f"f must map a batch of {rows} rows to {rows} rows ({what}); got output shape {out.shape}"
        )
    if not np.isfinite(out).all():
        raise ValueError(f"f returned NaN or inf on {what}")
    return out.astype(np.float64, copy=False).reshape(rows, -1)


def _batches(x, n_inputs: int, max_batches: int | None) -> np.ndarray:
    """Stack of calibration inputs (M, ...) -> (B, K, ...) consecutive batches; the remainder is dropped."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] < n_inputs:
        got = "a scalar" if x.ndim == 0 else f"{x.shape[0]}"
        raise ValueError(f"x_calib must hold at least n_inputs = {n_inputs} inputs along axis 0, got {got}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"x_calib must be a real numeric array, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("x_calib contains NaN or inf; all values must be finite")
    n_batches = x.shape[0] // n_inputs
    if max_batches is not None:
        n_batches = min(n_batches, check_count("max_batches", max_batches, minimum=1))
    return x[: n_batches * n_inputs].reshape((n_batches, n_inputs) + x.shape[1:])


def _batch_mse(D: np.ndarray, outputs: np.ndarray, arrived: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per-batch MSE of decoding: D (K, |F|), outputs (B, N, C), base (B, K, C) -> (B,)."""
    y_hat = np.matmul(D, outputs[:, arrived])  # (B, K, C)
    err = base - y_hat
    return np.mean(np.sum(err * err, axis=2), axis=1)


def coded_outputs(scheme: CodingScheme, f: BatchFunction, x_batches, batches_per_call: int = 1) -> np.ndarray:
    """f on every batch's N coded inputs: (B, K, ...) -> (B, N, C) float64.

    ``batches_per_call`` coded batches are stacked into one call of f (bigger calls are cheaper for an
    inference session; memory grows with them). Float64 inputs are encoded in float64 and handed to f as
    they come; f decides its own input dtype.
    """
    x_batches = np.asarray(x_batches)
    K, N = scheme.n_inputs, scheme.n_workers
    if x_batches.ndim < 2 or x_batches.shape[1] != K:
        raise ValueError(f"x_batches must have shape (n_batches, n_inputs = {K}, ...), got {x_batches.shape}")
    per_call = check_count("batches_per_call", batches_per_call, minimum=1)
    out = []
    for b0 in range(0, x_batches.shape[0], per_call):
        chunk = x_batches[b0 : b0 + per_call]
        coded = np.concatenate([scheme.encode(xb) for xb in chunk])  # (len(chunk) * N, ...)
        out.append(_call(f, coded, len(chunk) * N, "the coded inputs").reshape(len(chunk), N, -1))
    return np.concatenate(out)


def evaluate(
    scheme: CodingScheme,
    f: BatchFunction | None,
    x_batches,
    straggler_sets: Sequence,
    f_x: np.ndarray | None = None,
    outputs: np.ndarray | None = None,
    paired: bool = False,
) -> np.ndarray:
    """Per-trial MSE of ``scheme`` on f: array (n_batches, n_sets), or (n_batches,) when ``paired``.

    ``x_batches``: (B, K, ...) inputs, one coded batch each; ``straggler_sets``: arrived-worker index sets
    (ascending); ``paired``: batch b is decoded with set b only (B sets). ``f_x``: optional (B, K, ...)
    precomputed f of the uncoded inputs; ``outputs``: optional (B, N, C) precomputed f of the coded inputs
    (see :func:`coded_outputs`; the scheme then only decodes). f runs once per batch on the N coded inputs
    (and once per batch on the originals unless ``f_x`` is given); every straggler set reuses those outputs.
    ``scheme`` may be a :class:`~nercc.coding.setting.CodedSetting` (lam_dec per number of answers).
    """
    x_batches = np.asarray(x_batches)
    K = scheme.n_inputs
    if x_batches.ndim < 2 or x_batches.shape[1] != K:
        raise ValueError(f"x_batches must have shape (n_batches, n_inputs = {K}, ...), got {x_batches.shape}")
    B = x_batches.shape[0]
    if paired and len(straggler_sets) != B:
        raise ValueError(f"paired evaluation needs one straggler set per batch ({B}), got {len(straggler_sets)}")
    if f_x is None:
        base = np.stack([_call(f, xb, K, "the uncoded inputs") for xb in x_batches])
    else:
        base = np.asarray(f_x, dtype=np.float64).reshape(B, K, -1)
    if outputs is None:
        outputs = coded_outputs(scheme, f, x_batches)
    if paired:
        result = np.empty(B)
        for b, arrived in enumerate(straggler_sets):
            arrived = np.asarray(arrived)
            result[b] = _batch_mse(scheme.decoding_matrix(arrived), outputs[b : b + 1], arrived, base[b : b + 1])[0]
        return result
    result = np.empty((B, len(straggler_sets)))
    for t, arrived in enumerate(straggler_sets):
        arrived = np.asarray(arrived)
        result[:, t] = _batch_mse(scheme.decoding_matrix(arrived), outputs, arrived, base)
    return result


@dataclass
class TuneResult:
    """Outcome of :func:`tune`. MSE values are means over calibration batches, straggler sets and inputs."""

    lam_enc: float
    lam_dec: float
    mse: float  #: at (lam_enc, lam_dec)
    mse_interp: float  #: at (0, 0): natural cubic interpolation, the model-agnostic NeRCC
    table: List[Dict[str, float]]  #: every pair scored: {"lam_enc", "lam_dec", "mse"}, best first
    n_inputs: int
    n_workers: int
    n_stragglers: List[int]
    n_batches: int
    n_trials: int  #: straggler sets per straggler count
    mse_bacc: float | None = None  #: BACC on the same batches and straggler sets (``baseline=True``)
    #: best lam_dec per number of arrived workers |F| at the chosen lam_enc (``per_arrived=True``)
    lam_dec_by_arrived: Dict[int, float] = field(default_factory=dict)
    f_calls: int = 0  #: calls of f made by the search (original batches + coded batches)
    scheme_name: str = NeRCC.name  #: the scheme tuned: "nercc" or "nercc-sys"
    geometry: str | None = None  #: the systematic geometry (None: the class default / plain NeRCC)

    def lam_dec_for(self, n_arrived: int) -> float:
        """lam_dec for |F| = n_arrived: the per-|F| value when tuned, else the joint one."""
        return float(self.lam_dec_by_arrived.get(int(n_arrived), self.lam_dec))

    def scheme(self, **cache) -> NeRCC:
        """The tuned scheme (NeRCC or SystematicNeRCC, with the joint lam_dec)."""
        return _make(self.scheme_name, self.geometry, self.n_inputs, self.n_workers, self.lam_enc, self.lam_dec,
                     **cache)

    def profile_entry(self) -> dict:
        """A dict for :func:`nercc.profiles.save_entry` (one straggler count: that count; else the first)."""
        entry = {} if self.scheme_name == NeRCC.name else {"scheme": self.scheme_name}
        entry.update({
            "n_inputs": self.n_inputs,
            "n_workers": self.n_workers,
            "n_stragglers": self.n_stragglers[0],
            "lam_enc": self.lam_enc,
            "lam_dec": self.lam_dec,
            "mse": self.mse,
            "mse_interp": self.mse_interp,
        })
        if self.geometry is not None:
            entry["geometry"] = self.geometry
        if self.mse_bacc is not None:
            entry["mse_bacc"] = self.mse_bacc
        if self.lam_dec_by_arrived:
            entry["lam_dec_by_arrived"] = {str(k): v for k, v in sorted(self.lam_dec_by_arrived.items())}
        return entry


def _check_grid(name: str, grid) -> List[float]:
    try:
        values = [check_lam(name, v) for v in grid]
    except TypeError:
        raise ValueError(f"{name} must be a sequence of finite numbers >= 0, got {grid!r}") from None
    return sorted(set(values) | {0.0})


def refinement_grid(best: float, grid: Sequence[float], per_decade: int) -> List[float]:
    """Points around ``best`` at ``per_decade`` steps per decade, one decade either side.

    Points sit on the lattice 10 ** (i / per_decade) when ``best`` does (so refining twice gives the same
    round numbers, 1e-06 rather than 9.99998e-07); at best = 0 the refinement is around the grid's
    smallest positive value.
    """
    if per_decade <= 0:
        return []
    positive = [g for g in grid if g > 0]
    centre = best if best > 0 else (min(positive) if positive else 0.0)
    if centre == 0.0:
        return []
    exponent = math.log10(centre) * per_decade
    if abs(exponent - round(exponent)) < 0.02:  # best came from this lattice, rounded to 3 digits
        exponent = round(exponent)
    steps = np.arange(-per_decade, per_decade + 1)
    return sorted({float(f"{10.0 ** ((exponent + s) / per_decade):.3g}") for s in steps})


class _Search:
    """The state of one :func:`tune` run: f's outputs per lam_enc, scores per (lam_enc, lam_dec), f calls."""

    def __init__(self, f: BatchFunction, x: np.ndarray, n_workers: int, sets: List[np.ndarray], enc_grid, bar,
                 scheme: str = NeRCC.name, geometry: str | None = None):
        self.f, self.x, self.sets, self.enc_grid, self.bar = f, x, sets, enc_grid, bar
        self.scheme_name, self.geometry = scheme, geometry
        self.n_inputs, self.n_workers = x.shape[1], n_workers
        self.f_calls = 0
        self.base = np.stack([self.run_f(xb, self.n_inputs, "the uncoded inputs") for xb in x])  # (B, K, C)
        self.outputs: Dict[float, np.ndarray] = {}  # lam_enc -> (B, N, C)
        self.scores: Dict[tuple, np.ndarray] = {}  # (lam_enc, lam_dec) -> (n_sets,) MSE averaged over batches

    def make(self, lam_enc: float, lam_dec: float, **cache) -> CodingScheme:
        return _make(self.scheme_name, self.geometry, self.n_inputs, self.n_workers, lam_enc, lam_dec, **cache)

    def run_f(self, batch: np.ndarray, rows: int, what: str) -> np.ndarray:
        out = _call(self.f, batch, rows, what)
        self.f_calls += 1
        self.bar.update(1)
        return out

    def coded(self, scheme: CodingScheme) -> np.ndarray:
        return np.stack([self.run_f(scheme.encode(xb), self.n_workers, "the coded inputs") for xb in self.x])

    def coded_for(self, lam_enc: float) -> np.ndarray:
        if lam_enc not in self.outputs:
            if lam_enc not in self.enc_grid:  # a refinement value: B more calls of f
                self.bar.total += len(self.x)
                self.bar.refresh()
            self.outputs[lam_enc] = self.coded(self.make(lam_enc, 0.0))
        return self.outputs[lam_enc]

    def score(self, lam_encs: Sequence[float], lam_decs: Sequence[float]) -> None:
        for lam_enc in lam_encs:
            self.coded_for(lam_enc)
        # lam_dec outermost: each decoding matrix is built once for all lam_enc and dropped right after,
        # so memory stays at one matrix whatever the grid (K = 200, N = 1000: 1.3 MB, not 0.5 GB)
        for lam_dec in lam_decs:
            todo = [le for le in lam_encs if (le, lam_dec) not in self.scores]
            if not todo:
                continue
            decoder = self.make(0.0, lam_dec, cache_size=0)
            per_set = np.empty((len(todo), len(self.sets)))
            for t, arrived in enumerate(self.sets):
                D = decoder.decoding_matrix(arrived)
                for i, lam_enc in enumerate(todo):
                    per_set[i, t] = _batch_mse(D, self.outputs[lam_enc], arrived, self.base).mean()
            for i, lam_enc in enumerate(todo):
                self.scores[(lam_enc, lam_dec)] = per_set[i]

    def best(self) -> tuple:
        return min(self.scores, key=lambda pair: (self.scores[pair].mean(), pair))

    def refine(self, enc_grid: Sequence[float], dec_grid: Sequence[float], per_decade: int) -> None:
        """Around the best pair: lam_dec, then lam_enc, then lam_dec again."""
        lam_enc, lam_dec = self.best()
        self.score([lam_enc], refinement_grid(lam_dec, dec_grid, per_decade))
        lam_enc, lam_dec = self.best()
        self.score(refinement_grid(lam_enc, enc_grid, per_decade), [lam_dec])
        lam_enc, lam_dec = self.best()
        self.score([lam_enc], refinement_grid(lam_dec, dec_grid, per_decade))

    def bacc_mse(self) -> float:
        cls = _TUNABLE[self.scheme_name][1]
        geometry = {} if self.geometry is None or cls is BACC else {"geometry": self.geometry}
        bacc = cls(self.n_inputs, self.n_workers, cache_size=0, **geometry)
        y = self.coded(bacc)
        return float(np.mean([_batch_mse(bacc.decoding_matrix(a), y, a, self.base).mean() for a in self.sets]))

    def table(self) -> List[Dict[str, float]]:
        """Every scored pair with its mean MSE, best first."""
        return sorted(
            ({"lam_enc": e, "lam_dec": d, "mse": float(v.mean())} for (e, d), v in self.scores.items()),
            key=lambda row: (row["mse"], row["lam_enc"], row["lam_dec"]),
        )

    def lam_dec_by_arrived(self, lam_enc: float) -> Dict[int, float]:
        """The best scored lam_dec at ``lam_enc`` for each arrived count |F| among the sets."""
        sizes = np.array([len(a) for a in self.sets])
        lam_decs = sorted({d for (e, d) in self.scores if e == lam_enc})
        by_arrived: Dict[int, float] = {}
        for m in sorted(set(sizes.tolist())):
            mask = sizes == m
            by_arrived[int(m)] = min(lam_decs, key=lambda d: (self.scores[(lam_enc, d)][mask].mean(), d))
        return by_arrived


def _make(scheme: str, geometry: str | None, n_inputs: int, n_workers: int, lam_enc: float, lam_dec: float,
          **cache) -> CodingScheme:
    cls = _TUNABLE[scheme][0]
    if geometry is not None and cls is not NeRCC:
        cache["geometry"] = geometry
    return cls(n_inputs, n_workers, lam_enc, lam_dec, **cache)


def _check_sizes(n_inputs, n_workers) -> tuple:
    K = check_count("n_inputs", n_inputs, minimum=2)
    N = check_count("n_workers", n_workers, minimum=2)
    if N < K:
        raise ValueError(f"n_workers must be >= n_inputs = {K}, got {N}")
    return K, N


def _straggler_counts(n_stragglers) -> List[int]:
    counts = [n_stragglers] if isinstance(n_stragglers, numbers.Integral) else list(n_stragglers)
    if not counts:
        raise ValueError("n_stragglers must be an integer or a non-empty sequence of integers")
    return [check_count("n_stragglers", s, minimum=0) for s in counts]


def tune(
    f: BatchFunction,
    x_calib,
    n_inputs: int,
    n_workers: int,
    n_stragglers: Union[int, Sequence[int]],
    lam_grid: Sequence[float] | None = None,
    lam_dec_grid: Sequence[float] | None = None,
    n_trials: int = 20,
    seed=0,
    progress: bool = True,
    per_arrived: bool = False,
    refine: int = 3,
    baseline: bool = True,
    max_batches: int | None = None,
    scheme: str = NeRCC.name,
    geometry: str | None = None,
) -> TuneResult:
    """Choose (lam_enc, lam_dec) of NeRCC minimising the decoding MSE of f over random straggler sets.

    ``scheme``: "nercc" (default) or "nercc-sys" (systematic NeRCC: the MSE over all K inputs, where arrived
    systematic answers are exact, has the same minimiser as the MSE of the recovered inputs); ``geometry``:
    its parity points (:func:`nercc.coding.points.systematic_points`; None: the default).

    - ``f``: the model, (rows, ...) -> (rows, ...) (e.g. an onnxruntime session returning probabilities).
    - ``x_calib`` (M, ...): calibration inputs, split into M // K consecutive batches of K (remainder dropped);
      use held-out data, not the data you will report on. ``max_batches``: use at most this many batches.
    - ``n_inputs``, ``n_workers``: K and N. ``n_stragglers``: S, an int or several (one pair tuned over all of
      them); each straggler set keeps a uniformly random N - S of the workers.
    - ``lam_grid``, ``lam_dec_grid``: grids for lam_enc and lam_dec (default :func:`default_lam_grid`, 0 and
      1e-9 ... 1; lam_dec defaults to lam_enc's grid); 0 is always included.
    - ``n_trials``: straggler sets per straggler count, the same sets for every pair; ``seed`` seeds them.
    - ``refine``: after the coarse grid, this many values per decade one decade either side of the best
      lam_dec, then lam_enc, then lam_dec again (0: none).
    - ``per_arrived``: also fit the best lam_dec per arrived count |F| seen, at the chosen lam_enc.
    - ``baseline``: also score BACC (systematic BACC for "nercc-sys") on the same batches and sets (one more
      f call per batch).
    - ``progress``: tqdm progress bar over the calls of f.
    """
    if not callable(f):
        raise ValueError(f"f must be a callable batch -> batch, got {type(f).__name__}")
    if scheme not in _TUNABLE:
        raise ValueError(f"scheme must be one of {', '.join(_TUNABLE)} (the schemes with smoothing), got {scheme!r}")
    K, N = _check_sizes(n_inputs, n_workers)
    _make(scheme, geometry, K, N, 0.0, 0.0, cache_size=0)  # validates N > K and the geometry for nercc-sys
    counts = _straggler_counts(n_stragglers)
    n_trials = check_count("n_trials", n_trials, minimum=1)
    refine = check_count("refine", refine, minimum=0)
    enc_grid = _check_grid("lam_grid", default_lam_grid() if lam_grid is None else lam_grid)
    dec_grid = _check_grid("lam_dec_grid", enc_grid if lam_dec_grid is None else lam_dec_grid)
    x = _batches(x_calib, K, max_batches)
    rng = np.random.default_rng(seed)
    sets = [arrived for s in counts for arrived in random_straggler_sets(N, s, n_trials, rng)]

    from nercc.progress import progress_bar  # tqdm, quiet off a terminal; only tune needs it

    bar = progress_bar(total=len(x) * (len(enc_grid) + 1 + int(baseline)), desc="tune: f calls", unit="call",
               disable=not progress, leave=False)
    try:
        search = _Search(f, x, N, sets, enc_grid, bar, scheme, geometry)
        search.score(enc_grid, dec_grid)
        if refine:
            search.refine(enc_grid, dec_grid, refine)
        search.score([0.0], [0.0])
        lam_enc, lam_dec = search.best()
        mse_bacc = search.bacc_mse() if baseline else None
        by_arrived = search.lam_dec_by_arrived(lam_enc) if per_arrived else {}
    finally:
        bar.close()
    mse = float(search.scores[(lam_enc, lam_dec)].mean())
    if not math.isfinite(mse):  # pragma: no cover - f outputs are checked finite, matrices are finite
        raise ValueError("tuning produced a non-finite MSE")
    return TuneResult(
        lam_enc=lam_enc, lam_dec=lam_dec, mse=mse, mse_interp=float(search.scores[(0.0, 0.0)].mean()),
        table=search.table(), n_inputs=K, n_workers=N, n_stragglers=counts, n_batches=len(x), n_trials=n_trials,
        mse_bacc=mse_bacc, lam_dec_by_arrived=by_arrived, f_calls=search.f_calls, scheme_name=scheme,
        geometry=geometry,
    )
