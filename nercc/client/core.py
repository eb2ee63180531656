"""The transport-free core of the coded client: plan the requests, decide when to stop waiting, decode.

No I/O, no clock, no asyncio: every function here is fed with numbers (times in seconds on any monotonic
clock the transport uses) and returns what to do next. The transports (:mod:`nercc.client.aio` on
``tritonclient.grpc.aio``, :mod:`nercc.client.gevent` on ``tritonclient.http`` under gevent) send the
requests the plan names, feed :class:`WaitState` with the answers and failures as they arrive and with clock
ticks at :meth:`WaitState.next_wakeup`, and decode when it says so.

Schemes (which input goes to which worker, :func:`plan_requests`):

``nercc`` / ``bacc`` (coded)
    coded input i → worker i, N requests.
systematic coded schemes (``nercc-sys`` / ``bacc-sys``, ``systematic = True`` in the registry)
    as coded, but worker ``systematic_workers[k]`` gets input k itself (its answer is f(x_k), exact) and the
    other N - K get parity rows; the plan lists the K systematic requests first. The client sends them at
    once and the parity requests when the parity rows are ready (``deferred``, see :class:`WaitState`).
``uncoded``
    input k → one worker (K of the N workers, rotating from batch to batch), all K answers needed.
``replication``
    input k → r = N // K workers; the first answer per input wins.
``hedged`` ("The Tail at Scale", Dean & Barroso 2013)
    uncoded, plus a second copy of input k's request to an idle worker once the first has not answered
    within the hedge delay (or at once when the first failed); the first answer per input wins.

Policies (:func:`parse_policy`), the deadline counting from the call: ``deadline`` waits until every request
answered or the deadline passed; ``first:M`` decodes as soon as M answers are in and never waits past the
deadline; ``first:M@T`` waits for every answer until T ms, then decodes as soon as M are in (see
:mod:`nercc.policy`); ``exact:M@T`` (systematic schemes) decodes as soon as every systematic answer is in,
else at T once M answers are in (the late inputs recovered), never past the deadline; ``all`` waits for every request, up to the hard timeout. When the deadline passes before the
minimum a scheme needs (``min_answers`` for coded, one answer per input for the others), the state keeps
waiting up to the hard timeout and the result is ``late``; if the minimum never comes it gives up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from nercc.client.health import IDENTITY_ERROR_PREFIX
from nercc.coding.registry import (  # noqa: F401  (public here)
    BASELINE_SCHEMES,
    CODED_SCHEMES,
    HEDGED,
    REPLICATION,
    SCHEME_ORDER,
    scheme_info,
)
from nercc.policy import MIN_CODED_ANSWERS, parse_policy  # noqa: F401  (public here)

#: Every scheme the client serves, in the order tables and plots list them (baselines first, then the coded
#: schemes): the coding core's registry is the one list (nercc.coding.registry).
SCHEMES = SCHEME_ORDER
#: Schemes whose answer for input k is simply f(x_k) from some worker (first answer per input wins).
UNCODED_SCHEMES = BASELINE_SCHEMES
#: ``encode=`` modes of the coded schemes: on the master (Triton ``<model>_encode``) or in the client.
#: ``auto`` (the default) encodes on the masters and falls back to local encoding when none answers.
ENCODE_MODES = ("server", "local", "auto")
#: Where a coded batch was encoded (``CodedResult.encode``): a master, this process by choice, or this
#: process because no master answered; systematic schemes also: "unused" (the batch decided before its parity
#: rows were needed: no parity request was sent) and "failed" (no parity rows: the systematic answers only).
ENCODED_ON = ("server", "local", "local-fallback", "unused", "failed")
#: Worker answers must lie in this range (softmax probabilities, docs/interfaces.md), with this tolerance.
#: It applies to models whose output_kind is "probabilities"; logits and regression answers are checked for
#: shape, dtype and finiteness only (:func:`answer_range_for`).
DEFAULT_ANSWER_RANGE = (0.0, 1.0)
ANSWER_RANGE_TOLERANCE = 1e-3

WAIT, DECODE, GIVE_UP = "wait", "decode", "give_up"


def is_systematic(scheme: str) -> bool:
    """Whether ``scheme`` is a systematic coded scheme (the registry's ``SchemeInfo.systematic``)."""
    return scheme in CODED_SCHEMES and bool(getattr(scheme_info(scheme), "systematic", False))


class NotEnoughAnswersError(RuntimeError):
    """Too few usable answers to produce the K predictions; ``reason`` says why the client stopped waiting
    ("hard timeout", "too many requests failed", "no request left"), ``unavailable`` lists the workers that got
    no request (marked down, or at their in-flight cap) with the reason."""

    def __init__(self, message: str, n_arrived: int, n_needed: int, errors: Dict[int, str], reason: str = "",
                 unavailable: Dict[int, str] | None = None):
        super().__init__(message)
        self.n_arrived = n_arrived
        self.n_needed = n_needed
        self.errors = errors
        self.reason = reason
        self.unavailable = dict(unavailable or {})


class BadPredictionsError(RuntimeError):
    """The predictions came out non-finite although every answer used was checked: never returned."""


class MasterError(RuntimeError):
    """The master could not encode the batch (unreachable, or it rejected the request)."""


@dataclass
class CodedResult:
    """K predictions and how they were obtained.

    ``arrived`` lists the worker indices whose answers were used (ascending); ``worker_latency_ms`` maps every
    worker that answered before the client stopped waiting to its round trip, counted from the fan-out and
    taken where the answer arrived; ``errors`` maps workers that failed to the error text. Times are
    milliseconds on the client's clock: ``encode_ms`` (master round trip or local encoding; local preprocessing
    for the baselines), ``fanout_ms`` (first worker request sent → decision to decode), ``decode_ms``,
    ``total_ms`` (call → return). ``exact`` (bool per input) says which predictions are a worker's own answer
    for that input rather than a decoded approximation; ``n_recovered`` counts the systematic inputs recovered.
    """

    predictions: np.ndarray
    arrived: Tuple[int, ...]
    worker_latency_ms: Dict[int, float]
    errors: Dict[int, str]
    encode_ms: float
    fanout_ms: float
    decode_ms: float
    total_ms: float
    deadline_met: bool
    late: bool  # an answer that was used came in after the deadline
    scheme: str
    policy: str
    n_workers: int
    # worker requests sent for this batch: the compute spent (uncoded K, replication rK, coded N, hedged K + hedges)
    n_requests: int
    lam_enc: float | None = None
    lam_dec: float | None = None
    assignment: Dict[int, int] = field(default_factory=dict)  # worker -> input index (baselines only)
    n_hedges: int = 0  # hedged: second copies sent (included in n_requests)
    hedge_ms: float | None = None  # hedged: the hedge delay this batch used
    encode: str | None = None  # coded: where the batch was encoded, one of ENCODED_ON
    master: str | None = None  # the master URL that encoded it (server), or why none could (local-fallback)
    dropped: Tuple[int, ...] = ()  # coded: answers robust decoding judged wrong and left out (also in errors)
    # per input, bool (K,): the prediction is f(x_k) from a worker that computed input k itself (all True for the
    # baselines; systematic schemes: True where input k's own worker answered; plain coded schemes: all False)
    exact: np.ndarray | None = None
    n_recovered: int = 0  # systematic schemes: inputs whose own worker was late, filled in by the regression


@dataclass(frozen=True)
class ModelSpec:
    """What the client needs to know about a served model (from ``nercc.json`` or the servers' metadata)."""

    name: str
    input_shape: Tuple[int, ...]
    n_classes: int
    raw_shape: Tuple[int, ...] | None
    input_name: str = "input"
    output_name: str = "probs"
    directory: Path | None = None
    info: Any = None  # the nercc.json dict when it has a 'preprocess' block (local preprocessing needs it)
    output_kind: str = "probabilities"  # nercc.json output_kind: probabilities | logits | regression
    onnx_sha256: str | None = None  # the model identity (nercc.json onnx_sha256)


def answer_range_for(output_kind: str) -> Tuple[float, float] | None:
    """The value range every worker answer must lie in for a model's output kind (None: finite is enough)."""
    return DEFAULT_ANSWER_RANGE if output_kind == "probabilities" else None


def config_parameters(config: dict) -> Dict[str, str]:
    """String parameters of a Triton model config in JSON form (gRPC's ``{"config": {...}}`` or HTTP's dict)."""
    config = config.get("config", config) if isinstance(config, dict) else {}
    params = config.get("parameters") or {}
    return {k: (v.get("string_value", "") if isinstance(v, dict) else str(v)) for k, v in params.items()}


def identity_error(worker_url: str, model: str, worker_sha256: str | None, expected_sha256: str | None) -> str | None:
    """Why a worker must not be decoded from (it serves another ONNX than the master), or None.

    A worker that reports no identity (a repository written before onnx_sha256 existed) is accepted."""
    if not expected_sha256 or not worker_sha256 or worker_sha256 == expected_sha256:
        return None
    return (f"{IDENTITY_ERROR_PREFIX}: worker {worker_url} serves {model!r} with ONNX sha256 {worker_sha256}, "
            f"the master's model has {expected_sha256}")


def spec_from_info(model: str, info) -> ModelSpec:
    """A :class:`ModelSpec` from the model's :class:`nercc.models.ModelInfo` (its nercc.json)."""
    return ModelSpec(
        name=model,
        input_shape=tuple(info.input_shape),
        n_classes=int(info.n_classes),
        # uint8 raw inputs only: a model whose raw input is its float32 input takes float32 batches as they are
        raw_shape=tuple(info.raw_shape) if info.raw_shape and info.raw_dtype == "uint8" else None,
        input_name=info.input_name,
        output_name=info.output_name,
        directory=info.dir,
        info=info if info.preprocess is not None else None,
        output_kind=getattr(info, "output_kind", "probabilities"),
        onnx_sha256=getattr(info, "onnx_sha256", None),
    )


def spec_from_server_metadata(model: str, meta: dict, raw_shape: tuple | None) -> ModelSpec:
    """A :class:`ModelSpec` from a worker's Triton model metadata (JSON form) and the master's raw shape."""
    inp = meta["inputs"][0]
    out = meta["outputs"][0]
    return ModelSpec(
        name=model,
        input_shape=tuple(int(s) for s in inp["shape"][1:]),
        n_classes=int(out["shape"][-1]),
        raw_shape=raw_shape,
        input_name=inp["name"],
        output_name=out["name"],
    )


def load_model_spec(model: str, directory: Path) -> ModelSpec | None:
    """The model's spec from ``directory/nercc.json`` (read by nercc.models, the one reader of it); None when
    the model has no local metadata."""
    from nercc.models import read_model_info

    if not (Path(directory) / "nercc.json").exists():
        return None
    return spec_from_info(model, read_model_info(directory))


def check_batch(spec: ModelSpec, model: str, batch: Any) -> Tuple[np.ndarray, bool]:
    """(contiguous batch, is_raw) after checking type, dtype, shape and finiteness against the model's spec."""
    if not isinstance(batch, np.ndarray):
        raise ValueError(f"batch must be a numpy array, got {type(batch).__name__}")
    if batch.dtype == np.uint8:
        if spec.raw_shape is None:
            raise ValueError(f"model {model!r} has no raw input format; send float32 {spec.input_shape}")
        expected, is_raw = spec.raw_shape, True
    elif batch.dtype == np.float32:
        expected, is_raw = spec.input_shape, False
        if not np.isfinite(batch).all():
            raise ValueError("batch contains NaN or inf")
    else:
        raise ValueError(
            f"batch dtype must be uint8 (raw, shape (K, {', '.join(map(str, spec.raw_shape or ()))})) "
            f"or float32 (preprocessed, shape (K, {', '.join(map(str, spec.input_shape))})), got {batch.dtype}"
        )
    if batch.ndim != len(expected) + 1 or tuple(batch.shape[1:]) != tuple(expected):
        kind = "raw uint8" if is_raw else "float32"
        raise ValueError(
            f"{kind} batch for {model!r} must have shape (K, {', '.join(map(str, expected))}), "
            f"got {tuple(batch.shape)}"
        )
    return np.ascontiguousarray(batch), is_raw


def check_n_inputs(scheme: str, k: int, n_workers: int) -> None:
    """K fits the scheme: 1 <= K <= N, and K >= 2 for the coded schemes."""
    if k < 1:
        raise ValueError(f"n_inputs must be >= 1, got {k}")
    if scheme in CODED_SCHEMES and k < 2:
        raise ValueError(f"scheme {scheme!r} needs n_inputs K >= 2, got {k}")
    if k > n_workers:
        raise ValueError(f"scheme {scheme!r} needs n_inputs K <= n_workers={n_workers}, got {k}")


def check_answer(output: Any, n_rows: int, n_classes: int,
                 value_range: Tuple[float, float] | None = DEFAULT_ANSWER_RANGE) -> str | None:
    """Why a worker's answer is unusable (shape, dtype, non-finite, out of range), or None when it is fine.

    A bad answer is treated as a straggler by the transports: recorded in ``errors``, never decoded.
    """
    if not isinstance(output, np.ndarray):
        return f"bad answer: expected an array, got {type(output).__name__}"
    if output.shape != (n_rows, n_classes):
        return f"bad answer: shape {tuple(output.shape)}, expected {(n_rows, n_classes)}"
    if output.dtype != np.float32:
        return f"bad answer: dtype {output.dtype}, expected float32"
    if not np.isfinite(output).all():
        return f"bad answer: {int(np.count_nonzero(~np.isfinite(output)))} non-finite value(s)"
    if value_range is not None:
        lo, hi = value_range
        low, high = float(output.min()), float(output.max())
        if low < lo - ANSWER_RANGE_TOLERANCE or high > hi + ANSWER_RANGE_TOLERANCE:
            return f"bad answer: values in [{low:.3g}, {high:.3g}], outside [{lo:g}, {hi:g}]"
    return None


# ------------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class RequestPlan:
    """Which payload row goes to which worker for one batch.

    ``requests`` maps worker → row sent at the fan-out (coded: row i of the N coded inputs; the others: input
    index). ``backups`` (hedged only) maps input → the idle worker that gets its second copy if needed.
    ``systematic`` (systematic coded schemes only) lists, per input k, the worker whose answer is f(x_k): the
    plan's requests name these workers first, then the parity workers.
    """

    scheme: str
    n_inputs: int
    n_workers: int
    requests: Dict[int, int]
    backups: Dict[int, int] = field(default_factory=dict)
    systematic: Tuple[int, ...] = ()

    @property
    def parity(self) -> Tuple[int, ...]:
        """The planned workers that get a parity row (systematic schemes; empty otherwise)."""
        if not self.systematic:
            return ()
        own = set(self.systematic)
        return tuple(w for w in self.requests if w not in own)

    @property
    def coded(self) -> bool:
        return self.scheme in CODED_SCHEMES


def plan_requests(scheme: str, k: int, n_workers: int, rotation: int = 0,
                  systematic_workers: Sequence[int] | None = None) -> RequestPlan:
    """The requests of one batch of K inputs on N workers; ``rotation`` counts the batches (load spreading).

    Uncoded and hedged use K of the N workers, shifted by K from batch to batch; hedged takes its backups from
    the N - K idle workers (inputs beyond N - K get none: every worker is busy with a first copy).
    Systematic coded schemes list the K systematic workers first (``systematic_workers``: the coding scheme's,
    looked up from the registry when not given), then the parity workers; the row of worker i is i.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    check_n_inputs(scheme, k, n_workers)
    if scheme in CODED_SCHEMES:
        if not is_systematic(scheme):
            if systematic_workers is not None:
                raise ValueError(f"systematic_workers given for scheme {scheme!r}, which is not systematic")
            return RequestPlan(scheme, k, n_workers, {i: i for i in range(n_workers)})
        if systematic_workers is None:
            from nercc.coding.registry import make_scheme

            systematic_workers = make_scheme(scheme, k, n_workers, cache_size=0).systematic_workers
        own = tuple(int(w) for w in systematic_workers)
        if len(own) != k or len(set(own)) != k or not all(0 <= w < n_workers for w in own):
            raise ValueError(f"systematic_workers must be {k} distinct worker indices in [0, {n_workers}), "
                             f"got {list(systematic_workers)}")
        order = list(own) + [w for w in range(n_workers) if w not in set(own)]
        return RequestPlan(scheme, k, n_workers, {w: w for w in order}, systematic=own)
    copies = n_workers // k if scheme == REPLICATION else 1
    offset = (rotation * k) % n_workers if copies * k < n_workers else 0
    requests = {(offset + j) % n_workers: j % k for j in range(copies * k)}
    backups = {}
    if scheme == HEDGED:
        idle = [(offset + k + i) % n_workers for i in range(n_workers - k)]
        backups = {j: idle[j] for j in range(min(k, len(idle)))}
    return RequestPlan(scheme, k, n_workers, requests, backups)


def restrict_plan(plan: RequestPlan, available: set) -> RequestPlan:
    """The plan without the workers that may not get a request now (marked down, at their in-flight cap).

    Coded: their requests are simply not sent (one answer fewer). The baselines move the input of such a
    worker to an available worker the plan leaves idle (and drop it from the hedging backups); an input with
    no available worker left keeps its original worker, so the batch fails with a clear reason rather than
    silently.
    """
    blocked = [w for w in plan.requests if w not in available]
    if not blocked:
        return plan
    if plan.coded:
        kept = {w: r for w, r in plan.requests.items() if w in available}
        return RequestPlan(plan.scheme, plan.n_inputs, plan.n_workers, kept or dict(plan.requests),
                           systematic=plan.systematic)
    used = set(plan.requests) | set(plan.backups.values())
    spare = [w for w in range(plan.n_workers) if w in available and w not in used]
    requests = dict(plan.requests)
    for worker in blocked:
        row = requests.pop(worker)
        if spare:
            requests[spare.pop(0)] = row
        elif not any(r == row for w, r in requests.items()):
            requests[worker] = row  # nowhere else to send it
    backups = {row: w for row, w in plan.backups.items() if w in available and w not in requests}
    return RequestPlan(plan.scheme, plan.n_inputs, plan.n_workers, requests, backups)


# ------------------------------------------------------------------------------------------------ hedging
class HedgeDelay:
    """The hedge delay: a fixed value, or the p95 of the last ``window`` worker round trips observed.

    Adaptive (``fixed_ms=None``): every completed worker request the transport sees is fed to :meth:`observe`
    (straggler requests too, when they finish later: dropping them would bias the p95 low). Until
    ``min_samples`` round trips are in, :meth:`value_ms` returns ``initial_ms``.
    """

    def __init__(self, fixed_ms: float | None = None, initial_ms: float = 10.0, quantile: float = 95.0,
                 window: int = 256, min_samples: int = 20):
        if fixed_ms is not None and not (fixed_ms >= 0 and math.isfinite(fixed_ms)):
            raise ValueError(f"hedge_ms must be a finite number >= 0, got {fixed_ms!r}")
        self.fixed_ms = None if fixed_ms is None else float(fixed_ms)
        self.initial_ms = float(initial_ms)
        self.quantile = float(quantile)
        self.min_samples = int(min_samples)
        self._samples: deque = deque(maxlen=int(window))
        self._cached: float | None = None

    def clear(self) -> None:
        self._samples.clear()
        self._cached = None

    def observe(self, round_trip_ms: float) -> None:
        self._samples.append(float(round_trip_ms))
        self._cached = None

    @property
    def n_samples(self) -> int:
        return len(self._samples)

    def value_ms(self) -> float:
        if self.fixed_ms is not None:
            return self.fixed_ms
        if len(self._samples) < self.min_samples:
            return self.initial_ms
        if self._cached is None:
            self._cached = float(np.percentile(np.fromiter(self._samples, float), self.quantile))
        return self._cached


# ------------------------------------------------------------------------------------------------ waiting
@dataclass(frozen=True)
class Decision:
    """What the transport does next: ``action`` is WAIT, DECODE or GIVE_UP; ``send`` lists (worker, row)
    requests to send now (hedged second copies); ``reason`` says why it stopped."""

    action: str
    send: Tuple[Tuple[int, int], ...] = ()
    reason: str = ""


class WaitState:
    """The wait policy of one batch as a state machine over the requests' answers and the clock.

    Feed it :meth:`on_answer` / :meth:`on_failure` as requests complete and :meth:`on_tick` when the clock
    reaches :meth:`next_wakeup`; each returns a :class:`Decision`. Times are seconds on the transport's clock;
    ``t_fanout`` is when the first worker request went out, ``deadline_t`` / ``hard_t`` absolute times.
    ``hedge_t`` (hedged only) is when the unanswered inputs get their second copy. ``patience_t`` (coded
    ``first:M@T`` and ``exact:M@T``) is when ``first:M`` stops waiting for every answer and settles for M, and
    when ``exact:M`` stops waiting for the systematic answers and recovers the late inputs.

    ``deferred`` (systematic schemes' fast path) names planned workers whose requests go out later, once their
    payload exists (the parity rows from the master): they count as pending, not as sent, until
    :meth:`on_deferred` says they went out (or could not). A batch that decides before then never sends them.
    """

    def __init__(self, plan: RequestPlan, *, policy_kind: str, policy_m: int | None = None,
                 min_answers: int = MIN_CODED_ANSWERS, t_fanout: float, deadline_t: float, hard_t: float,
                 hedge_t: float | None = None, patience_t: float | None = None, deferred: Sequence[int] = ()):
        if policy_kind == "exact" and not plan.systematic:
            raise ValueError(f"policy 'exact' needs a systematic coded scheme (one whose workers include the "
                             f"inputs themselves); scheme {plan.scheme!r} is not: use 'first:M' or 'first:M@T'")
        if policy_kind == "exact" and (policy_m is None or policy_m < min_answers):
            raise ValueError(f"policy 'exact:M' needs M >= min_answers={min_answers}, got M={policy_m}")
        deferred = set(deferred)
        if not deferred <= set(plan.requests):
            raise ValueError(f"deferred workers {sorted(deferred - set(plan.requests))} are not in the plan")
        self.plan = plan
        self.policy_kind = policy_kind
        self.policy_m = policy_m
        self.min_answers = min_answers
        self.t_fanout, self.deadline_t, self.hard_t = t_fanout, deadline_t, hard_t
        self.patience_t = patience_t if plan.coded and policy_kind in ("first", "exact") else None
        self.hedge_t = hedge_t if plan.backups else None
        self.hedge_ms: float | None = None  # the hedge delay, for the record (set by the client)
        # worker -> row of every request sent so far
        self.sent: Dict[int, int] = {w: r for w, r in plan.requests.items() if w not in deferred}
        self.deferred = deferred
        self.pending = set(plan.requests)
        self.unsent_backups: Dict[int, int] = dict(plan.backups)  # row -> backup worker
        self.answers: Dict[int, Any] = {}
        self.arrival: Dict[int, float] = {}  # worker -> time its answer arrived
        self.errors: Dict[int, str] = {}
        self.final: Decision | None = None
        self.decided_t: float | None = None
        # `all` waits for everyone up to the hard timeout; the others stop at the deadline once they have enough
        self.soft_t = hard_t if policy_kind == "all" else deadline_t

    # -- events ------------------------------------------------------------------------------------
    def on_answer(self, worker: int, t: float, output: Any = None) -> Decision:
        if worker in self.pending and self.final is None:
            self.pending.discard(worker)
            self.answers[worker] = output
            self.arrival[worker] = t
        return self.on_tick(t)

    def on_failure(self, worker: int, t: float, error: str) -> Decision:
        if worker in self.pending and self.final is None:
            self.pending.discard(worker)
            self.errors[worker] = error
        return self.on_tick(t)

    def on_deferred(self, t: float, error: str | None = None) -> Decision:
        """The deferred requests can go out now (``error`` None: the decision's ``send`` lists them) or never
        (their payload could not be made: each counts as a failed request with ``error``)."""
        deferred, self.deferred = sorted(self.deferred), set()
        if self.final is not None:
            return self.final  # decided before the payloads came: never sent
        if error is not None:
            for worker in deferred:
                self.pending.discard(worker)
                self.errors[worker] = error
            return self.on_tick(t)
        send = []
        for worker in deferred:
            if worker in self.pending:
                self.sent[worker] = self.plan.requests[worker]
                send.append((worker, self.plan.requests[worker]))
        decision = self.on_tick(t)
        return Decision(decision.action, tuple(send) + decision.send, decision.reason)

    def on_tick(self, t: float) -> Decision:
        if self.final is not None:
            return self.final
        self._drop_answered_backups()
        action, reason = self._decide(t)
        if action != WAIT:
            self.final = Decision(action, (), reason)
            self.decided_t = t
            return self.final
        return Decision(WAIT, self._due_hedges(t))

    def next_wakeup(self, t: float) -> float | None:
        """The next time the decision can change without an answer arriving (None once decided)."""
        if self.final is not None:
            return None
        times = [self.hard_t]
        if t < self.soft_t:
            times.append(self.soft_t)
        if self.patience_t is not None and t < self.patience_t:
            times.append(self.patience_t)
        if self.unsent_backups and self.hedge_t is not None and t < self.hedge_t:
            times.append(self.hedge_t)
        return min(times)

    # -- rules -------------------------------------------------------------------------------------
    @property
    def n_needed(self) -> int:
        return self.min_answers if self.plan.coded else self.plan.n_inputs

    def _covered(self, workers) -> set:
        return {self.sent[w] for w in workers}

    def systematic_complete(self) -> bool:
        """Systematic schemes: every input's own answer is in (the batch decodes exactly, no regression)."""
        return bool(self.plan.systematic) and all(w in self.answers for w in self.plan.systematic)

    def enough(self) -> bool:
        """The minimum to produce K predictions is in."""
        if self.plan.coded:
            return len(self.answers) >= self.min_answers or self.systematic_complete()
        return len(self._covered(self.answers)) == self.plan.n_inputs

    def _target(self, t: float) -> bool:
        """The policy is satisfied: stop before the deadline."""
        if self.plan.coded and self.policy_kind == "exact":
            if self.systematic_complete():
                return True  # exact: every input's own answer
            patient = self.patience_t is not None and t < self.patience_t
            return not patient and len(self.answers) >= self.policy_m
        if self.plan.coded:
            stop_at = self.policy_m if self.policy_kind == "first" else len(self.plan.requests)
            if self.patience_t is not None and t < self.patience_t:
                stop_at = len(self.plan.requests)  # patient: everyone, until T
            return len(self.answers) >= stop_at
        if self.policy_kind == "all":
            return not self.pending and not self.unsent_backups
        return self.enough()

    def _possible(self) -> bool:
        """The minimum can still be reached with what is in flight or may still be sent."""
        if self.plan.coded:
            if self.plan.systematic and all(w in self.answers or w in self.pending for w in self.plan.systematic):
                return True
            return len(self.answers) + len(self.pending) >= self.min_answers
        rows = self._covered(self.answers) | self._covered(self.pending) | set(self.unsent_backups)
        return len(rows) == self.plan.n_inputs

    def _decide(self, t: float) -> Tuple[str, str]:
        if self._target(t):
            if self.policy_kind == "exact" and self.systematic_complete():
                return DECODE, "every systematic answer in"
            return DECODE, "policy satisfied"
        # exact: past the deadline with fewer than M answers it waits for the M-th (_target), late
        if t >= self.soft_t and self.policy_kind != "exact" and self.enough():
            return DECODE, "deadline passed with enough answers"
        if not self.pending and not self.unsent_backups:
            return (DECODE, "every request answered or failed") if self.enough() else (GIVE_UP, "no request left")
        if t >= self.hard_t or not self._possible():
            if self.enough():
                return DECODE, "hard timeout"
            return GIVE_UP, "hard timeout" if t >= self.hard_t else "too many requests failed"
        return WAIT, ""

    def _drop_answered_backups(self) -> None:
        if self.unsent_backups:
            covered = self._covered(self.answers)
            for row in [r for r in self.unsent_backups if r in covered]:
                del self.unsent_backups[row]  # answered: no second copy will ever be needed

    def _due_hedges(self, t: float) -> Tuple[Tuple[int, int], ...]:
        """Second copies due now: inputs still unanswered at the hedge time, or whose first copy failed."""
        if not self.unsent_backups:
            return ()
        failed_rows = {self.sent[w] for w in self.errors}
        due = []
        for row, worker in list(self.unsent_backups.items()):
            if (self.hedge_t is not None and t >= self.hedge_t) or row in failed_rows:
                del self.unsent_backups[row]
                self.sent[worker] = row
                self.pending.add(worker)
                due.append((worker, row))
        return tuple(due)

    # -- the outcome -------------------------------------------------------------------------------
    def latency_ms(self) -> Dict[int, float]:
        """Round trip per answered worker, counted from the fan-out."""
        return {w: (t - self.t_fanout) * 1e3 for w, t in self.arrival.items()}

    def used_workers(self) -> Tuple[int, ...]:
        """The answers a decode uses: every answer for coded, the first answer per input otherwise."""
        if self.plan.coded:
            return tuple(sorted(self.answers))
        first: Dict[int, int] = {}
        for worker in sorted(self.answers, key=self.arrival.get):
            first.setdefault(self.sent[worker], worker)
        return tuple(sorted(first.values()))

    def late(self, used: Sequence[int]) -> bool:
        """Some answer that was used came in after the deadline (the client waited past it)."""
        return any(self.arrival[w] > self.deadline_t for w in used)

    def n_hedges(self) -> int:
        return sum(1 for w in self.sent if w not in self.plan.requests)

    def give_up_error(self, scheme: str, hard_timeout_ms: float,
                      unavailable: Dict[int, str] | None = None) -> NotEnoughAnswersError:
        k, n_sent = self.plan.n_inputs, len(self.sent)
        reason = self.final.reason if self.final is not None else ""
        if self.plan.coded:
            need = f"decoding needs at least {self.min_answers}"
        else:
            need = f"all {k} inputs need an answer (covered {len(self._covered(self.answers))})"
        if reason == "hard timeout":
            why = f"gave up at the hard timeout ({hard_timeout_ms:g} ms)"
        else:
            elapsed = "" if self.decided_t is None else f" after {(self.decided_t - self.t_fanout) * 1e3:.0f} ms"
            why = f"gave up{elapsed}, before the hard timeout: {len(self.errors)} request(s) failed"
        message = (f"{scheme}: {len(self.answers)} of {n_sent} requests answered; {why}; " + need
                   + (f"; errors: {self.errors}" if self.errors else ""))
        if unavailable:
            message += f"; workers given no request: {unavailable}"
        return NotEnoughAnswersError(message, n_arrived=len(self.answers), n_needed=self.n_needed,
                                     errors=dict(self.errors), reason=reason, unavailable=unavailable)


# ------------------------------------------------------------------------------------------------ decoding
def decode_coded(coding, answers: Dict[int, np.ndarray], used: Sequence[int]) -> np.ndarray:
    """K predictions from the answers of the coded workers ``used`` (ascending) through ``coding``."""
    y = np.concatenate([answers[w] for w in used], axis=0)
    return np.asarray(coding.decode(y, list(used)), dtype=np.float32)


def decode_coded_robust(coding, answers: Dict[int, np.ndarray], used: Sequence[int],
                        threshold: float | None = None) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """(K predictions, workers dropped) with Byzantine-robust decoding (:mod:`nercc.coding.robust`): answers
    that the others show to be wrong are left out. Needs 3 answers or more; fewer decode plainly."""
    from nercc.coding.robust import DEFAULT_THRESHOLD, robust_decode

    if len(used) < 3 or len(used) <= coding.n_inputs:
        return decode_coded(coding, answers, used), ()
    y = np.concatenate([answers[w] for w in used], axis=0)
    result = robust_decode(coding, y, list(used), threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    return np.asarray(result.predictions, dtype=np.float32), tuple(result.dropped)


def gather_systematic(plan: RequestPlan, answers: Dict[int, np.ndarray]) -> np.ndarray:
    """K predictions of a systematic batch whose every own answer is in: input k's answer is worker
    ``plan.systematic[k]``'s, as it came (bit-exact; no decoding)."""
    return np.concatenate([answers[w] for w in plan.systematic], axis=0).astype(np.float32, copy=False)


def exact_mask(coding, used: Sequence[int], k: int) -> np.ndarray:
    """bool (K,): True where the decoded prediction of input k is its own worker's answer (a systematic scheme
    whose worker for k is among ``used``); all False for plain coded schemes."""
    if coding is None or not getattr(coding, "systematic", False):
        return np.zeros(k, dtype=bool)
    return ~np.asarray(coding.recovered(list(used)), dtype=bool)


def ensure_finite(predictions: np.ndarray, scheme: str, used: Sequence[int]) -> np.ndarray:
    """The last guard: non-finite predictions are an error, never a result."""
    if not np.isfinite(predictions).all():
        raise BadPredictionsError(f"{scheme}: the predictions from workers {list(used)} are not finite "
                                  "(an answer overflowed in decoding); refusing to return them")
    return predictions


def gather_uncoded(plan_rows: Dict[int, int], answers: Dict[int, np.ndarray], used: Sequence[int],
                   k: int) -> np.ndarray:
    """K predictions: input j's answer from the one worker of ``used`` that served it."""
    by_row = {plan_rows[w]: w for w in used}
    return np.concatenate([answers[by_row[j]] for j in range(k)], axis=0).astype(np.float32, copy=False)


def encode_local(coding, x: np.ndarray) -> np.ndarray:
    """The N coded inputs of float32 ``x`` (K, ...), with the float32 encoding matrix the master uses."""
    return np.ascontiguousarray(coding.encode(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

