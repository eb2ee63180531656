"""The gevent transport of the coded client: :class:`GeventCodedClient` on ``tritonclient.http``.

Same constructor, same :class:`~nercc.client.core.CodedResult`, same core as :class:`nercc.client.CodedClient`,
but a synchronous ``infer(batch)`` that cooperates with gevent: every worker request is a greenlet on
``tritonclient.http`` (geventhttpclient, the HTTP stack Locust's FastHttpUser uses), so a Locust user calls it
directly, without an asyncio thread bridge. Outside Locust it works as a plain blocking client (no monkey
patching needed: geventhttpclient's sockets are gevent's own).

Why HTTP and not gRPC under gevent: for a 12-request fan-out, one batch at a time, issue 9 measured p50
9.3 ms for ``tritonclient.grpc.aio``, 9.5 ms for ``tritonclient.http`` under gevent and 12.3 ms for
``tritonclient.grpc`` under ``grpc.experimental.gevent.init_gevent()``; ``nercc/bench/client_cost.py`` measures
this transport beside the asyncio one (docs/client.md).

URLs are the servers' HTTP ``host:port`` (``LocalCluster.master_http_url`` / ``worker_http_urls``).
Each request greenlet takes the time its answer arrived and puts it in the batch's inbox; the calling greenlet
feeds them to the :class:`~nercc.client.core.WaitState` and sleeps on the inbox until the next answer or the
state's next wake-up. Requests still in flight at the decode are left to finish in the background (their
greenlets are kept, :meth:`drain` waits for them).
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import gevent
import numpy as np
from gevent.queue import Empty, Queue

from nercc.client.base import PARITY, ClientBase, error_text, feed_answers, parity_arrived
from nercc.client.core import (
    DECODE,
    GIVE_UP,
    CodedResult,
    Decision,
    MasterError,
    ModelSpec,
    WaitState,
    spec_from_server_metadata,
)

#: Network timeout added to the hard timeout: frees a greenlet from a hung server, never races an answer.
NETWORK_TIMEOUT_SLACK_S = 60.0


def _master_refused(exc: BaseException) -> bool:
    """The master answered and refused this request (HTTP 400: a bad request every master would refuse), as
    opposed to a failure another master may not share (unreachable, timed out, internal error)."""
    status = getattr(exc, "status", None)
    return callable(status) and str(status()) == "400"


class GeventCodedClient(ClientBase):
    """Coded prediction serving over Triton HTTP with gevent greenlets; arguments as
    :class:`nercc.client.aio.CodedClient` (HTTP URLs; ``metrics`` too, not ``tls``, ``channel_args`` or
    ``cancel_stragglers``), plus ``concurrency``: connections per server (requests one client keeps in flight
    to one server; a Locust user with one batch in flight needs 2: a straggler still running and the next
    batch)."""

    def __init__(self, master_url: str | None, worker_urls, *args, concurrency: int = 4, metrics=None, **kwargs):
        super().__init__(master_url, worker_urls, *args, **kwargs)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        self.concurrency = concurrency
        self.metrics = metrics  # nercc.client.metrics.ClientMetrics, as CodedClient's
        if metrics is not None:  # the health hook: workers marked down / back up show in Prometheus
            self.health.on_down, self.health.on_up = metrics.worker_marked_down, metrics.worker_back_up
        self._masters: List[Any] = []
        self._workers: List[Any] = []
        self._probes: set = set()
        self._abandoned: set = set()  # straggler greenlets left to finish

    # ------------------------------------------------------------------ set-up
    def connect(self) -> GeventCodedClient:
        """Open the HTTP connection pools (one per server) and resolve the model spec."""
        if self._closed:
            raise RuntimeError("this GeventCodedClient is closed")
        if not self._workers:
            import tritonclient.http as httpclient

            def make(url):
                return httpclient.InferenceServerClient(
                    url, concurrency=self.concurrency, connection_timeout=10.0,
                    network_timeout=self.hard_timeout_ms / 1e3 + NETWORK_TIMEOUT_SLACK_S)

            self._masters = [make(url) for url in self.master_urls]
            self._workers = [make(url) for url in self.worker_urls]
            clients = self._masters + self._workers
            # open every connection now; a server that does not answer is simply a straggler later
            gevent.joinall([gevent.spawn(_ready, c) for c in clients], timeout=2.0)
            if self.spec is None:
                self.spec = self._spec_from_servers()
                self._server_spec_settled()
            masters = [gevent.spawn(_config, m, f"{self.model}_encode") for m in self._masters]
            workers = [gevent.spawn(_config, w, self.model) for w in self._workers]
            gevent.joinall(masters + workers, timeout=2.0)
            self._set_identity([g.value for g in masters], [g.value for g in workers])
        if self.spec is None:
            self.spec = self._spec_from_servers()
            self._server_spec_settled()
        return self

    def _spec_from_servers(self) -> ModelSpec:
        """Shapes from the servers when the model has no local ``nercc.json`` (a remote deployment)."""
        errors = []
        for url, worker in zip(self.worker_urls, self._workers):
            try:
                meta = worker.get_model_metadata(self.model)
            except Exception as exc:  # noqa: BLE001 - try the next worker, report them all
                text = error_text(exc, with_status=True)
                if "unknown model" in text or "not found" in text:
                    raise ValueError(f"unknown model {self.model!r}: no local metadata and worker {url} does "
                                     f"not serve it ({text})") from exc
                errors.append(f"{url}: {text}")
                continue
            raw_shape = None
            for master in self._masters:
                try:
                    enc = master.get_model_metadata(f"{self.model}_encode")
                    raw_shape = (tuple(int(s) for s in enc["inputs"][0]["shape"][1:])
                                 if enc["inputs"][0].get("datatype") == "UINT8" else None)
                    break
                except Exception:  # noqa: BLE001 - raw input is then refused with a clear error
                    raw_shape = None
            return spec_from_server_metadata(self.model, meta, raw_shape)
        raise ConnectionError(f"model {self.model!r} has no local metadata and no worker answered a metadata "
                              "request: " + "; ".join(errors))

    def warmup(self, n_batches: int = 2) -> None:
        """All-zero batches, untimed, as :meth:`nercc.client.aio.CodedClient.warmup`."""
        self.connect()
        self._prebuild_decoders()
        batch = self._warmup_batch()
        for _ in range(self._warmup_batches(n_batches)):
            self._infer(batch, "all")
        self.drain()
        for _ in self._hedge_warmup_rounds():
            self._infer(batch, "all")
            self.drain()

    def drain(self, timeout_s: float | None = None) -> int:
        """Wait for the straggler requests left in flight; returns how many remain."""
        if self._abandoned:
            gevent.joinall(list(self._abandoned), timeout=timeout_s)
        self._abandoned = {g for g in self._abandoned if not g.dead}
        return len(self._abandoned)

    def close(self) -> None:
        """Let straggler requests finish (up to the hard timeout), then close every connection pool."""
        if self._closed:
            return
        self._closed = True
        self.drain(self.hard_timeout_ms / 1e3)
        for greenlet in list(self._abandoned) + list(self._probes):
            greenlet.kill(block=False)
        clients = self._masters + self._workers
        self._masters, self._workers = [], []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> GeventCodedClient:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # --------------------------------------------------------------- requests
    @staticmethod
    def _infer_one(client, model: str, name: str, data: np.ndarray, out: str,
                   parameters: dict | None = None) -> np.ndarray:
        import tritonclient.http as httpclient
        from tritonclient.utils import np_to_triton_dtype

        tensor = httpclient.InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data, binary_data=True)
        response = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput(out, binary_data=True)],
                                parameters=parameters)
        return response.as_numpy(out)

    def _payloads(self, batch: np.ndarray, is_raw: bool, k: int, hard_t: float) -> Tuple[np.ndarray, str, Any]:
        """(the rows the workers get, where they were made, which master), as
        :meth:`nercc.client.aio.CodedClient._payloads`: masters in the pool's order, each with an equal share
        of the time left, then the local fallback of ``encode="auto"``."""
        ready = self._payloads_without_master(batch, is_raw)
        if ready is not None:
            return ready
        model, name, out, params = self._master_request(is_raw, k)
        failures: list = []
        for index, url, timeout_s in self._master_attempts(hard_t, failures):
            try:
                payloads = self._master_call(index, model, name, batch, out, timeout_s, params)
                if self.coded:
                    payloads = self._check_coded(payloads, url)
            except Exception as exc:  # noqa: BLE001 - a failed master: the next one, or the fallback
                self._master_failed(index, error_text(exc, with_status=True), failures, _master_refused(exc), model,
                                    exc)
                continue
            self.masters.succeeded(index)
            return payloads, "server", url
        return self._payloads_after_masters(batch, is_raw, model, failures)

    # ------------------------------------------------------------------ infer
    def infer(self, batch: np.ndarray) -> CodedResult:
        """K predictions for a batch of K inputs (blocks this greenlet; others keep running)."""
        if self.metrics is None:
            return self._infer(batch, self.policy_kind)
        t0 = time.perf_counter()
        try:
            result = self._infer(batch, self.policy_kind)
        except (ValueError, TypeError):
            raise  # a bad batch is the caller's error, not a served batch
        except Exception:
            self.metrics.failed(self.scheme, time.perf_counter() - t0)
            raise
        self.metrics.observe(result)
        return result

    def _master_call(self, index: int, model: str, name: str, data: np.ndarray, out: str, timeout_s: float,
                     params: dict | None = None) -> np.ndarray:
        with gevent.Timeout(timeout_s, TimeoutError(f"no answer within {timeout_s:.3f} s")):
            return self._infer_one(self._masters[index], model, name, data, out, params)

    def _parity(self, coding, x: np.ndarray, hard_t: float) -> Tuple[np.ndarray, str, Any]:
        """A systematic batch's N - K parity rows, as :meth:`nercc.client.aio.CodedClient._parity`."""
        k = x.shape[0]
        model, name, out, params = self._parity_request(k)
        failures: list = []
        for index, url, timeout_s in self._master_attempts(hard_t, failures):
            try:
                rows = self._check_parity(self._master_call(index, model, name, x, out, timeout_s, params), url, k)
            except Exception as exc:  # noqa: BLE001 - a failed master: the next one, or the fallback
                self._parity_master_failed(index, error_text(exc, with_status=True), failures,
                                           not _master_refused(exc))
                continue
            self.masters.succeeded(index)
            return rows, "server", url
        return self._parity_after_masters(coding, x, model, failures)

    def _inputs(self, batch: np.ndarray, is_raw: bool, k: int, hard_t: float) -> np.ndarray:
        """A systematic batch's preprocessed inputs: made here, else by a master (``<model>_preprocess``)."""
        x = self._local_inputs(batch, is_raw)
        if x is not None:
            return x
        model, name, out, _ = self._master_request(True, k, preprocess=True)
        failures: list = []
        for index, _url, timeout_s in self._master_attempts(hard_t, failures):
            try:
                x = self._master_call(index, model, name, batch, out, timeout_s)
            except Exception as exc:  # noqa: BLE001 - a failed master: the next one
                self._master_failed(index, error_text(exc, with_status=True), failures, _master_refused(exc), model,
                                    exc)
                continue
            self.masters.succeeded(index)
            return np.ascontiguousarray(x, dtype=np.float32)
        raise MasterError(f"preprocessing failed on every master ({model}): " + "; ".join(failures))

    def _infer_systematic(self, batch: np.ndarray, is_raw: bool, k: int, t0: float,
                          policy_kind: str) -> CodedResult:
        """The fast path, as :meth:`nercc.client.aio.CodedClient._infer_systematic`."""
        hard_t = t0 + self.hard_timeout_ms / 1e3
        x = self._inputs(batch, is_raw, k, hard_t)
        payloads, coding = self._systematic_payloads(x)
        plan = self._plan(k)
        local = self.encode == "local"
        t_fanout = time.perf_counter()
        state = self._wait_state(plan, policy_kind, t0, t_fanout, deferred=() if local else plan.parity)
        fanout = _GeventFanOut(self, state, payloads,
                               parity=None if local else (lambda: self._parity(coding, x, hard_t)),
                               parity_workers=coding.parity_workers)
        fanout.run()
        if state.final.action == GIVE_UP:
            raise state.give_up_error(self.scheme, self.hard_timeout_ms, self.health.unavailable())
        encoded_on, master = ("local", None) if local else fanout.encoded
        return self._result(state, k, t0, t_fanout, time.perf_counter(), time.perf_counter, encoded_on, master)

    def _infer(self, batch: np.ndarray, policy_kind: str) -> CodedResult:
        t0 = time.perf_counter()
        self.connect()
        batch, is_raw = self._check_batch(batch)
        k = batch.shape[0]
        self._start_probes()
        if self.systematic:
            return self._infer_systematic(batch, is_raw, k, t0, policy_kind)
        payloads, encoded_on, master = self._payloads(batch, is_raw, k, t0 + self.hard_timeout_ms / 1e3)
        plan = self._plan(k)
        t_fanout = time.perf_counter()
        state = self._wait_state(plan, policy_kind, t0, t_fanout)
        _GeventFanOut(self, state, payloads).run()
        if state.final.action == GIVE_UP:
            raise state.give_up_error(self.scheme, self.hard_timeout_ms, self.health.unavailable())
        return self._result(state, k, t0, t_fanout, time.perf_counter(), time.perf_counter, encoded_on, master)

    # ------------------------------------------------------------ health probes
    def _start_probes(self) -> None:
        """Probe the workers marked down whose probe is due (greenlets; one at a time per worker)."""
        for worker in self.health.probes_due(time.perf_counter()):
            greenlet = gevent.spawn(self._probe, worker)
            self._probes.add(greenlet)
            greenlet.link(self._probes.discard)

    def _probe(self, worker: int) -> None:
        try:
            with gevent.Timeout(max(0.05, self.deadline_ms / 1e3), TimeoutError("no answer to the probe")):
                ready = self._workers[worker].is_server_ready()
                error = "" if ready else "not ready"
                if ready and self.expected_sha256:  # healthy means serving our model too
                    error = self.identity_error(worker, self._workers[worker].get_model_config(self.model)) or ""
                    ready = not error
        except Exception as exc:  # noqa: BLE001 - an unreachable worker stays down
            ready, error = False, error_text(exc, with_status=True)
        self.health.probe_result(worker, bool(ready), time.perf_counter(), error)


