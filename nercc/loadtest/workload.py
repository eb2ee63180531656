"""What both load engines share: the batches they send, the Poisson arrival schedule, the per-request log record,
and the CPU meter that reads /proc.

The two engines (``loadtest/openloop.py``, asyncio, and ``loadtest/locustfile.py``, Locust) differ only in who
drives the client; everything that decides what is sent, when, and what is written down lives here, so a
difference between their numbers is the harness's, not the workload's.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from nercc.coding.registry import CODED_SCHEMES, HEDGED, SCHEME_ORDER

#: The coded schemes (the registry's list): they take a wait policy and lams.
CODED = CODED_SCHEMES


def available_schemes() -> tuple:
    """The schemes the installed client serves, in report order."""
    from nercc.client import SCHEMES

    return tuple(s for s in SCHEME_ORDER if s in SCHEMES) + tuple(s for s in SCHEMES if s not in SCHEME_ORDER)


def user_class_name(scheme: str) -> str:
    """The Locust user class that sends ``scheme``'s batches (nercc.loadtest.locustfile): nercc -> NerccUser,
    nercc-sys -> NerccSysUser."""
    return "".join(part.capitalize() for part in scheme.split("-")) + "User"


# ------------------------------------------------------------------------------------------------ batches
class Batches:
    """Consecutive batches of K raw test inputs of the model's dataset (MNIST, CIFAR-10, the ImageNet samples).

    Shared by the users of one process so each batch index is sent once per lap; the index goes into the log so
    the report can compare the served predictions with the local model on the same inputs.
    """

    def __init__(self, model: str, n_inputs: int):
        from nercc.data import load_model_data
        from nercc.models import load_model_info

        info = load_model_info(model)
        images, labels = load_model_data(info, "test")
        self.n_inputs = int(n_inputs)
        if len(images) >= self.n_inputs:
            self.n_batches = len(images) // self.n_inputs
        else:
            self.n_batches = 0
        if self.n_batches < 1:
            raise ValueError(f"n_inputs={n_inputs} is larger than the {info.dataset} test set ({len(images)})")
        self.images = np.ascontiguousarray(images[: self.n_batches * self.n_inputs])
        self.labels = np.asarray(labels[: self.n_batches * self.n_inputs])
        self._next = itertools.count()

    def take(self) -> tuple:
        index = next(self._next) % self.n_batches
        return index, self.get(index)

    def get(self, index: int) -> np.ndarray:
        start = int(index) * self.n_inputs
        return self.images[start:start + self.n_inputs]


# ------------------------------------------------------------------------------------------------ arrivals
def poisson_offsets(rate_per_s: float, duration_s: float, seed: int) -> np.ndarray:
    """Arrival times (s from the start) of a Poisson process of ``rate_per_s`` over ``duration_s``, seeded."""
    if not rate_per_s > 0:
        raise ValueError(f"rate must be > 0 batches/s, got {rate_per_s}")
    rng = np.random.default_rng(seed)
    expected = rate_per_s * duration_s
    gaps = rng.exponential(1.0 / rate_per_s, size=int(expected + 6 * math.sqrt(expected) + 16))
    times = np.cumsum(gaps)
    while times[-1] < duration_s:  # astronomically unlikely; keep drawing rather than truncate the process
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate_per_s, size=64))])
    return times[times < duration_s]


# ------------------------------------------------------------------------------------------------ records
def request_record(scheme: str, batch_index: int, scheduled: float, started: float, result=None,
                   exception: BaseException | None = None, wall_ms: float | None = None,
                   keep_predictions: bool = False, deadline_ms: float | None = None) -> dict:
    """One line of the requests log.

    ``scheduled`` / ``started`` are ``time.time()`` stamps: the arrival the schedule asked for and the moment the
    engine really called the client (``lag_ms`` between them is the harness falling behind). ``ms`` is the
    client's own end-to-end time for the batch (``CodedResult.total_ms``); ``worker_ms`` maps each worker that
    answered before the client stopped waiting to its round trip from the fan-out, the per-worker request
    latencies a simulator calibrates from.
    """
    record: Dict[str, object] = {
        "scheme": scheme, "batch": int(batch_index), "t_sched": round(scheduled, 5),
        "lag_ms": round((started - scheduled) * 1e3, 3),
    }
    if result is None:
        record.update(ok=False, ms=round(float(wall_ms or 0.0), 3),
                      error=f"{type(exception).__name__}: {exception}" if exception is not None else "no result")
        record["t"] = round(started + (wall_ms or 0.0) / 1e3, 5)
        return record
    error = _check(result, deadline_ms)
    record.update(
        ok=error is None, error=error, ms=round(float(result.total_ms), 3),
        t=round(started + result.total_ms / 1e3, 5),
        late=bool(result.late), n_arrived=len(result.arrived), n_requests=int(result.n_requests),
        n_errors=len(result.errors), encode_ms=round(result.encode_ms, 3), fanout_ms=round(result.fanout_ms, 3),
        decode_ms=round(result.decode_ms, 3), arrived=[int(w) for w in result.arrived],
        worker_ms={str(w): round(float(v), 3) for w, v in sorted(result.worker_latency_ms.items())},
    )
    if wall_ms is not None:
        record["wall_ms"] = round(float(wall_ms), 3)
    if getattr(result, "hedge_ms", None) is not None:
        record["hedge_ms"] = round(float(result.hedge_ms), 3)
    if result.errors:
        record["worker_errors"] = sorted(int(w) for w in result.errors)
    if getattr(result, "exact", None) is not None:
        record["n_exact"] = int(np.count_nonzero(result.exact))  # predictions that are their input's own answer
    if keep_predictions:
        record["predictions"] = np.round(np.asarray(result.predictions, dtype=float), 6).tolist()
    return record


def _check(result, deadline_ms: float | None) -> str | None:
    predictions = np.asarray(result.predictions)
    if predictions.ndim != 2:
        return f"ValueError: wrong-shaped predictions {predictions.shape}"
    if not np.isfinite(predictions).all():
        return "ValueError: predictions contain NaN or inf"
    if result.late:
        return f"TimeoutError: late: an answer it needed arrived after deadline_ms={deadline_ms:g}" if deadline_ms \
            else "TimeoutError: late"
    return None


class RequestLog:
    """Append-only JSON-lines log (one process writes it); ``event`` lines carry CPU snapshots and counters."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", buffering=1 << 16)  # buffered: no write per request in the hot path

    def write(self, record: dict) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record) + "\n")

    def event(self, name: str, **fields) -> None:
        self.write({"event": name, "t": round(time.time(), 5), **fields})
        if self._fh is not None:
            self._fh.flush()  # events are rare; flushed, they tell a watcher (the dead-worker kill) where a run is

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ------------------------------------------------------------------------------------------------ CPU from /proc
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of one process (all its threads), seconds; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5), after pid and comm


