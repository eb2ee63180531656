"""Locust users that serve MNIST batches through nercc's coded Triton cluster, one user class per scheme.

Every task sends one batch of K real MNIST test images through :class:`nercc.client.CodedClient` and reports
it to Locust as one request: type ``infer``, name = the scheme, response time = the client's end-to-end
``total_ms`` (call → decoded predictions). The request fails when the client raised (too few answers, a
dead master...), when the result is ``late`` (an answer it needed came in after the deadline), or when the
predictions are not K finite probability rows.

Start a cluster (``nercc serve --workers 12 --straggler bimodal:p=0.1,slow_ms=40 --urls-file c.json``), then::

    locust -f loadtest/locustfile.py --urls-file c.json                                           # web UI
    locust -f loadtest/locustfile.py --urls-file c.json --headless -u 16 -r 16 -t 60s NerccUser   # headless

Each user has one batch in flight at a time: closed loop by default, or one batch every 1 / ``--rate-per-user``
seconds (constant pacing) so that every scheme gets the same offered load.

Pick the scheme by user class (``UncodedUser``, ``ReplicationUser``, ``BaccUser``, ``NerccUser``; all four share
the load when none is named, ``--class-picker`` lets the web UI choose). ``nercc loadtest`` runs this file
headless once per scheme on one cluster and writes the report.

gRPC and gevent: Locust's users are greenlets, the client is asyncio + ``grpc.aio``. All clients of this
process share one asyncio loop running in a real OS thread (:mod:`loadtest.gevent_asyncio`); a user submits
its batch there and parks on a gevent watcher, so U users keep U batches in flight.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Dict

from locust import User, constant, constant_pacing, events, task
from locust.exception import StopUser

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `locust -f loadtest/locustfile.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import gevent  # noqa: E402
import numpy as np  # noqa: E402
import numpy.testing  # noqa: E402,F401 - imported lazily by scipy, and its import runs a subprocess: not in the loop thread
from gevent.lock import Semaphore  # noqa: E402

from loadtest.gevent_asyncio import AsyncioThread  # noqa: E402
from loadtest.run import resolve_policy  # noqa: E402

REQUEST_TYPE = "infer"


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("nercc", "the coded Triton cluster under test (see `nercc serve`)")
    group.add_argument("--urls-file", default=os.environ.get("NERCC_URLS_FILE", ""),
                       help="JSON with master_url and worker_urls, as `nercc serve --urls-file` writes it; "
                            "env NERCC_URLS_FILE")
    group.add_argument("--master-url", default=os.environ.get("NERCC_MASTER_URL", ""),
                       help="gRPC host:port of the master (encoder); env NERCC_MASTER_URL")
    group.add_argument("--worker-urls", default=os.environ.get("NERCC_WORKER_URLS", ""),
                       help="comma-separated gRPC host:port of the N workers; env NERCC_WORKER_URLS")
    group.add_argument("--model", default="lenet5", help="served model (MNIST models only: inputs are MNIST)")
    group.add_argument("--n-inputs", type=int, default=4, help="K: MNIST images per coded batch")
    group.add_argument("--deadline-ms", type=float, default=40.0,
                       help="end-to-end deadline per batch; an answer needed after it makes the request fail")
    group.add_argument("--policy", default="auto",
                       help="coded schemes' wait policy: deadline | first:M | all | auto (= first:M, M = ceil(2N/3))")
    group.add_argument("--rate-per-user", type=float, default=0.0,
                       help="batches per second each user starts (constant pacing, random phase); 0 = closed loop, "
                            "the next batch right after the previous answer")
    group.add_argument("--hard-timeout-ms", type=float, default=2000.0,
                       help="longest a batch waits for the minimum answers before it errors")
    group.add_argument("--lam-enc", type=float, default=None, help="NeRCC encoder smoothing (default: tuning profile)")
    group.add_argument("--lam-dec", type=float, default=None, help="NeRCC decoder smoothing (default: tuning profile)")
    group.add_argument("--requests-log", default="",
                       help="write every request (latency, outcome, batch index, predictions) as JSON lines here")
    group.add_argument("--record-predictions", type=int, default=1,
                       help="keep the predictions of every n-th request in the log, for MSE/RelAcc (0: none)")


def cluster_urls(options) -> tuple:
    """(master_url or None, [worker urls]) from --master-url/--worker-urls, else from --urls-file."""
    master = (options.master_url or "").strip() or None
    workers = [u.strip() for u in str(options.worker_urls or "").split(",") if u.strip()]
    if not workers and options.urls_file:
        with open(options.urls_file) as fh:
            urls = json.load(fh)
        if not isinstance(urls.get("worker_urls"), list) or not urls["worker_urls"]:
            raise ValueError(f"{options.urls_file}: needs a non-empty 'worker_urls' list")
        workers = [str(u) for u in urls["worker_urls"]]
        master = master or urls.get("master_url")
    if not workers:
        raise ValueError(
            "no workers: pass --worker-urls host:port,host:port,... or --urls-file FILE (from `nercc serve "
            "--urls-file FILE`), or set NERCC_WORKER_URLS / NERCC_URLS_FILE"
        )
    return master, workers


def _optional_float(value):
    """None / "" (the web UI's empty field) → None, else a float."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else float(value)


class MnistBatches:
    """Consecutive batches of K test images, shared by the users of a process so each batch is sent once per lap."""

    def __init__(self, n_inputs: int):
        from nercc.data import load_mnist

        images, labels = load_mnist("test")
        self.n_inputs = int(n_inputs)
        self.n_batches = len(images) // self.n_inputs
        if self.n_batches < 1:
            raise ValueError(f"n_inputs={n_inputs} is larger than the MNIST test set")
        self.images = images[: self.n_batches * self.n_inputs]
        self._next = itertools.count()

    def take(self):
        index = next(self._next) % self.n_batches
        start = index * self.n_inputs
        return index, self.images[start:start + self.n_inputs]


class NerccLoadClient:
    """Locust's custom-client pattern: wraps CodedClient.infer and reports each batch to ``events.request``."""

    def __init__(self, environment, scheme: str, loop: AsyncioThread):
        from nercc.client import CodedClient

        options = environment.parsed_options
        master, workers = cluster_urls(options)
        self.environment = environment
        self.scheme = scheme
        self.loop = loop
        self.n_inputs = int(options.n_inputs)
        coded = scheme in ("nercc", "bacc")
        self.client = CodedClient(
            master, workers, model=options.model, scheme=scheme,
            deadline_ms=options.deadline_ms,
            policy=resolve_policy(options.policy, len(workers)) if coded else "deadline",
            n_inputs=self.n_inputs, lam_enc=_optional_float(options.lam_enc), lam_dec=_optional_float(options.lam_dec),
            hard_timeout_ms=options.hard_timeout_ms,
        )
        self.loop.run(self.client.connect(), timeout=60)
        self.n_classes = self.client.spec.n_classes
        if self.client.spec.raw_shape != (28, 28):
            raise ValueError(f"model {options.model!r} takes raw inputs of shape {self.client.spec.raw_shape}; "
                             "the load test sends MNIST images (28, 28): serve an MNIST model such as lenet5")
        if coded:
            # Build the scheme here, in the gevent thread: first use triggers lazy scipy imports, some of which
            # spawn subprocesses, and gevent can only watch children from its main loop.
            scheme_obj = self.client.coding_scheme(self.n_inputs)
            scheme_obj.decode(np.zeros((len(workers), self.n_classes)), list(range(len(workers))))
        self.record_every = max(0, int(options.record_predictions))
        self._count = itertools.count()

    def warm_up(self, batch: np.ndarray, rounds: int = 3) -> None:
        """A few unreported batches: first-use costs (channels, decoding matrices) stay out of the statistics."""
        for _ in range(rounds):
            try:
                self.loop.run(self.client.infer(batch), timeout=30)
            except Exception:  # noqa: BLE001 - a dead worker may make warm-up fail; the run itself will report it
                pass

    def infer(self, batch_index: int, batch: np.ndarray) -> None:
        started = time.perf_counter()
        context: Dict[str, object] = {"batch": batch_index}
        exception: Exception | None = None
        result = None
        try:
            result = self.loop.run(self.client.infer(batch))
        except Exception as exc:  # noqa: BLE001 - every failure is reported to Locust, never raised into the user
            exception = exc
        wall_ms = (time.perf_counter() - started) * 1e3
        context["wall_ms"] = round(wall_ms, 3)
        if result is not None:
            response_time = result.total_ms
            exception = self._check(result)
            context.update(
                late=bool(result.late), n_arrived=len(result.arrived), n_requests=int(result.n_requests),
                n_errors=len(result.errors), encode_ms=round(result.encode_ms, 3),
                fanout_ms=round(result.fanout_ms, 3), decode_ms=round(result.decode_ms, 3),
            )
            if self.record_every and next(self._count) % self.record_every == 0:
                context["predictions"] = np.round(result.predictions.astype(float), 6).tolist()
        else:
            response_time = wall_ms
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=self.scheme, response_time=response_time,
            response_length=0 if result is None else int(result.predictions.nbytes),
            exception=exception, context=context,
        )

    def _check(self, result) -> Exception | None:
        predictions = result.predictions
        if predictions.shape != (self.n_inputs, self.n_classes):
            return ValueError(f"wrong-shaped predictions: expected {(self.n_inputs, self.n_classes)}")
        if not np.isfinite(predictions).all():
            return ValueError("predictions contain NaN or inf")
        if result.late:
            return TimeoutError(f"late: an answer it needed arrived after deadline_ms={self.client.deadline_ms:g}")
        return None

    def close(self) -> None:
        self.loop.run(self.client.close(), timeout=30)


