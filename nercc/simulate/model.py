"""What one simulation is made of: settings, the calibrated service model, measured coding cost, accuracy tables.

The simulated system is the one ``CodedClient`` talks to (DESIGN.md, docs/client.md):

* an open-loop Poisson stream of batches of K inputs;
* coded schemes (``nercc``, ``bacc``): the batch queues at the **master** (one model instance, FIFO), which
  encodes it, then N requests fan out, one per worker;
  baselines (``uncoded``, ``replication``, ``hedged``): local preprocessing, then K (uncoded, hedged) or r K
  (replication, r = N // K) requests;
* every **worker** is a FIFO queue in front of one model instance. A request holds the instance for its
  execution time plus its straggler delay (a straggler is a slow machine: it also delays what queues behind
  it, as the real Triton worker does); its answer reaches the client ``base`` ms after it starts, where
  ``base`` is a per-request latency drawn from a real run (RTT, gRPC, execution, client wake-up);
* the client's **wait policy** (``deadline``, ``first:M``, ``all``) decides when to stop waiting, with the
  client's exact rules (``nercc.client``): decode as soon as the target is met, else at the deadline once the
  minimum is in, never past the hard timeout; stragglers are abandoned, not cancelled, so the workers still do
  their work;
* the coded decode costs the time ``nercc.coding`` measurably takes at that (N, K, |F|), and each coded batch
  carries the expected RelAcc for S = N - |F| from the accuracy benchmark's measured table.

Both engines (``des``: SimPy, ``fast``: vectorized numpy) consume the same pre-drawn random numbers
(:class:`Draws`), so they must agree to float precision; a test checks it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nercc.coding.registry import (  # noqa: F401  (CODED_SCHEMES, SCHEME_ORDER: public here)
    BACC_NAME,
    CODED_SCHEMES,
    HEDGED,
    NERCC0_NAME,
    NERCC_NAME,
    REPLICATION,
    SCHEME_ORDER,
    UNCODED,
)
from nercc.coding.registry import (
    SCHEMES as REGISTRY,
)
from nercc.paths import COMMITTED_RESULTS
from nercc.policy import MIN_CODED_ANSWERS, parse_policy  # noqa: F401  (public here)
from nercc.serving.stragglers import StragglerProfile, parse_straggler

SCHEMES = SCHEME_ORDER
#: Answers within this many ms of a hedge timer count as in time (both engines; float rounding differs).
TIE_MS = 1e-6
#: committed calibration and accuracy tables (the checkout's bench/results, or the wheel's copy of them)
RESULTS_DIR = COMMITTED_RESULTS
SCALE_DIR = RESULTS_DIR / "scale"
DEFAULT_CALIBRATION = SCALE_DIR / "calibration.json"
#: accuracy tables measured for the simulator (same format as bench/results/accuracy_*.json)
SCALE_ACCURACY_DIR = SCALE_DIR / "accuracy"


@dataclass
class SimSettings:
    """One scheme under one load: everything but the random draws."""

    scheme: str
    n_workers: int
    n_inputs: int
    straggler: Union[str, StragglerProfile] = "none"
    rate: float = 10.0  # offered batches per second (Poisson)
    n_batches: int = 10_000
    policy: str = "deadline"  # coded schemes; the baselines always wait for every input (their 'target')
    deadline_ms: float = 40.0
    hard_timeout_ms: float = 2000.0
    hedge_ms: Optional[float] = None  # hedged: None = the p95 of one worker request (from the service model)
    min_answers: int = MIN_CODED_ANSWERS
    seed: int = 0

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; use one of {', '.join(SCHEMES)}")
        for name in ("n_workers", "n_inputs", "n_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.scheme in CODED_SCHEMES and not 2 <= self.n_inputs <= self.n_workers:
            raise ValueError(f"scheme {self.scheme!r} needs 2 <= K <= N, got K={self.n_inputs}, N={self.n_workers}")
        if self.n_inputs > self.n_workers:
            raise ValueError(f"K={self.n_inputs} inputs need at least as many workers, got N={self.n_workers}")
        if self.hedged and self.n_workers < 2:
            raise ValueError("hedged needs N >= 2 workers (the second copy goes to another worker)")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of batches per second, got {self.rate!r}")
        if not (self.deadline_ms > 0 and math.isfinite(self.deadline_ms)):
            raise ValueError(f"deadline_ms must be a positive number, got {self.deadline_ms!r}")
        if not self.hard_timeout_ms >= self.deadline_ms:
            raise ValueError(f"hard_timeout_ms must be >= deadline_ms={self.deadline_ms}, got {self.hard_timeout_ms}")
        if self.hedge_ms is not None and not (self.hedge_ms >= 0 and math.isfinite(self.hedge_ms)):
            raise ValueError(f"hedge_ms must be a number >= 0, got {self.hedge_ms!r}")
        self.profile = parse_straggler(self.straggler)
        self.policy_kind, self.policy_m, self.patience_ms = parse_policy(self.policy, self.n_workers)
        if self.patience_ms is not None and self.patience_ms >= self.deadline_ms:
            raise ValueError(f"policy {self.policy!r}: T must be below deadline_ms={self.deadline_ms:g}")
        if not MIN_CODED_ANSWERS <= self.min_answers <= self.n_workers:
            raise ValueError(f"min_answers must be in [2, N={self.n_workers}], got {self.min_answers}")
        if self.policy_kind == "exact" and not self.systematic:
            raise ValueError(f"policy {self.policy!r}: 'exact' needs a systematic scheme "
                             f"({', '.join(n for n in SCHEMES if REGISTRY[n].systematic)}), got {self.scheme!r}")
        if self.systematic and self.n_workers <= self.n_inputs:
            raise ValueError(f"scheme {self.scheme!r} needs N > K (N - K parity workers), got K={self.n_inputs}, "
                             f"N={self.n_workers}")
        if self.policy_kind in ("first", "exact") and self.policy_m < self.min_answers:
            raise ValueError(f"policy {self.policy!r} decodes before min_answers={self.min_answers}: use M >= it")

    @property
    def coded(self) -> bool:
        return self.scheme in CODED_SCHEMES

    @property
    def systematic(self) -> bool:
        return REGISTRY[self.scheme].systematic

    @property
    def systematic_workers(self) -> np.ndarray:
        """The K workers that get the inputs unchanged (systematic schemes; the coding class's own geometry)."""
        if not self.systematic:
            return np.zeros(0, dtype=int)
        return np.asarray(REGISTRY[self.scheme].coder(self.n_inputs, self.n_workers).systematic_workers, dtype=int)

    @property
    def hedged(self) -> bool:
        return self.scheme == HEDGED

    @property
    def copies(self) -> int:
        return self.n_workers // self.n_inputs if self.scheme == REPLICATION else 1

    @property
    def width(self) -> int:
        """Worker requests sent at the fan-out (hedged: the first copies only)."""
        if self.coded:
            return self.n_workers
        return self.copies * self.n_inputs

    @property
    def compute_per_input(self) -> float:
        """Worker requests per input this scheme is built to spend (hedged: 1 plus the hedges it sends)."""
        if self.coded:
            return self.n_workers / self.n_inputs
        return float(self.copies)


# ---------------------------------------------------------------------------------------------------------
# the calibrated service model


@dataclass
class ServiceModel:
    """Per-request latencies and costs measured in a real run (``nercc simulate --measure``), by fan-out kind.

    ``worker_ms[kind]`` is a (batches, width) matrix of worker round trips from one real batch each (policy
    ``all``, no stragglers), kind in ``coded`` (N-wide fan-out), ``replication`` (N-wide), ``uncoded`` (K-wide).
    When the simulated width equals the calibrated one, whole rows are resampled, which keeps the correlation
    between the requests of one batch on a shared machine (they compete for the same CPU); otherwise single
    requests are drawn independently from the pooled values (workers on separate machines).
    ``pre_ms[kind]``: call -> fan-out (coded: the master's encode round trip; baselines: local preprocessing).
    ``post_ms[kind]``: decision -> return, minus the in-process coding time measured at the calibration setting
    (``coding_at_calibration``) so that the coding time at another (N, K) can be added back.
    ``worker_hold_ms`` / ``master_hold_ms``: how long one request occupies the worker's / master's model instance
    (Triton's own compute statistics from the same run); stragglers add their delay to the hold.
    """

    worker_ms: Dict[str, np.ndarray]
    pre_ms: Dict[str, np.ndarray]
    post_ms: Dict[str, np.ndarray]
    worker_hold_ms: float
    master_hold_ms: float
    n_workers: int
    n_inputs: int
    model: str = "lenet5"
    source: str = ""
    coding_encode_ms: float = 0.0  # nercc.coding encode time at the calibration (N, K) (subtracted from pre)
    coding_decode_ms: float = 0.0  # ... decode time at the calibration (N, K, typical |F|) (subtracted from post)
    info: dict = field(default_factory=dict)
    #: draw every request independently from the pooled round trips instead of per real batch (draw_worker)
    independent: bool = False

    @staticmethod
    def kind_of(scheme: str) -> str:
        if scheme in CODED_SCHEMES:
            return "coded"
        return REPLICATION if scheme == REPLICATION else UNCODED

    @classmethod
    def load(cls, path: Union[str, Path, None] = None) -> ServiceModel:
        path = Path(path) if path is not None else DEFAULT_CALIBRATION
        if not path.exists():
            raise FileNotFoundError(
                f"no calibration file {path}: record one with `nercc simulate --measure DIR` (real LocalCluster run)"
                " or pass --calibration PATH"
            )
        with open(path) as fh:
            data = json.load(fh)
        try:
            return cls(
                worker_ms={k: np.asarray(v, dtype=float) for k, v in data["worker_ms"].items()},
                pre_ms={k: np.asarray(v, dtype=float) for k, v in data["pre_ms"].items()},
                post_ms={k: np.asarray(v, dtype=float) for k, v in data["post_ms"].items()},
                worker_hold_ms=float(data["worker_hold_ms"]),
                master_hold_ms=float(data["master_hold_ms"]),
                n_workers=int(data["n_workers"]),
                n_inputs=int(data["n_inputs"]),
                model=data.get("model", "lenet5"),
                source=str(path),
                coding_encode_ms=float(data.get("coding_encode_ms", 0.0)),
                coding_decode_ms=float(data.get("coding_decode_ms", 0.0)),
                info=data.get("info", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration file {path} is malformed ({exc!r}); re-record it with --measure") from exc

    def one_request_quantile(self, q: float, kind: str = UNCODED) -> float:
        return float(np.quantile(self.worker_ms[kind].ravel(), q))

    def draw_worker(self, rng: np.random.Generator, kind: str, n_batches: int, width: int) -> np.ndarray:
        """(n_batches, width) round trips. Each simulated batch takes one real batch (a calibration row), so a
        slow moment of the machine or the client slows the whole batch, as it did in the real run; at the
        calibrated width the row itself (shuffled), at any other width requests drawn from that row with
        replacement (two-level bootstrap). Drawing every request from the pooled values instead would turn a
        rare machine-wide hiccup into an independent per-request tail that a wide fan-out hits every batch."""
        table = np.asarray(self.worker_ms[kind], dtype=float)
        if table.ndim != 2:
            table = table.reshape(-1, 1)
        if self.independent:
            pool = table.ravel()
            return pool[rng.integers(0, pool.size, size=(n_batches, width))]
        rows = rng.integers(0, table.shape[0], size=n_batches)
        if table.shape[1] == width:
            # which worker got which latency within a real batch is arbitrary: shuffle within the row
            return rng.permuted(table[rows], axis=1)
        cols = rng.integers(0, table.shape[1], size=(n_batches, width))
        return table[rows[:, None], cols]

    def draw(self, table: Dict[str, np.ndarray], rng: np.random.Generator, kind: str, size) -> np.ndarray:
        pool = np.asarray(table[kind], dtype=float).ravel()
        return pool[rng.integers(0, pool.size, size=size)]


# ---------------------------------------------------------------------------------------------------------
# coding cost, measured for real with nercc.coding


class CodingCost:
    """Encode and decode time of ``nercc.coding`` at (N, K), measured in this process once per setting.

    Encode: ``scheme.encode(x)`` of K inputs of the model's shape, matrix already built (the master caches it). Decode: ``scheme.decode(y, F)`` for a fresh
    answer set F (a cache miss: the client meets a new F almost every batch at large N), timed at a few |F|
    and interpolated. CPU time of this process (``time.process_time``: BLAS threads included, time spent waiting
    for a core excluded), the fastest of 15 repetitions: the cost of the operation itself. Wall-clock read up
    to 100x high on the shared 2-core machine while other jobs ran (a descheduled BLAS thread); the machine's
    contention is in the calibrated round trips already.
    """

    _cache: Dict[Tuple, Tuple[float, np.ndarray, np.ndarray]] = {}

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), n_classes: int = 10, reps: int = 15):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = int(n_classes)
        self.reps = int(reps)

    def measure(self, scheme: str, n_workers: int, n_inputs: int) -> Tuple[float, np.ndarray, np.ndarray]:
        """(encode_ms, |F| grid, decode_ms at each |F|) for one coded scheme at (N, K)."""
        key = (scheme, n_workers, n_inputs, self.input_shape, self.n_classes)
        if key in self._cache:
            return self._cache[key]
        from nercc.coding import make_scheme

        rng = np.random.default_rng(0)
        lam = 1e-6 if REGISTRY[scheme].smoothing else 0.0
        x = rng.random((n_inputs, *self.input_shape), dtype=np.float32)
        enc = []
        coder = make_scheme(scheme, n_inputs, n_workers, lam, lam)
        for _ in range(3):  # builds the encoding matrix (the master caches its scheme per setting), warms caches
            coder.encode(x)
        for _ in range(self.reps):
            t0 = time.process_time()
            coder.encode(x)
            enc.append((time.process_time() - t0) * 1e3)
        grid = np.unique(np.linspace(max(2, n_inputs // 2), n_workers, 5).round().astype(int))
        dec = []
        coder = make_scheme(scheme, n_inputs, n_workers, lam, lam)
        for size in grid:
            times = []
            for _ in range(self.reps):
                arrived = np.sort(rng.choice(n_workers, size=int(size), replace=False))
                y = rng.random((int(size), self.n_classes), dtype=np.float32)
                t0 = time.process_time()
                coder.decode(y, list(arrived))
                times.append((time.process_time() - t0) * 1e3)
            dec.append(float(np.min(times)))
        result = (float(np.min(enc)), grid.astype(float), np.asarray(dec))
        self._cache[key] = result
        return result

    def decode_ms(self, scheme: str, n_workers: int, n_inputs: int, n_arrived: np.ndarray) -> np.ndarray:
        _, grid, dec = self.measure(scheme, n_workers, n_inputs)
        return np.interp(np.asarray(n_arrived, dtype=float), grid, dec)


# ---------------------------------------------------------------------------------------------------------
# accuracy from the accuracy benchmark's tables




@dataclass
class AccuracyTable:
    """RelAcc vs stragglers S for one (model, N, K), from ``bench/results/accuracy_<model>_N<N>_K<K>.json``.

    ``rel_acc(scheme, S)`` interpolates linearly in S (systematic schemes: the RelAcc of the recovered inputs); beyond the largest measured S it extrapolates along the
    last segment (floored at 0) and the caller is told how many batches needed that (``beyond``).
    ``scaled_from``: when no table exists for this (N, K) the nearest table with the same N / K is used at the
    same straggler fraction S / N (stated in every result that uses it).
    """

    model: str
    n_workers: int
    n_inputs: int
    stragglers: np.ndarray
    rel: Dict[str, np.ndarray]
    source: str
    scaled_from: Optional[Tuple[int, int]] = None

    def rel_acc(self, scheme: str, n_stragglers: np.ndarray, n_workers: int) -> Tuple[np.ndarray, np.ndarray]:
        s = np.asarray(n_stragglers, dtype=float)
        if self.scaled_from is not None:
            s = s * (self.n_workers / n_workers)
        xs, ys = self.stragglers, self.rel[scheme]
        out = np.interp(s, xs, ys)
        beyond = s > xs[-1]
        if beyond.any() and len(xs) >= 2:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            out = np.where(beyond, np.maximum(ys[-1] + slope * (s - xs[-1]), 0.0), out)
        return out, beyond

    @classmethod
    def find(cls, model: str, n_workers: int, n_inputs: int, directory: Union[str, Path, None] = None
             ) -> Optional[AccuracyTable]:
        """The table at (N, K) if measured, else the nearest N with the same N / K; None if neither exists.

        Looks in ``directory`` (default: bench/results/, bench/results/scale/accuracy/ and the model's own folder,
        where `nercc add-model` writes the table of a user's model)."""
        from nercc.paths import model_dir

        dirs = [Path(directory)] if directory is not None else [RESULTS_DIR, SCALE_ACCURACY_DIR, model_dir(model)]
        for folder in dirs:
            exact = folder / f"accuracy_{model}_N{n_workers}_K{n_inputs}.json"
            if exact.exists():
                return cls.from_file(exact)
        # nearest measured table with the same overhead N / K, used at the same straggler fraction
        best = None
        for path in sorted(p for folder in dirs for p in folder.glob(f"accuracy_{model}_N*_K*.json")):
            try:
                n, k = (int(part[1:]) for part in path.stem.rsplit("_", 2)[-2:])
            except ValueError:
                continue
            if n * n_inputs == k * n_workers:
                if best is None or abs(math.log(n / n_workers)) < abs(math.log(best[0] / n_workers)):
                    best = (n, k, path)
        if best is None:
            return None
        table = cls.from_file(best[2])
        table.scaled_from = (best[0], best[1])
        return table

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> AccuracyTable:
        with open(path) as fh:
            data = json.load(fh)
        ss = sorted(int(s) for s in data["results"])
        rel = {BACC_NAME: np.asarray([data["results"][str(s)][BACC_NAME]["relacc_mean"] for s in ss], dtype=float)}
        # NeRCC: the tuned column where the lams were tuned for this (K, N, S); where the benchmark only had a
        # fallback (the nearest profile entry, tuned at another N) the lam = 0 column (NeRCC-0) instead:
        # lam = 0 is on every tuning grid, and fallback lams from N = 100 are far off at N = 500 .. 1000
        untuned = [str(data.get("lams", {}).get(str(s), {}).get("source", "")).startswith("profile fallback")
                   for s in ss]
        rel[NERCC_NAME] = np.asarray([data["results"][str(s)][NERCC0_NAME if u else NERCC_NAME]["relacc_mean"]
                                   for s, u in zip(ss, untuned)], dtype=float)
        # systematic schemes: the RelAcc of the recovered inputs (those whose own worker straggled) at S; the
        # simulator counts the exact inputs as 1 (nercc.simulate.core.summarize). S = 0 recovers nothing: its
        # value is the next measured S's
        for name in (n for n in SCHEMES if REGISTRY[n].systematic):
            if not all(name in data["results"][str(s)] for s in ss):
                continue
            vals = [data["results"][str(s)][name].get("recovered_relacc") for s in ss]
            filled = [next((v for v in vals[i:] if v is not None), None) for i in range(len(vals))]
            if all(v is not None for v in filled):
                rel[name] = np.asarray(filled, dtype=float)
        note = " (NeRCC: lam = 0 column, no tuned lams at this N)" if any(untuned) else ""
        return cls(model=data["model"], n_workers=int(data["N"]), n_inputs=int(data["K"]),
                   stragglers=np.asarray(ss, dtype=float), rel=rel, source=str(path) + note)


# ---------------------------------------------------------------------------------------------------------
# the random draws both engines consume


@dataclass
class Draws:
    arrival_ms: np.ndarray  # (B,) Poisson arrival times
    pre_ms: np.ndarray  # (B,) call -> fan-out without master queueing
    master_hold_ms: np.ndarray  # (B,) occupancy of the master instance (coded)
    post_ms: np.ndarray  # (B,) decision -> return, without the coding decode
    worker: np.ndarray  # (B, W) worker index of each first-wave request
    row: np.ndarray  # (B, W) input index (baselines) / coded row
    base_ms: np.ndarray  # (B, W) calibrated round trip once a request starts
    delay_ms: np.ndarray  # (B, W) straggler delay
    hold_ms: np.ndarray  # (B, W) instance occupancy without the delay
    hedge_worker: Optional[np.ndarray] = None  # (B, K) hedged: where the second copy goes
    hedge_base_ms: Optional[np.ndarray] = None
    hedge_delay_ms: Optional[np.ndarray] = None
    hedge_ms: float = math.inf
    decode_grid: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (|F| grid, decode ms) for coded schemes
    encode_extra_ms: float = 0.0  # coding encode at (N, K) minus at the calibration setting


def make_draws(settings: SimSettings, service: ServiceModel, cost: Optional[CodingCost] = None) -> Draws:
    s = settings
    rng = np.random.default_rng([s.seed, SCHEMES.index(s.scheme)])
    b, n, k = s.n_batches, s.n_workers, s.n_inputs
    kind = ServiceModel.kind_of(s.scheme)
    arrival = np.cumsum(rng.exponential(1e3 / s.rate, size=b))
    pre = service.draw(service.pre_ms, rng, kind, b)
    post = service.draw(service.post_ms, rng, kind, b)
    width = s.width
    base = service.draw_worker(rng, kind, b, width)
    hold = np.full((b, width), service.worker_hold_ms)
    delay = np.asarray(s.profile.sample_delay_ms(rng, compute_ms=hold.ravel(), size=b * width)).reshape(b, width)
    if s.coded:
        worker = np.broadcast_to(np.arange(n), (b, n)).copy()
        row = worker.copy()
    else:
        copies = s.copies
        j = np.arange(copies * k)
        if copies * k < n:  # the client rotates the K workers it uses from call to call
            offset = (np.arange(b)[:, None] * k) % n
        else:
            offset = np.zeros((b, 1), dtype=int)
        worker = (offset + j[None, :]) % n
        row = np.broadcast_to(j % k, (b, copies * k)).copy()
    draws = Draws(arrival, pre, np.full(b, service.master_hold_ms), post, worker, row, base, delay, hold)
    if s.hedged:
        # as nercc.client.core.plan_requests: input j's backup is the idle worker (offset + K + j) mod N, and
        # inputs j >= N - K get none (every worker already holds a first copy); -1 marks "no backup"
        draws.hedge_worker = np.where(np.arange(k)[None, :] < n - k, (worker + k) % n, -1)
        draws.hedge_base_ms = service.draw_worker(rng, kind, b, k)
        draws.hedge_delay_ms = np.asarray(
            s.profile.sample_delay_ms(rng, compute_ms=service.worker_hold_ms, size=b * k)).reshape(b, k)
        draws.hedge_ms = default_hedge_ms(s, service) if s.hedge_ms is None else float(s.hedge_ms)
    if s.coded:
        cost = cost or CodingCost()
        enc, grid, dec = cost.measure(s.scheme, n, k)
        draws.decode_grid = (grid, dec)
        draws.encode_extra_ms = enc - service.coding_encode_ms
        draws.post_ms = np.maximum(post - service.coding_decode_ms, 0.0)
        draws.pre_ms = np.maximum(pre + draws.encode_extra_ms, 0.0)
    return draws


def default_hedge_ms(settings: SimSettings, service: ServiceModel, n: int = 200_000) -> float:
    """The p95 of one worker request's latency (calibrated round trip + straggler delay), as the client does."""
    rng = np.random.default_rng([settings.seed, 99])
    base = service.draw(service.worker_ms, rng, UNCODED, n)
    delay = settings.profile.sample_delay_ms(rng, compute_ms=service.worker_hold_ms, size=n)
    return float(np.quantile(base + delay, 0.95))


@dataclass
class BatchResults:
    """Per simulated batch: what the loadtest logs per batch."""

    latency_ms: np.ndarray
    n_arrived: np.ndarray  # coded: |F|; baselines: K
    n_requests: np.ndarray  # worker requests sent (compute)
    late: np.ndarray  # used an answer that came after the deadline
    failed: np.ndarray  # not enough answers within the hard timeout
    encode_ms: np.ndarray
    fanout_ms: np.ndarray
    decode_ms: np.ndarray
    #: inputs whose prediction is a regression estimate: coded plain K, systematic the systematic answers
    #: missing at the decision, baselines 0 (None: not recorded)
    n_recovered: Optional[np.ndarray] = None


def batch_results_from(parts: List[BatchResults]) -> BatchResults:
    return BatchResults(*(None if any(getattr(p, f) is None for p in parts) else
                          np.concatenate([getattr(p, f) for p in parts]) for f in BatchResults.__dataclass_fields__))