def descendants(pids: Iterable[int]) -> List[int]:
    """The given pids and every process below them (Triton's Python-backend stubs are children of tritonserver)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [int(p) for p in pids]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class CpuMeter:
    """CPU seconds spent by this process and by the servers (tritonservers + their stubs), from /proc.

    ``snapshot()`` returns a dict that goes into the log; the report subtracts a start snapshot from an end one.
    A server that dies between the snapshots (dead-worker) contributes what it used up to the last snapshot that
    saw it, so its CPU is undercounted, never negative.
    """

    def __init__(self, server_pids: Sequence[int] = ()):
        self.server_pids = [int(p) for p in server_pids]
        self._last: Dict[int, float] = {}
        self._procs: List[int] = descendants(self.server_pids) if self.server_pids else []

    def snapshot(self) -> dict:
        times = os.times()
        servers = None
        if self._procs:
            for pid in self._procs:
                value = _proc_cpu_s(pid)
                if value is not None:
                    self._last[pid] = value
            servers = round(sum(self._last.values()), 3)
        return {"self_cpu_s": round(times.user + times.system, 4), "servers_cpu_s": servers,
                "n_server_procs": len(self._procs), "wall": round(time.time(), 5)}


def parse_pids(text: str | None) -> List[int]:
    return [int(p) for p in str(text or "").split(",") if p.strip()]


# ------------------------------------------------------------------------------------------------ engine options
#: Options whose default may come from the environment (the Locust engine reads it): flag, variable, help.
ENV_OPTIONS = (
    ("--master-url", "NERCC_MASTER_URL", "gRPC host:port of the master (encoder)"),
    ("--worker-urls", "NERCC_WORKER_URLS", "comma-separated gRPC host:port of the N workers"),
    ("--master-http-url", "NERCC_MASTER_HTTP_URL",
     "HTTP host:port of the master: the Locust engine's native gevent transport uses HTTP"),
    ("--worker-http-urls", "NERCC_WORKER_HTTP_URLS",
     "comma-separated HTTP host:port of the N workers (same order as --worker-urls); without them Locust drives "
     "the gRPC asyncio client through a thread bridge"),
    ("--urls-file", "NERCC_URLS_FILE", "JSON with master_url and worker_urls, as `nercc serve --urls-file` writes it"),
)
#: TLS options: client- prefix, as Locust's own --tls-cert/--tls-key are for its web UI.
ENV_TLS_OPTIONS = (
    ("--client-tls-ca", "NERCC_TLS_CA", "CA (PEM) of servers started with --tls-cert: gRPC over TLS "
     "(client- prefix: Locust's own --tls-cert/--tls-key are for its web UI)"),
    ("--client-tls-cert", "NERCC_TLS_CERT", "client certificate (PEM) for mutual TLS"),
    ("--client-tls-key", "NERCC_TLS_KEY", "client key (PEM) for mutual TLS"),
)


def _add_env_options(group, options, env) -> None:
    for flag, variable, text in options:
        group.add_argument(flag, default=env(variable, ""), help=f"{text}; env {variable}")


def add_engine_arguments(group, defaults_from_env: bool = False) -> None:
    """The options both engines take (the Locust one adds them to Locust's parser): same names, same meaning."""
    env = os.environ.get if defaults_from_env else (lambda _name, default=None: default)
    _add_env_options(group, ENV_OPTIONS, env)
    group.add_argument("--model", default="lenet5", help="served model; batches come from its dataset's test split")
    group.add_argument("--n-inputs", type=int, default=4, help="K: inputs per coded batch")
    group.add_argument("--deadline-ms", type=float, default=40.0,
                       help="end-to-end deadline per batch; a batch that needed an answer after it is 'late' (fails)")
    group.add_argument("--policy", default="first:8", help="coded schemes' wait policy: first:M | deadline | all")
    group.add_argument("--min-answers", type=int, default=None,
                       help="coded schemes: fewest answers a batch decodes from; with fewer by the deadline it waits "
                            "(late) (default: the client's, 2)")
    group.add_argument("--hard-timeout-ms", type=float, default=2000.0,
                       help="longest a batch waits for the minimum answers before it errors")
    group.add_argument("--n-stragglers", type=int, default=None,
                       help="S the encoder's lam_enc is looked up for (default: the client's, N - M for first:M)")
    group.add_argument("--encode", default="server", choices=("server", "local"),
                       help="coded schemes: encode on the master (Triton encoder, the default) or in the client")
    group.add_argument("--hedge-ms", type=float, default=None,
                       help="hedged: the hedge delay (default: the client's own, the p95 of the round trips it saw)")
    group.add_argument("--lam-enc", type=float, default=None, help="NeRCC encoder smoothing (default: tuning profile)")
    group.add_argument("--lam-dec", type=float, default=None, help="NeRCC decoder smoothing (default: tuning profile)")
    group.add_argument("--coded-endpoint", action="store_true",
                       default=str(env("NERCC_CODED_ENDPOINT", "") or "").lower() in ("1", "true", "yes"),
                       help="send each batch to the master's coded endpoint <model>_coded (encode, fan-out, wait "
                            "and decode on the master; one gRPC request per batch) instead of decoding here; logged "
                            "as <scheme>-server; env NERCC_CODED_ENDPOINT=1")
    group.add_argument("--rate", type=float, default=10.0,
                       help="offered load, batches/s in total: Poisson arrivals (open loop)")
    group.add_argument("--arrival-seed", type=int, default=1, help="seed of the Poisson arrival times")
    group.add_argument("--requests-log", default="",
                       help="write every request (latency, outcome, per-worker times, predictions) as JSON lines")
    group.add_argument("--record-predictions", type=int, default=1,
                       help="keep the predictions of every n-th request in the log, for MSE/RelAcc (0: none)")
    group.add_argument("--server-pids", default="",
                       help="comma-separated tritonserver pids: their CPU (and their stubs') goes into the log")
    _add_env_options(group, ENV_TLS_OPTIONS, env)
    group.add_argument("--metrics-port", type=int, default=int(env("NERCC_METRICS_PORT", "0") or 0),
                       help="expose the client's Prometheus metrics on this port (127.0.0.1; 0: off)")


def cluster_urls(options) -> tuple:
    """(master_url or None, [worker urls]) from --master-url/--worker-urls, else from --urls-file."""
    master = (options.master_url or "").strip() or None
    workers = [u.strip() for u in str(options.worker_urls or "").split(",") if u.strip()]
    if not workers and getattr(options, "urls_file", ""):
        from nercc.serving.urls import read_urls

        cluster = read_urls(options.urls_file)  # validated: host:port strings, workers in order
        workers = list(cluster.worker_urls)
        master = master or cluster.master_url
    if not workers:
        raise ValueError(
            "no workers: pass --worker-urls host:port,host:port,... or --urls-file FILE (from `nercc serve "
            "--urls-file FILE`), or set NERCC_WORKER_URLS / NERCC_URLS_FILE"
        )
    return master, workers


def _optional_float(value):
    """None / "" (the Locust web UI's empty field) -> None, else a float."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else float(value)


def client_kwargs(options, scheme: str) -> dict:
    """CodedClient keyword arguments for one scheme from the engine options."""
    master, workers = cluster_urls(options)
    kwargs = dict(
        master_url=master, worker_urls=workers, model=options.model, scheme=scheme,
        deadline_ms=float(options.deadline_ms),
        policy=options.policy if scheme in CODED else "deadline",
        n_inputs=int(options.n_inputs), hard_timeout_ms=float(options.hard_timeout_ms),
    )
    if scheme == HEDGED and _optional_float(getattr(options, "hedge_ms", None)) is not None:
        kwargs["hedge_ms"] = float(options.hedge_ms)
    if scheme in CODED:
        kwargs.update(lam_enc=_optional_float(options.lam_enc), lam_dec=_optional_float(options.lam_dec))
        if getattr(options, "encode", "server") != "server":  # passed only when asked: older clients lack it
            kwargs["encode"] = options.encode
        if options.n_stragglers is not None:
            kwargs["n_stragglers"] = int(options.n_stragglers)
        if getattr(options, "min_answers", None):
            kwargs["min_answers"] = int(options.min_answers)
    from nercc.client.tls import ClientTLS

    tls = ClientTLS.from_options(*(getattr(options, f"client_tls_{k}", "") or None for k in ("ca", "cert", "key")))
    if tls is not None:
        kwargs["tls"] = tls
    port = int(getattr(options, "metrics_port", 0) or 0)
    if port:
        kwargs["metrics"] = process_metrics(port)
    return kwargs


#: The label of a scheme served by the master's coded endpoint (logs, tables): ``nercc-server``.
ENDPOINT_SUFFIX = "-server"


def scheme_label(options, scheme: str) -> str:
    """What the logs call this run's scheme: ``nercc``, or ``nercc-server`` through the coded endpoint."""
    return scheme + ENDPOINT_SUFFIX if getattr(options, "coded_endpoint", False) else scheme


def make_async_client(options, scheme: str):
    """The asyncio client the engines drive: :class:`nercc.client.CodedClient` (client-side decode), or with
    ``--coded-endpoint`` :class:`nercc.client.endpoint.EndpointClient` (the master decodes)."""
    if getattr(options, "coded_endpoint", False):
        from nercc.client.endpoint import EndpointClient

        master, workers = cluster_urls(options)
        if master is None:
            raise ValueError("--coded-endpoint needs the master's URL (--master-url or --urls-file)")
        return EndpointClient(master, model=options.model, scheme=scheme, deadline_ms=float(options.deadline_ms),
                              policy=options.policy if scheme in CODED else "deadline", n_workers=len(workers),
                              hard_timeout_ms=float(options.hard_timeout_ms), n_inputs=int(options.n_inputs))
    from nercc.client import CodedClient

    return CodedClient(**client_kwargs(options, scheme))


_METRICS = {}


def process_metrics(port: int):
    """This process's client metrics, served on 127.0.0.1:port from the first call on (one per process)."""
    if port not in _METRICS:
        from nercc.client.metrics import ClientMetrics

        metrics = ClientMetrics()
        metrics.serve(port)
        _METRICS[port] = metrics
    return _METRICS[port]
