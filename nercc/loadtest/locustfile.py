"""The Locust load engine: users that send batches of real test inputs through nercc's coded Triton cluster.

Every task sends one batch of K test inputs of the model's dataset (MNIST, CIFAR-10, the ImageNet samples)
through the nercc client and reports it to Locust as one request: type ``infer``, name = the scheme, response
time = the client's end-to-end ``total_ms`` (call -> decoded predictions). The request fails when the client
raised (too few answers, a dead master...), when the result is ``late`` (an answer it needed came in after the
deadline), or when the predictions are not finite.

Load is open loop, the same as the asyncio engine's (``loadtest/openloop.py``): ``--rate`` batches/s in total,
Poisson arrivals, each of the U users running its own Poisson stream of rate/U (their superposition is Poisson
of the full rate). A user whose previous batch is still under way at its next arrival sends late and the log
records the lag, so keep U well above rate x latency (``nercc loadtest`` picks U that way).

Start a cluster (``nercc serve --workers 12 --straggler bimodal:p=0.1,slow_ms=40 --urls-file c.json``), then::

    locust -f loadtest/locustfile.py --urls-file c.json --rate 20                                   # web UI
    locust -f loadtest/locustfile.py --urls-file c.json --rate 20 --headless -u 16 -r 16 -t 60s NerccUser

Pick the scheme by user class (``UncodedUser``, ``ReplicationUser``, ``HedgedUser`` when the client offers
``hedged``, ``BaccUser``, ``NerccUser``, ``BaccSysUser``, ``NerccSysUser``). ``nercc loadtest --engine locust``
runs this file headless once per scheme and writes the report.

Transport: the client is asyncio (``grpc.aio``); Locust's users are greenlets. All clients of this process share
one asyncio loop in a real OS thread (:mod:`nercc.loadtest.gevent_asyncio`); a user submits its batch there and parks
on a gevent watcher. The latency is measured inside the client, where the answers arrive.
"""

from __future__ import annotations

import os
import time
from typing import Dict

# Locust monkey-patches gevent when imported: it comes before gevent, numpy and the client (isort kept off)
# isort: off
from locust import User, events, task
from locust.exception import StopUser

import gevent
import numpy as np
import numpy.testing  # noqa: F401 - imported lazily by scipy, and its import runs a subprocess: not in the loop thread
from gevent.lock import Semaphore

from nercc.coding.registry import BACC_NAME, BACC_SYS_NAME, HEDGED, NERCC_NAME, NERCC_SYS_NAME, REPLICATION, UNCODED
from nercc.loadtest.workload import (
    CODED,
    Batches,
    CpuMeter,
    RequestLog,
    add_engine_arguments,
    available_schemes,
    client_kwargs,
    make_async_client,
    parse_pids,
    request_record,
    scheme_label,
)
# isort: on

REQUEST_TYPE = "infer"


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("nercc", "the coded Triton cluster under test (see `nercc serve`)")
    add_engine_arguments(group, defaults_from_env=True)


def native_transport_available() -> bool:
    """True when the client has a transport Locust drives natively (``nercc.client.gevent``)."""
    try:
        import nercc.client.gevent  # noqa: F401
    except ImportError:
        return False
    return True


class _NativeTransport:
    """``GeventCodedClient`` on the servers' HTTP endpoints: its requests are greenlets, no thread, no bridge."""

    name = "gevent-http"

    def __init__(self, options, scheme: str):
        from nercc.client.gevent import GeventCodedClient

        kwargs = client_kwargs(options, scheme)
        kwargs["master_url"], kwargs["worker_urls"] = http_urls(options)
        # connections per server: batches in flight at once to one worker (stragglers still running included)
        self.client = GeventCodedClient(**kwargs, concurrency=max(8, int(options.num_users or 8)))
        self.client.connect()

    def warm_up(self, rounds: int) -> None:
        for _attempt in range(5):  # a cold server may miss a short hard timeout: each attempt warms it anyway
            try:
                self.client.warmup(rounds)
                return
            except Exception:  # noqa: BLE001 - the measured run reports what stays broken
                gevent.sleep(0.2)

    def infer(self, batch):
        return self.client.infer(batch)

    def drain(self, timeout_s: float) -> None:
        self.client.drain(timeout_s)

    def close(self) -> None:
        self.client.close()