class _Shared:
    """Per-process state: the asyncio loop thread, MNIST batches, one client per scheme (all users share it)."""

    loop: AsyncioThread | None = None
    batches: MnistBatches | None = None
    clients: Dict[str, NerccLoadClient] = {}
    lock = Semaphore()
    log = None
    log_t0 = 0.0

    @classmethod
    def client_for(cls, environment, scheme: str) -> NerccLoadClient:
        with cls.lock:  # the first user of a scheme builds, connects and warms its client; the others wait
            if cls.loop is None:
                cls.loop = AsyncioThread(name="nercc-locust-loop")
            if cls.batches is None:
                cls.batches = MnistBatches(environment.parsed_options.n_inputs)
            client = cls.clients.get(scheme)
            if client is None:
                client = NerccLoadClient(environment, scheme, cls.loop)
                client.warm_up(cls.batches.images[: client.n_inputs])
                cls.clients[scheme] = client
            return client


class CodedBatchUser(User):
    """Send a batch, wait for its K predictions, then the next: at once (closed loop, the default) or every
    1 / --rate-per-user seconds (constant pacing, so every scheme gets the same offered load)."""

    abstract = True
    scheme = ""

    def on_start(self) -> None:
        try:
            self.load_client = _Shared.client_for(self.environment, self.scheme)
        except Exception as exc:  # noqa: BLE001 - e.g. no URLs: say why once per user and stop it
            self.environment.events.request.fire(
                request_type="setup", name=self.scheme, response_time=0, response_length=0,
                exception=exc, context={},
            )
            raise StopUser() from exc
        rate = float(self.environment.parsed_options.rate_per_user or 0.0)
        if rate < 0:
            raise StopUser(f"--rate-per-user must be >= 0, got {rate}")
        self._pacing = constant_pacing(1.0 / rate) if rate > 0 else constant(0)
        if rate > 0:
            # users spawned together would send in lockstep bursts; a random phase spreads them over the period
            gevent.sleep(random.uniform(0.0, 1.0 / rate))

    def wait_time(self) -> float:
        return self._pacing(self)

    @task
    def infer_batch(self) -> None:
        batch_index, batch = _Shared.batches.take()
        self.load_client.infer(batch_index, batch)