def _config(client, model: str):
    """A server's model config (JSON dict), or the exception the request raised."""
    try:
        return client.get_model_config(model)
    except Exception as exc:  # noqa: BLE001 - unreachable: judged later by its probe
        return exc


def _ready(client) -> None:
    try:
        client.is_server_ready()
    except Exception:  # noqa: BLE001 - an unreachable server is a straggler later, not an error now
        pass


class _GeventFanOut:
    """One batch's worker requests as greenlets, driving its :class:`WaitState`."""

    def __init__(self, client: GeventCodedClient, state: WaitState, payloads: np.ndarray, parity=None,
                 parity_workers=()):
        self.client, self.state, self.payloads = client, state, payloads
        # systematic batches: the function that makes the parity rows (rows for ``parity_workers``, in order)
        self.parity, self.parity_workers = parity, list(parity_workers)
        self.parity_greenlet = None
        self.encoded: Tuple[str, Any] = ("unused", None)  # where the parity rows the batch used were made
        self.greenlets: list = []  # (worker, greenlet)
        self.abandoned: set = set()  # workers whose request was still in flight when the batch ended
        self.inbox: Queue = Queue()  # (worker, arrival time, output or None, error text or None)

    def _request(self, worker: int, row: int) -> None:
        client, spec = self.client, self.client.spec
        t_sent = time.perf_counter()
        client.health.sent(worker)
        ok, error = False, None  # None: killed (client closing), neither a success nor the worker's failure
        try:
            output = client._infer_one(client._workers[worker], client.model, spec.input_name,
                                       self.payloads[row:row + 1], spec.output_name)
        except Exception as exc:  # noqa: BLE001 - a failed worker is a straggler, recorded with its error
            error = error_text(exc, with_status=True)
            self.inbox.put((worker, time.perf_counter(), None, error))
        else:
            record = client._answer_record(worker, t_sent, output)  # the time it arrived, taken here
            error = record[3]
            ok = error is None
            self.inbox.put(record)
        finally:
            client._request_done(worker, ok, error, abandoned=worker in self.abandoned)

    def _send(self, worker: int, row: int) -> None:
        self.greenlets.append((worker, gevent.spawn(self._request, worker, row)))

    def _feed(self, items) -> Decision:
        return feed_answers(self.state, items, time.perf_counter(), self._on_parity)

    def _make_parity(self) -> None:
        try:
            made = self.parity()  # (rows, where, master)
        except Exception as exc:  # noqa: BLE001 - no parity rows: the systematic answers alone
            self.inbox.put((PARITY, time.perf_counter(), None, f"no parity rows: {error_text(exc)}"))
        else:
            self.inbox.put((PARITY, time.perf_counter(), made, None))

    def _on_parity(self, t: float, made, error: str | None) -> Decision:
        return parity_arrived(self.state, self.payloads, self.parity_workers, self, t, made, error)

    def _next_items(self) -> list:
        """The answers in the inbox, waiting for one until the state's next wake-up when it is empty."""
        wakeup = self.state.next_wakeup(time.perf_counter())
        try:
            items = [self.inbox.get(timeout=max(wakeup - time.perf_counter(), 0.0))]
        except Empty:
            return []
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        return items

    def run(self) -> None:
        for worker, row in list(self.state.sent.items()):  # systematic schemes: the inputs' own workers first
            self._send(worker, row)
        if self.parity is not None:
            self.parity_greenlet = gevent.spawn(self._make_parity)
        decision = self._feed([])
        while True:
            for worker, row in decision.send:
                self._send(worker, row)
            if decision.action in (DECODE, GIVE_UP):
                break
            decision = self._feed(self._next_items())
        if self.parity_greenlet is not None and not self.parity_greenlet.dead:
            self.client._abandoned.add(self.parity_greenlet)  # the master's request finishes in the background
        for worker, greenlet in self.greenlets:
            if not greenlet.dead:
                self.abandoned.add(worker)
                self.client.health.abandoned(worker)
                self.client._abandoned.add(greenlet)