class _BridgeTransport:
    """The asyncio ``CodedClient`` on gRPC in an OS thread, greenlets parked on a watcher (no native transport)."""

    name = "asyncio-bridge-grpc"

    def __init__(self, options, scheme: str):
        from nercc.loadtest.gevent_asyncio import AsyncioThread

        if _Shared.loop is None:
            _Shared.loop = AsyncioThread(name="nercc-locust-loop")
        self.loop = _Shared.loop
        self.client = make_async_client(options, scheme)  # CodedClient, or the coded endpoint's client
        self.loop.run(self.client.connect(), timeout=60)

    def warm_up(self, rounds: int) -> None:
        from nercc.loadtest.openloop import warm_up

        self.loop.run(warm_up(self.client, rounds), timeout=120)

    def infer(self, batch):
        return self.loop.run(self.client.infer(batch))

    def drain(self, timeout_s: float) -> None:
        self.loop.run(self.client.drain(timeout_s), timeout=timeout_s + 10)

    def close(self) -> None:
        self.loop.run(self.client.close(), timeout=30)


def http_urls(options) -> tuple:
    master = (options.master_http_url or "").strip() or None
    workers = [u.strip() for u in str(options.worker_http_urls or "").split(",") if u.strip()]
    return master, workers


class NerccLoadClient:
    """Locust's custom-client pattern: one nercc client per scheme, each batch reported to ``events.request``."""

    def __init__(self, environment, scheme: str):
        options = environment.parsed_options
        self.environment = environment
        self.scheme = scheme_label(options, scheme)
        # the coded endpoint's client is gRPC asyncio: it runs on the bridge
        native = native_transport_available() and http_urls(options)[1] and not options.coded_endpoint
        self.transport = _NativeTransport(options, scheme) if native else _BridgeTransport(options, scheme)
        client = self.transport.client
        if scheme in CODED and not options.coded_endpoint:
            # Build the scheme here, in the gevent thread: first use triggers lazy scipy imports, some of which
            # spawn subprocesses, and gevent can only watch children from its main loop.
            n = len(client.worker_urls)
            client.coding_scheme(int(options.n_inputs)).decode(np.zeros((n, 2)), list(range(n)))
        self.deadline_ms = client.deadline_ms
        self.hard_timeout_ms = client.hard_timeout_ms
        self.record_every = max(0, int(options.record_predictions))
        self._count = 0

    def warm_up(self, rounds: int = 3) -> None:
        """A few unreported batches: first-use costs (channels, decoding matrices) stay out of the statistics."""
        self.transport.warm_up(rounds)

    def infer(self, batch_index: int, batch: np.ndarray, scheduled: float) -> None:
        started = time.time()
        keep = bool(self.record_every) and self._count % self.record_every == 0
        self._count += 1
        _Shared.in_flight += 1
        _Shared.max_in_flight = max(_Shared.max_in_flight, _Shared.in_flight)
        try:
            result = self.transport.infer(batch)
            wall_ms = (time.time() - started) * 1e3
            record = request_record(self.scheme, batch_index, scheduled, started, result, wall_ms=wall_ms,
                                    keep_predictions=keep, deadline_ms=self.deadline_ms)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to Locust, never raised into the user
            record = request_record(self.scheme, batch_index, scheduled, started, None, exc,
                                    wall_ms=(time.time() - started) * 1e3)
        finally:
            _Shared.in_flight -= 1
        _Shared.log.write(record)
        error = record.get("error")
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=self.scheme, response_time=record["ms"], response_length=0,
            exception=None if record["ok"] else RuntimeError(error), context={"batch": batch_index},
        )

    def drain(self) -> None:
        self.transport.drain(self.hard_timeout_ms / 1e3)

    def close(self) -> None:
        self.transport.close()


class _Shared:
    """Per-process state: the asyncio loop thread, the batches, one client per scheme (all users share it)."""

    loop = None  # the asyncio thread of the bridge transport, when it is used
    batches: Batches | None = None
    clients: Dict[str, NerccLoadClient] = {}
    lock = Semaphore()
    log = RequestLog(None)
    meter: CpuMeter | None = None
    in_flight = 0  # batches under way in this process (counted where the users call the client)
    max_in_flight = 0
    user_count = 0

    @classmethod
    def client_for(cls, environment, scheme: str) -> NerccLoadClient:
        with cls.lock:  # the first user of a scheme builds, connects and warms its client; the others wait
            options = environment.parsed_options
            if cls.batches is None:
                cls.batches = Batches(options.model, options.n_inputs)
            client = cls.clients.get(scheme)
            if client is None:
                client = NerccLoadClient(environment, scheme)
                client.warm_up()
                cls.clients[scheme] = client
                if cls.meter is None:  # the measured stretch starts once the first client is warm
                    cls.meter = CpuMeter(parse_pids(options.server_pids))
                    cls.log.event("engine", engine="locust", scheme=scheme, pid=os.getpid(),
                                  transport=client.transport.name)
                    cls.log.event("cpu", phase="start", step=None, rate=float(options.rate), **cls.meter.snapshot())
            return client