class UncodedUser(CodedBatchUser):
    """Input k → one worker, wait for all K answers (compute 1 per input)."""

    scheme = "uncoded"


class ReplicationUser(CodedBatchUser):
    """Each input → N // K workers, first answer wins (compute N // K per input)."""

    scheme = "replication"


class BaccUser(CodedBatchUser):
    """Berrut coded: N coded inputs, decode from the first M answers by the deadline (compute N / K per input)."""

    scheme = "bacc"


class NerccUser(CodedBatchUser):
    """NeRCC coded (smoothing splines): like BaccUser with NeRCC's encoder/decoder (compute N / K per input)."""

    scheme = "nercc"


# ---------------------------------------------------------------------------- per-request log (exact latencies)
@events.test_start.add_listener
def open_requests_log(environment, **_kwargs) -> None:
    path = getattr(environment.parsed_options, "requests_log", "") if environment.parsed_options else ""
    if not path:
        return
    if _Shared.log is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _Shared.log = open(path, "a", buffering=1)
        _Shared.log_t0 = time.time()


@events.request.add_listener
def log_request(request_type, name, response_time, response_length, exception=None, context=None, **_kwargs) -> None:
    if _Shared.log is None or request_type != REQUEST_TYPE:
        return
    record = {"t": round(time.time(), 4), "scheme": name, "ms": round(float(response_time), 4),
              "ok": exception is None, "error": None if exception is None else f"{type(exception).__name__}: {exception}"}
    record.update(context or {})
    _Shared.log.write(json.dumps(record) + "\n")


@events.test_stop.add_listener
def log_concurrency(environment, **_kwargs) -> None:
    if _Shared.log is not None and _Shared.loop is not None:
        loop = _Shared.loop
        _Shared.log.write(json.dumps({"t": round(time.time(), 4), "event": "test_stop",
                                      "max_in_flight": loop.max_in_flight, "completed": loop.completed}) + "\n")
        _Shared.log.flush()


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
    if _Shared.log is not None:
        _Shared.log.close()
        _Shared.log = None
