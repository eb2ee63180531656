"""Worker health and master failover for the client: transport-free bookkeeping fed with outcomes and a clock.

:class:`WorkerHealth` marks a worker *down* after ``max_failures`` consecutive failures or timeouts (a SIGKILLed
machine refuses connections at once; a partitioned or frozen one times out): a down worker gets no new batch
requests (a coded batch simply has one answer fewer; a baseline sends that input elsewhere) until a probe
finds it healthy again. A worker whose model is not the master's (its ONNX sha256 differs: model identity,
checked at connect and on every probe) is marked down at once, its error naming both hashes. Probes are due every ``probe_interval_s`` per down worker; the transport sends a cheap
request (``is_server_ready``) and reports the outcome. It also caps the requests in flight per worker: a
request the client stopped waiting for (abandoned after its batch decoded) still holds a slot until it
completes or is cancelled, and a worker at the cap gets nothing new, so a cut-off worker cannot pile up
hundreds of abandoned requests.

:class:`MasterPool` orders several masters: the first healthy one encodes; a master that failed (unreachable,
internal error) is skipped for ``cooldown_s`` and then tried again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

#: Consecutive failures (errors or timeouts) that mark a worker down.
DEFAULT_MAX_FAILURES = 3
#: Seconds between health probes of a worker marked down.
DEFAULT_PROBE_INTERVAL_S = 1.0
#: Requests in flight per worker (answered-or-abandoned ones count until they complete).
DEFAULT_MAX_IN_FLIGHT = 8
#: Start of the error text of a worker that serves another model than the master (ClientBase.identity_error).
IDENTITY_ERROR_PREFIX = "model identity mismatch"
#: Seconds a failed master is skipped before it is tried again.
DEFAULT_MASTER_COOLDOWN_S = 5.0


def _positive(name: str, value, integer: bool = False):
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
    if not bad and integer and int(value) != value:
        bad = True
    if bad:
        kind = "an integer >= 1" if integer else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


@dataclass
class WorkerState:
    consecutive_failures: int = 0
    down_since: float | None = None
    next_probe_t: float | None = None
    in_flight: int = 0
    abandoned: int = 0  # requests in flight that their batch stopped waiting for: this worker is straggling
    last_error: str = ""
    down_reason: str = ""  # set when marked down for a reason other than failures (a model identity mismatch)
    total_failures: int = 0
    marked_down: int = 0  # how many times


class WorkerHealth:
    """Health of N workers: consecutive failures, down/up, probes due, in-flight caps."""

    def __init__(self, n_workers: int, max_failures: int = DEFAULT_MAX_FAILURES,
                 probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 avoid_stragglers: bool = False):
        self.n_workers = _positive("n_workers", n_workers, integer=True)
        self.max_failures = _positive("max_failures", max_failures, integer=True)
        self.probe_interval_s = _positive("probe_interval_s", probe_interval_s)
        self.max_in_flight = _positive("max_in_flight", max_in_flight, integer=True)
        self.avoid_stragglers = bool(avoid_stragglers)
        self.workers: List[WorkerState] = [WorkerState() for _ in range(self.n_workers)]
        #: called with the worker index when it is marked down / back up (e.g. ClientMetrics' health hook)
        self.on_down = None
        self.on_up = None

    def _back_up(self, worker: int) -> None:
        state = self.workers[worker]
        was_down = state.down_since is not None
        state.consecutive_failures = 0
        state.down_since = state.next_probe_t = None
        state.down_reason = ""
        if was_down and self.on_up is not None:
            self.on_up(worker)

    # -- what may be sent -----------------------------------------------------------------------------
    def is_down(self, worker: int) -> bool:
        return self.workers[worker].down_since is not None

    def available(self, worker: int) -> bool:
        """Up and below the in-flight cap: may get a new request."""
        state = self.workers[worker]
        return state.down_since is None and state.in_flight < self.max_in_flight

    def busy_straggling(self, worker: int) -> bool:
        """Still working on a request a batch gave up on (``avoid_stragglers``): a new request would queue
        behind it, so the planner prefers other workers while enough others are idle."""
        return self.avoid_stragglers and self.workers[worker].abandoned > 0

    def unavailable(self) -> Dict[int, str]:
        """Workers that get no new request now, with the reason (for results and error messages)."""
        out = {}
        for i, state in enumerate(self.workers):
            if state.down_since is not None and state.down_reason:
                out[i] = f"marked down: {state.down_reason}"
            elif state.down_since is not None:
                out[i] = f"marked down after {state.consecutive_failures} consecutive failures ({state.last_error})"
            elif state.in_flight >= self.max_in_flight:
                out[i] = f"{state.in_flight} requests in flight (cap {self.max_in_flight})"
        return out

    # -- outcomes -------------------------------------------------------------------------------------
    def sent(self, worker: int) -> None:
        self.workers[worker].in_flight += 1

    def abandoned(self, worker: int) -> None:
        """A batch decoded (or gave up) while its request to ``worker`` was still in flight."""
        self.workers[worker].abandoned += 1

    def released(self, worker: int, abandoned: bool = False) -> None:
        """A request ended without an outcome (cancelled by the client): frees its in-flight slot only."""
        state = self.workers[worker]
        state.in_flight = max(0, state.in_flight - 1)
        if abandoned:
            state.abandoned = max(0, state.abandoned - 1)

    def finished(self, worker: int, ok: bool, t: float, error: str = "", abandoned: bool = False) -> None:
        """A request to ``worker`` completed (``ok``), failed or timed out (``error``) at time ``t``;
        ``abandoned``: its batch had stopped waiting for it (see :meth:`abandoned`)."""
        state = self.workers[worker]
        state.in_flight = max(0, state.in_flight - 1)
        if abandoned:
            state.abandoned = max(0, state.abandoned - 1)
        if ok:
            self._back_up(worker)
            return
        self.failed(worker, t, error)

    def failed(self, worker: int, t: float, error: str) -> None:
        """A failure that was not a request completion (a batch stopped waiting for this worker)."""
        state = self.workers[worker]
        state.consecutive_failures += 1
        state.total_failures += 1
        state.last_error = error[:200]
        if state.down_since is None and state.consecutive_failures >= self.max_failures:
            state.down_since = t
            state.next_probe_t = t + self.probe_interval_s
            state.marked_down += 1
            if self.on_down is not None:
                self.on_down(worker)

    def mark_down(self, worker: int, t: float, reason: str) -> None:
        """Mark ``worker`` down at once (not after failures): it serves another model (identity mismatch). It
        stays down until a probe finds it healthy, which includes serving the expected model again."""
        state = self.workers[worker]
        state.last_error = state.down_reason = reason[:400]
        if state.down_since is None:
            state.down_since = t
            state.next_probe_t = t + self.probe_interval_s
            state.marked_down += 1
            if self.on_down is not None:
                self.on_down(worker)

    # -- probes ---------------------------------------------------------------------------------------
    def probes_due(self, t: float) -> List[int]:
        """Down workers whose probe is due at ``t``; each is rescheduled (one probe per interval)."""
        due = []
        for i, state in enumerate(self.workers):
            if state.down_since is not None and state.next_probe_t is not None and t >= state.next_probe_t:
                state.next_probe_t = t + self.probe_interval_s
                due.append(i)
        return due

    def probe_result(self, worker: int, healthy: bool, t: float, error: str = "") -> None:
        state = self.workers[worker]
        if healthy:
            self._back_up(worker)
        else:
            state.last_error = error[:400] or state.last_error
            if error.startswith(IDENTITY_ERROR_PREFIX):
                state.down_reason = error[:400]

    def next_probe_t(self) -> float | None:
        times = [s.next_probe_t for s in self.workers if s.down_since is not None and s.next_probe_t is not None]
        return min(times) if times else None


class MasterPool:
    """Several master URLs in failover order; a failed one is skipped for ``cooldown_s``."""

    def __init__(self, urls: Sequence[str], cooldown_s: float = DEFAULT_MASTER_COOLDOWN_S):
        if isinstance(urls, str):
            urls = [urls]
        urls = [str(u) for u in urls]
        if not urls:
            raise ValueError("master_url must name at least one master")
        if len(set(urls)) != len(urls):
            raise ValueError(f"master URLs must be distinct, got {urls}")
        self.urls = urls
        self.cooldown_s = _positive("master_cooldown_s", cooldown_s)
        self._failed_until: Dict[int, float] = {}
        self.last_error: Dict[int, str] = {}

    def order(self, t: float) -> List[int]:
        """Master indices to try now, in order: those not cooling down first, then the cooling ones (a last
        resort, oldest failure first) so that a batch never gives up while some master might answer."""
        ready = [i for i in range(len(self.urls)) if self._failed_until.get(i, -math.inf) <= t]
        cooling = sorted((i for i in range(len(self.urls)) if i not in ready), key=self._failed_until.get)
        return ready + cooling

    def failed(self, index: int, t: float, error: str) -> None:
        self._failed_until[index] = t + self.cooldown_s
        self.last_error[index] = error[:300]

    def succeeded(self, index: int) -> None:
        self._failed_until.pop(index, None)
        self.last_error.pop(index, None)