class CodedBatchUser(User):
    """Open loop: this user's batches arrive as a Poisson stream of rate --rate / U, whatever the answers do."""

    abstract = True
    scheme = ""

    def wait_time(self) -> float:
        # Locust interrupts a wait at stop (not a task): the pacing lives here, so a stopping run sends nothing new
        return max(0.0, self._next - time.time())

    def on_start(self) -> None:
        try:
            self.load_client = _Shared.client_for(self.environment, self.scheme)
        except Exception as exc:  # noqa: BLE001 - e.g. no URLs: say why once per user and stop it
            self.environment.events.request.fire(
                request_type="setup", name=self.scheme, response_time=0, response_length=0,
                exception=exc, context={},
            )
            raise StopUser() from exc
        options = self.environment.parsed_options
        rate = float(options.rate or 0.0)
        if not rate > 0:
            raise StopUser(f"--rate must be > 0 batches/s, got {rate}")
        runner = self.environment.runner
        # -u is the total over every process (distributed mode): each user's share of the load is rate / total
        users = max(1, int(getattr(options, "num_users", 0) or getattr(runner, "target_user_count", 0) or 1))
        _Shared.user_count += 1
        if _Shared.user_count == 1:
            _Shared.log.event("users", users=users, rate=rate)
        worker = int(getattr(runner, "worker_index", 0) or 0) if _is_worker(runner) else 0
        self._rng = np.random.default_rng([int(options.arrival_seed), worker, _Shared.user_count])
        self._mean_gap_s = users / rate
        self._next = time.time() + self._rng.exponential(self._mean_gap_s)

    @task
    def infer_batch(self) -> None:
        if time.time() < self._next - 0.0005:
            return  # Locust runs a user's first task right after on_start: wait for the first arrival instead
        scheduled = self._next
        self._next += self._rng.exponential(self._mean_gap_s)
        batch_index, batch = _Shared.batches.take()
        self.load_client.infer(batch_index, batch, scheduled)


class UncodedUser(CodedBatchUser):
    """Input k -> one worker, wait for all K answers (compute 1 per input)."""

    scheme = UNCODED


class ReplicationUser(CodedBatchUser):
    """Each input -> N // K workers, first answer wins (compute N // K per input)."""

    scheme = REPLICATION


if HEDGED in available_schemes():
    class HedgedUser(CodedBatchUser):
        """Uncoded, plus a second copy of an input to another worker once the first is late (hedge delay)."""

        scheme = HEDGED


class BaccUser(CodedBatchUser):
    """Berrut coded: N coded inputs, decode from the first M answers by the deadline (compute N / K per input)."""

    scheme = BACC_NAME


class NerccUser(CodedBatchUser):
    """NeRCC coded (smoothing splines): like BaccUser with NeRCC's encoder/decoder (compute N / K per input)."""

    scheme = NERCC_NAME


class BaccSysUser(CodedBatchUser):
    """Systematic BACC: K workers get the inputs unchanged, N - K Berrut parity inputs (compute N / K per input)."""

    scheme = BACC_SYS_NAME


class NerccSysUser(CodedBatchUser):
    """Systematic NeRCC: K workers get the inputs unchanged, N - K spline parity inputs (compute N / K per input)."""

    scheme = NERCC_SYS_NAME


# ---------------------------------------------------------------------------- per-request log (exact latencies)
def _is_worker(runner) -> bool:
    from locust.runners import WorkerRunner

    return isinstance(runner, WorkerRunner)


@events.test_start.add_listener
def open_requests_log(environment, **_kwargs) -> None:
    path = getattr(environment.parsed_options, "requests_log", "") if environment.parsed_options else ""
    from locust.runners import MasterRunner

    if isinstance(environment.runner, MasterRunner):
        return  # distributed mode: the master runs no users; each worker writes <log>.worker<pid>
    if path and _is_worker(environment.runner):
        path = f"{path}.worker{os.getpid()}"
    if path and _Shared.log.path is None:
        _Shared.log = RequestLog(path)


@events.test_stop.add_listener
def close_measurement(environment, **_kwargs) -> None:
    for client in list(_Shared.clients.values()):  # abandoned straggler requests belong to the measured stretch
        try:
            client.drain()
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
    if _Shared.meter is not None:
        _Shared.log.event("cpu", phase="end", step=None, rate=float(environment.parsed_options.rate),
                          max_in_flight=_Shared.max_in_flight, **_Shared.meter.snapshot())


@events.quitting.add_listener
def close_everything(environment, **_kwargs) -> None:
    for client in list(_Shared.clients.values()):
        try:
            client.close()
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
    _Shared.clients.clear()
    if _Shared.loop is not None:
        _Shared.loop.close()
    _Shared.log.close()
