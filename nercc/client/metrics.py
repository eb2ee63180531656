"""Prometheus metrics of the coded client (``prometheus_client``, the ``metrics`` extra).

One :class:`ClientMetrics` per process (or per registry), shared by any number of clients::

    metrics = ClientMetrics()                      # default registry
    metrics.serve(9108)                            # http://host:9108/metrics (demo/loadtest: --metrics-port)
    CodedClient(master, workers, ..., metrics=metrics)

Series (every one labelled by ``scheme``):

``nercc_client_batches_total{scheme, outcome}``
    batches served; outcome = ``ok`` (decoded by the deadline), ``late`` (decoded, but an answer it used came
    after the deadline), ``failed`` (too few answers by the hard timeout, or the master failed)
``nercc_client_answers_used_total{scheme}``, ``nercc_client_requests_total{scheme}``
    worker answers the decodes used, and worker requests sent: their ratio is the answers a batch needed
``nercc_client_worker_errors_total{scheme}``
    worker requests that failed (unreachable, timed out, refused)
``nercc_client_decode_seconds{scheme}``, ``nercc_client_batch_seconds{scheme}``
    histograms of the decode step and of the whole call
``nercc_client_workers_marked_down_total{worker}``, ``nercc_client_workers_down``
    the health hook: whoever decides a worker is down (a health checker) calls :meth:`worker_marked_down` /
    :meth:`worker_back_up`
"""

from __future__ import annotations

from typing import Any

#: Buckets in seconds: decode is sub-millisecond to milliseconds, a batch milliseconds to seconds.
DECODE_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
BATCH_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ClientMetrics:
    def __init__(self, registry: Any = None, namespace: str = "nercc_client"):
        try:
            import prometheus_client as prom
        except ImportError as exc:  # pragma: no cover - the metrics extra is missing
            raise ImportError("client metrics need prometheus_client: pip install 'nercc[metrics]'") from exc
        self._prom = prom
        self.registry = registry if registry is not None else prom.REGISTRY
        kw = {"registry": self.registry, "namespace": namespace}
        self.batches = prom.Counter("batches", "coded batches by scheme and outcome (ok, late, failed)",
                                    ["scheme", "outcome"], **kw)
        self.answers_used = prom.Counter("answers_used", "worker answers used by the decodes", ["scheme"], **kw)
        self.requests = prom.Counter("requests", "worker requests sent", ["scheme"], **kw)
        self.worker_errors = prom.Counter("worker_errors", "worker requests that failed", ["scheme"], **kw)
        self.decode_seconds = prom.Histogram("decode_seconds", "decode step", ["scheme"], buckets=DECODE_BUCKETS, **kw)
        self.batch_seconds = prom.Histogram("batch_seconds", "whole infer call", ["scheme"], buckets=BATCH_BUCKETS, **kw)
        self.marked_down = prom.Counter("workers_marked_down", "times a worker was marked down", ["worker"], **kw)
        self.workers_down = prom.Gauge("workers_down", "workers marked down now", **kw)
        self._down: set = set()

    # -- what the clients call
    def observe(self, result) -> None:
        """One decoded batch (a :class:`nercc.client.core.CodedResult`)."""
        scheme = result.scheme
        self.batches.labels(scheme, "late" if result.late else "ok").inc()
        self.answers_used.labels(scheme).inc(len(result.arrived))
        self.requests.labels(scheme).inc(result.n_requests)
        if result.errors:
            self.worker_errors.labels(scheme).inc(len(result.errors))
        self.decode_seconds.labels(scheme).observe(result.decode_ms / 1e3)
        self.batch_seconds.labels(scheme).observe(result.total_ms / 1e3)

    def failed(self, scheme: str, seconds: float) -> None:
        """A batch that raised (too few answers by the hard timeout, master error)."""
        self.batches.labels(scheme, "failed").inc()
        self.batch_seconds.labels(scheme).observe(seconds)

    # -- the health hook
    def worker_marked_down(self, worker: int | str) -> None:
        self.marked_down.labels(str(worker)).inc()
        self._down.add(str(worker))
        self.workers_down.set(len(self._down))

    def worker_back_up(self, worker: int | str) -> None:
        self._down.discard(str(worker))
        self.workers_down.set(len(self._down))

    # -- exposition
    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Serve /metrics on ``addr:port`` from a background thread (0: a free port); returns the server."""
        server, _thread = self._prom.start_http_server(port, addr=addr, registry=self.registry)
        return server

    def text(self) -> str:
        return self._prom.generate_latest(self.registry).decode()
