"""The asyncio transport of the coded client: :class:`CodedClient` on ``tritonclient.grpc.aio``.

One ``await client.infer(batch)`` for a batch of K inputs: (1) the payloads: coded inputs from the master
(``<model>_encode`` for raw uint8, ``<model>_encoder`` for float32) or made locally (``encode="local"``, and
the baselines' preprocessing); (2) the fan-out the plan of :func:`nercc.client.core.plan_requests` names, one
gRPC request per worker (batch 1 each); (3) the wait, driven by :class:`nercc.client.core.WaitState`: every
request records the time its answer arrived (in the request's own coroutine, not when the waiting coroutine
wakes up later) and wakes the driver, which feeds the state machine and sleeps until the next answer or
:meth:`~nercc.client.core.WaitState.next_wakeup`; (4) the decode. Schemes, policies and the wire protocol:
:mod:`nercc.client.core` and ``docs/client.md``.

A worker that errors, times out or is unreachable counts as a straggler: its error is recorded, nothing
crashes. Requests still in flight when the batch decodes are abandoned (left to finish), not cancelled,
unless ``cancel_stragglers``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List, Tuple

import numpy as np

from nercc.client.base import PARITY, ClientBase, error_text, feed_answers, parity_arrived
from nercc.client.core import (
    DECODE,
    GIVE_UP,
    MIN_CODED_ANSWERS,
    CodedResult,
    Decision,
    MasterError,
    ModelSpec,
    WaitState,
    spec_from_server_metadata,
)

#: gRPC deadline added to the hard timeout for worker requests when stragglers are abandoned, not cancelled.
ABANDONED_REQUEST_TIMEOUT_S = 60.0


def _master_fault(text: str) -> bool:
    """A master failure another master may not share (unreachable, timed out, internal), as opposed to a
    refusal of the request itself (INVALID_ARG: every master would refuse it the same way)."""
    return "INVALID_ARG" not in text and "InvalidArgument" not in text and "invalid argument" not in text.lower()


def _as_keywords(args: tuple, kwargs: dict) -> dict:
    """The ClientBase arguments after ``worker_urls`` as keywords (positional ones named by the signature)."""
    if not args:
        return dict(kwargs)
    import inspect

    names = list(inspect.signature(ClientBase.__init__).parameters)[3:]  # after self, master_url, worker_urls
    return {**dict(zip(names, args)), **kwargs}


def _swallow(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


class CodedClient(ClientBase):
    """Coded prediction serving over Triton gRPC (asyncio).

    Parameters
    ----------
    master_url, worker_urls : gRPC ``host:port`` of the master (encoder), or a list of masters tried in order
        (a failed one is skipped for ``master_cooldown_s``, then tried again), and of the N workers.
    model : served model name (``lenet5``); its ``model_repository/<model>/nercc.json`` gives the shapes,
        else the servers' metadata is queried on first use.
    scheme : ``nercc`` | ``bacc`` | ``uncoded`` | ``replication`` | ``hedged``.
    deadline_ms : end-to-end budget per ``infer`` call, counted from the call.
    policy : ``deadline`` | ``first:M`` | ``all``.
    n_inputs : K; None accepts any K per call (schemes are built and cached per K).
    lam_enc, lam_dec : NeRCC smoothing; None looks them up in the model's tuning profile
        (:func:`nercc.profiles.lookup`, lam_dec per number of answers when the profile has a table). The client
        always sends its lam_enc to the master, so encoder and decoder agree.
    n_stragglers : expected stragglers S for the profile lookup; default N - M for ``first:M``, else 0.
    hard_timeout_ms : longest an ``infer`` call waits for the minimum number of answers.
    model_dir : folder with ``nercc.json`` / ``tuning.json`` (default ``model_repository/<model>``).
    channel_args : gRPC channel options.
    tls : :class:`nercc.client.tls.ClientTLS` (CA, and this client's certificate and key for mutual TLS) for
        servers started with ``--tls-cert``; None: plaintext.
    metrics : :class:`nercc.client.metrics.ClientMetrics` that every ``infer`` call reports to (Prometheus).
    cancel_stragglers : cancel (gRPC cancel) the requests still in flight once the client has decoded. Off by
        default: Triton up to 2.52 (24.11) can crash on a cancellation that races the response (server issues
        #7368, #8034, fixed by PR #7840 in 24.12), and the tritonserver 2.51 shipped by nvidia-pytriton does,
        under this client's load. Off, straggler requests finish in the background and their answers are
        dropped; the workers do the same work either way (a Python-backend execute cannot be interrupted).
    min_answers : coded schemes: fewest answers to decode from (default 2, the least an interpolant needs).
        Decoding from very few answers extrapolates and is poor (measured, LeNet5, N = 8, K = 4, overloaded
        workers: batches decoded from 2 answers had MSE 4-14 against f; the demo's N = 12 batches with ~8.5
        answers 0.04-0.2); a higher value trades lateness (the client waits past the deadline for them, up to
        the hard timeout) for accuracy.
    encode : coded schemes: ``"auto"`` (default: the masters encode; when none answers, this process encodes
        with the same float32 matrix, ``result.encode == "local-fallback"``), ``"server"`` (the masters only:
        ``MasterError`` when none answers) or ``"local"`` (always here: raw inputs preprocessed with
        :func:`nercc.preprocessing.preprocess`; no master round trip; needs ``nercc.json``).
    robust : coded schemes: Byzantine-robust decoding (:mod:`nercc.coding.robust`): answers the others show to
        be wrong are left out (``result.dropped``). On by default; its cost on honest batches is one small
        matrix product.
    answer_range : every worker answer is checked (shape, dtype float32, finite, values within this range;
        ``"auto"``, the default, takes it from the model's ``output_kind``: (0, 1) for probabilities, none for
        logits and regression; None skips the range): a bad answer counts as a straggler, its error recorded in
        ``result.errors``. Model identity: at connect and on every health probe each worker's ONNX sha256 (its
        model config's ``onnx_sha256``) is compared with the master's; a worker serving another model is marked
        down (``client.identity_errors`` names both hashes) and never decoded from.
    max_failures, probe_interval_s : a worker that fails ``max_failures`` requests in a row (errors or
        timeouts) is marked down: no new requests until a health probe, every ``probe_interval_s``, finds it
        ready.
    max_in_flight : requests in flight per worker, abandoned stragglers included; a worker at the cap gets no
        new request (a frozen or cut-off worker cannot pile up requests).
    hedge_ms : ``hedged``: the hedge delay. None (default) = the p95 of the last 256 worker round trips this
        client has seen (:meth:`warmup` collects them; ``deadline_ms / 2`` until 20 are in).
    """

    def __init__(self, master_url: str | None, worker_urls, *args, channel_args: List[Tuple[str, Any]] | None = None,
                 tls=None, metrics=None, **kwargs):
        super().__init__(master_url, worker_urls, *args, **kwargs)
        self._init_kwargs = _as_keywords(args, kwargs)  # for variant()
        self._parent: CodedClient | None = None  # variant(): the client whose connections this one uses
        self._channel_args = channel_args
        self.tls = tls
        self.metrics = metrics
        if metrics is not None:  # the health hook: workers marked down / back up show in Prometheus
            self.health.on_down, self.health.on_up = metrics.worker_marked_down, metrics.worker_back_up
        self._masters: List[Any] = []
        self._workers: List[Any] = []
        self._probes: set = set()
        self._abandoned: set = set()  # straggler requests left to finish in the background
        self._active_infers = 0  # calls of infer() under way: close() lets them finish (closing cancels)
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ set-up
    def variant(self, **changes) -> CodedClient:
        """A client with other settings (``scheme``, ``policy``, ``deadline_ms``, ... by keyword) that uses this
        client's gRPC channels and worker health record: no new connections, and a worker marked down by one is
        down for all. Closing a variant leaves the channels open; closing this client closes them.

        Used where one process serves many settings at once (the master's ``<model>_coded`` endpoint takes
        scheme, policy and deadline per request).
        """
        if self._parent is not None:
            return self._parent.variant(**changes)
        if "worker_urls" in changes or "master_url" in changes:
            raise ValueError("a variant shares its parent's connections: master_url and worker_urls cannot change")
        kwargs = {**self._init_kwargs, **changes}
        other = CodedClient(self.master_urls or None, self.worker_urls, channel_args=self._channel_args,
                            tls=self.tls, metrics=self.metrics, **kwargs)
        other._parent = self
        other.health = self.health
        other.masters = self.masters
        if other.spec is None:
            other.spec = self.spec
        return other

    async def connect(self) -> CodedClient:
        """Open the gRPC channels (one per server, reused for every request) and resolve the model spec.

        Called by the first ``infer``; the channels belong to the running event loop.
        """
        if self._closed:
            raise RuntimeError("this CodedClient is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError(
                "this CodedClient's gRPC channels belong to the event loop it connected in; use it from that loop "
                "only (one `async with CodedClient(...)` inside one asyncio.run), or SyncCodedClient from threads"
            )
        self._loop = loop
        if self._parent is not None and not self._workers:
            await self._parent.connect()
            self._masters, self._workers = self._parent._masters, self._parent._workers
            self.spec = self.spec or self._parent.spec
        if not self._workers:
            import tritonclient.grpc.aio as grpcclient

            kwargs = {} if self._channel_args is None else {"channel_args": self._channel_args}
            if self.tls is not None:
                kwargs.update(self.tls.grpc_kwargs())
            self._masters = [grpcclient.InferenceServerClient(url, **kwargs) for url in self.master_urls]
            self._workers = [grpcclient.InferenceServerClient(url, **kwargs) for url in self.worker_urls]
            # open every connection now rather than inside the first request's deadline; a server that does
            # not answer is simply a straggler later
            clients = self._masters + self._workers
            await asyncio.gather(*(c.is_server_ready(client_timeout=2.0) for c in clients), return_exceptions=True)
            if self.spec is None:
                self.spec = await self._spec_from_servers()
                self._server_spec_settled()
            await self._check_identities()
        if self.spec is None:
            self.spec = await self._spec_from_servers()
            self._server_spec_settled()
        return self

    async def _model_config(self, client, model: str):
        """A server's model config as JSON, or the exception that request raised."""
        try:
            return await client.get_model_config(model, as_json=True, client_timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - unreachable: judged later by its probe
            return exc

    async def _check_identities(self) -> None:
        """Every worker's model identity against the master's (:meth:`ClientBase._set_identity`)."""
        masters = await asyncio.gather(*(self._model_config(m, f"{self.model}_encode") for m in self._masters))
        workers = await asyncio.gather(*(self._model_config(w, self.model) for w in self._workers))
        self._set_identity(masters, workers)

    async def _spec_from_servers(self) -> ModelSpec:
        """Shapes from the servers when the model has no local ``nercc.json`` (a remote deployment)."""
        from tritonclient.utils import InferenceServerException

        errors = []
        meta = None
        for url, worker in zip(self.worker_urls, self._workers):  # the first worker that answers
            try:
                meta = await worker.get_model_metadata(self.model, as_json=True, client_timeout=5.0)
                break
            except InferenceServerException as exc:
                text = exc.message() or str(exc)
                if "unknown model" in text or "not found" in text:
                    raise ValueError(
                        f"unknown model {self.model!r}: no local metadata (model_repository/{self.model}/nercc.json)"
                        f" and worker {url} does not serve it ({text})"
                    ) from exc
                errors.append(f"{url}: {text}")
        if meta is None:
            raise ConnectionError(
                f"model {self.model!r} has no local metadata and no worker answered a metadata request: "
                + "; ".join(errors)
            )
        raw_shape = None
        for master in self._masters:
            try:
                enc = await master.get_model_metadata(f"{self.model}_encode", as_json=True, client_timeout=5.0)
                raw_shape = (tuple(int(s) for s in enc["inputs"][0]["shape"][1:])
                             if enc["inputs"][0].get("datatype") == "UINT8" else None)
                break
            except InferenceServerException:
                raw_shape = None  # raw input is then refused with a clear error; float input still works
        return spec_from_server_metadata(self.model, meta, raw_shape)

    async def warmup(self, n_batches: int = 2) -> None:
        """Send a few all-zero batches (untimed, results dropped) and wait for every request to finish.

        The first requests after a server starts are slow (Python-backend and onnxruntime first runs: ~0.1-0.3 s
        measured here), far past any deadline; benchmarks and latency-sensitive scripts call this first. The
        rotating schemes send at least ceil(N / K) batches so that every worker runs once; ``hedged`` then
        sends enough batches more to measure its hedge delay on warm workers. Coded ``first:M`` first builds
        the decoders of every M-of-N arrived set (at most 1,000 sets; :meth:`ClientBase._prebuild_decoders`).
        """
        await self.connect()
        self._prebuild_decoders()
        batch = self._warmup_batch()
        for _ in range(self._warmup_batches(n_batches)):  # policy `all`: every worker sees the warm-up
            await self._infer(batch, "all")
        await self.drain()
        for _ in self._hedge_warmup_rounds():
            await self._infer(batch, "all")
            await self.drain()

    async def drain(self, timeout_s: float | None = None) -> int:
        """Wait until the straggler requests this client left in flight have finished; returns how many remain.

        Benchmarks call it between batches so that one batch's stragglers do not queue in front of the next.
        """
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=timeout_s)
        return len(self._abandoned)

    async def close(self) -> None:
        """Close every channel, after giving abandoned straggler requests a moment to finish."""
        self._closed = True
        # Closing a channel cancels its calls, and a cancelled call can crash Triton 2.51 (see
        # cancel_stragglers): batches still under way (a load generator stopping its users) end first.
        give_up = time.perf_counter() + self.hard_timeout_ms / 1e3
        while self._active_infers and time.perf_counter() < give_up:
            await asyncio.sleep(0.005)
        if self._abandoned:
            # closing a channel cancels its calls: let them end first (see cancel_stragglers)
            await asyncio.wait(set(self._abandoned), timeout=self.hard_timeout_ms / 1e3)
            for task in list(self._abandoned):
                task.cancel()
        for task in list(self._probes):
            task.cancel()
        if self._parent is not None:  # the channels are the parent's: it closes them
            self._masters, self._workers = [], []
            return
        clients = self._masters + self._workers
        self._masters, self._workers = [], []
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> CodedClient:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --------------------------------------------------------------- requests
    async def _infer_one(self, client, model: str, name: str, data: np.ndarray, out: str,
                         timeout_s: float | None, parameters: dict | None = None) -> np.ndarray:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import np_to_triton_dtype

        tensor = InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        response = await client.infer(
            model, [tensor], outputs=[InferRequestedOutput(out)],
            client_timeout=None if timeout_s is None else max(timeout_s, 1e-3), parameters=parameters,
        )
        return response.as_numpy(out)

    async def _payloads(self, batch: np.ndarray, is_raw: bool, k: int, hard_t: float) -> Tuple[np.ndarray, str, Any]:
        """Step 1: (the rows the workers get, where they were made, which master) — coded inputs, or the
        preprocessed inputs of the baselines.

        Masters are tried in the pool's order, each with an equal share of the time left before the hard
        timeout (a frozen master cannot eat all of it); a master that fails is skipped for the cool-down.
        """
        ready = self._payloads_without_master(batch, is_raw)
        if ready is not None:
            return ready
        model, name, out, params = self._master_request(is_raw, k)
        failures: list = []
        for index, url, timeout_s in self._master_attempts(hard_t, failures):
            try:
                payloads = await self._infer_one(self._masters[index], model, name, batch, out, timeout_s, params)
                if self.coded:
                    payloads = self._check_coded(payloads, url)
            except Exception as exc:  # noqa: BLE001 - a failed master: the next one, or the fallback
                text = error_text(exc)
                # refused: the master answered and refused this batch (bad request); another master would too
                self._master_failed(index, text, failures, not _master_fault(text), model, exc)
                continue
            self.masters.succeeded(index)
            return payloads, "server", url
        return self._payloads_after_masters(batch, is_raw, model, failures)

    # ------------------------------------------------------------------ infer
    async def infer(self, batch: np.ndarray) -> CodedResult:
        """K predictions for a batch of K inputs: raw uint8 ``(K, *raw_shape)`` or float32 ``(K, *input_shape)``."""
        if self.metrics is None:
            return await self._infer(batch, self.policy_kind)
        t0 = time.perf_counter()
        try:
            result = await self._infer(batch, self.policy_kind)
        except (ValueError, TypeError):
            raise  # a bad batch is the caller's error, not a served batch
        except Exception:
            self.metrics.failed(self.scheme, time.perf_counter() - t0)
            raise
        self.metrics.observe(result)
        return result

    async def _infer(self, batch: np.ndarray, policy_kind: str) -> CodedResult:
        self._active_infers += 1
        try:
            return await self._infer_counted(batch, policy_kind)
        finally:
            self._active_infers -= 1

    async def _parity(self, coding, x: np.ndarray, hard_t: float) -> Tuple[np.ndarray, str, Any]:
        """A systematic batch's N - K parity rows from the masters (``<model>_encoder`` with the preprocessed
        inputs), in the pool's order, else the local fallback: (rows, where, which master or why not)."""
        k = x.shape[0]
        model, name, out, params = self._parity_request(k)
        failures: list = []
        for index, url, timeout_s in self._master_attempts(hard_t, failures):
            try:
                rows = await self._infer_one(self._masters[index], model, name, x, out, timeout_s, params)
                rows = self._check_parity(rows, url, k)
            except Exception as exc:  # noqa: BLE001 - a failed master: the next one, or the fallback
                text = error_text(exc)
                self._parity_master_failed(index, text, failures, _master_fault(text))
                continue
            self.masters.succeeded(index)
            return rows, "server", url
        return self._parity_after_masters(coding, x, model, failures)

    async def _inputs(self, batch: np.ndarray, is_raw: bool, k: int, hard_t: float) -> np.ndarray:
        """A systematic batch's preprocessed inputs: made here, else by a master (``<model>_preprocess``)."""
        x = self._local_inputs(batch, is_raw)
        if x is not None:
            return x
        model, name, out, _ = self._master_request(True, k, preprocess=True)
        failures: list = []
        for index, _url, timeout_s in self._master_attempts(hard_t, failures):
            try:
                x = await self._infer_one(self._masters[index], model, name, batch, out, timeout_s)
            except Exception as exc:  # noqa: BLE001 - a failed master: the next one
                text = error_text(exc)
                self._master_failed(index, text, failures, not _master_fault(text), model, exc)
                continue
            self.masters.succeeded(index)
            return np.ascontiguousarray(x, dtype=np.float32)
        raise MasterError(f"preprocessing failed on every master ({model}): " + "; ".join(failures))

    async def _infer_systematic(self, batch: np.ndarray, is_raw: bool, k: int, t0: float,
                                policy_kind: str) -> CodedResult:
        """The fast path: the inputs to their own workers at once, the parity rows as soon as they exist."""
        hard_t = t0 + self.hard_timeout_ms / 1e3
        x = await self._inputs(batch, is_raw, k, hard_t)
        payloads, coding = self._systematic_payloads(x)
        plan = self._plan(k)
        local = self.encode == "local"
        t_fanout = time.perf_counter()
        state = self._wait_state(plan, policy_kind, t0, t_fanout, deferred=() if local else plan.parity)
        fanout = _FanOut(self, state, payloads, parity=None if local else self._parity(coding, x, hard_t),
                         parity_workers=coding.parity_workers)
        await fanout.run()
        if state.final.action == GIVE_UP:
            raise state.give_up_error(self.scheme, self.hard_timeout_ms, self.health.unavailable())
        encoded_on, master = ("local", None) if local else fanout.encoded
        return self._result(state, k, t0, t_fanout, time.perf_counter(), time.perf_counter, encoded_on, master)

    async def _infer_counted(self, batch: np.ndarray, policy_kind: str) -> CodedResult:
        t0 = time.perf_counter()
        await self.connect()
        batch, is_raw = self._check_batch(batch)
        k = batch.shape[0]
        self._start_probes()
        if self.systematic:
            return await self._infer_systematic(batch, is_raw, k, t0, policy_kind)
        payloads, encoded_on, master = await self._payloads(batch, is_raw, k, t0 + self.hard_timeout_ms / 1e3)
        plan = self._plan(k)
        t_fanout = time.perf_counter()
        state = self._wait_state(plan, policy_kind, t0, t_fanout)
        await _FanOut(self, state, payloads).run()
        if state.final.action == GIVE_UP:
            raise state.give_up_error(self.scheme, self.hard_timeout_ms, self.health.unavailable())
        return self._result(state, k, t0, t_fanout, time.perf_counter(), time.perf_counter, encoded_on, master)

    # ------------------------------------------------------------ health probes
    def _start_probes(self) -> None:
        """Probe the workers marked down whose probe is due (in the background; one at a time per worker)."""
        for worker in self.health.probes_due(time.perf_counter()):
            task = asyncio.ensure_future(self._probe(worker))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)
            task.add_done_callback(_swallow)

    async def _probe(self, worker: int) -> None:
        try:
            timeout = max(0.05, self.deadline_ms / 1e3)
            ready = await self._workers[worker].is_server_ready(client_timeout=timeout)
            error = "" if ready else "not ready"
            if ready and self.expected_sha256:  # healthy means serving our model too
                config = await self._workers[worker].get_model_config(self.model, as_json=True,
                                                                       client_timeout=timeout)
                error = self.identity_error(worker, config) or ""
                ready = not error
        except Exception as exc:  # noqa: BLE001 - an unreachable worker stays down
            ready, error = False, error_text(exc)
        self.health.probe_result(worker, bool(ready), time.perf_counter(), error)


class _FanOut:
    """One batch's worker requests on the event loop, driving its :class:`WaitState`."""

    def __init__(self, client: CodedClient, state: WaitState, payloads: np.ndarray, parity=None,
                 parity_workers=()):
        self.client, self.state, self.payloads = client, state, payloads
        # systematic batches: the coroutine that makes the parity rows (rows for ``parity_workers``, in order)
        self.parity, self.parity_workers = parity, list(parity_workers)
        self.parity_task: asyncio.Task | None = None
        self.encoded: Tuple[str, Any] = ("unused", None)  # where the parity rows the batch used were made
        self.tasks: dict = {}
        self.abandoned: set = set()  # workers whose request was still in flight when the batch ended
        self.inbox: list = []  # (worker, arrival time, output or None, error text or None)
        self.waiter: asyncio.Future | None = None  # set by an arrival or by the wake-up timer
        # an expiring gRPC deadline is a cancellation too: without cancel_stragglers only a generous one,
        # which frees the client from a hung worker but never races a normal answer
        self.timeout_s = (state.hard_t - state.t_fanout) + (
            0.0 if client.cancel_stragglers else ABANDONED_REQUEST_TIMEOUT_S)

    async def _request(self, worker: int, row: int) -> None:
        client, spec = self.client, self.client.spec
        t_sent = time.perf_counter()
        client.health.sent(worker)
        ok, error = False, None  # None: cancelled by us, neither a success nor the worker's failure
        try:
            output = await client._infer_one(client._workers[worker], client.model, spec.input_name,
                                             self.payloads[row:row + 1], spec.output_name, self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed worker is a straggler, recorded with its error
            error = error_text(exc)
            self.inbox.append((worker, time.perf_counter(), None, error))
        else:
            record = client._answer_record(worker, t_sent, output)  # the time it arrived, taken here
            error = record[3]
            ok = error is None
            self.inbox.append(record)
        finally:
            client._request_done(worker, ok, error, abandoned=worker in self.abandoned)
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _send(self, worker: int, row: int) -> None:
        self.tasks[worker] = asyncio.ensure_future(self._request(worker, row))

    def _feed(self) -> Decision:
        """Hand the arrived answers to the state machine, in arrival order, then tick the clock."""
        items, self.inbox = self.inbox, []
        return feed_answers(self.state, items, time.perf_counter(), self._on_parity)

    async def _make_parity(self) -> None:
        try:
            made = await self.parity  # (rows, where, master)
        except Exception as exc:  # noqa: BLE001 - no parity rows: the systematic answers alone
            self.inbox.append((PARITY, time.perf_counter(), None, f"no parity rows: {error_text(exc)}"))
        else:
            self.inbox.append((PARITY, time.perf_counter(), made, None))
        self._wake()

    def _on_parity(self, t: float, made, error: str | None) -> Decision:
        return parity_arrived(self.state, self.payloads, self.parity_workers, self, t, made, error)

    async def run(self) -> None:
        for worker, row in list(self.state.sent.items()):  # systematic schemes: the inputs' own workers first
            self._send(worker, row)
        if self.parity is not None:
            self.parity_task = asyncio.ensure_future(self._make_parity())
        try:
            decision = self._feed()
            while True:
                for worker, row in decision.send:
                    self._send(worker, row)
                if decision.action in (DECODE, GIVE_UP):
                    return
                if not self.inbox:
                    await self._sleep(self.state.next_wakeup(time.perf_counter()))
                decision = self._feed()
        finally:
            self._abandon()

    async def _sleep(self, wakeup: float) -> None:
        """Until the next answer arrives or the clock reaches ``wakeup`` (perf_counter seconds)."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(max(wakeup - time.perf_counter(), 0.0), self._wake)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    def _abandon(self) -> None:
        """Requests still in flight: cancel them, or leave them to finish in the background (the default)."""
        client = self.client
        if self.parity_task is not None and not self.parity_task.done():
            # the master's request finishes in the background (a cancelled call can crash Triton 2.51)
            client._abandoned.add(self.parity_task)
            self.parity_task.add_done_callback(client._abandoned.discard)
            self.parity_task.add_done_callback(_swallow)
        for worker, task in self.tasks.items():
            if task.done():
                continue
            self.abandoned.add(worker)
            client.health.abandoned(worker)
            if client.cancel_stragglers:
                task.cancel()
            else:
                client._abandoned.add(task)
                task.add_done_callback(client._abandoned.discard)
            task.add_done_callback(_swallow)


class SyncCodedClient:
    """Blocking wrapper for scripts: same arguments as :class:`CodedClient`; ``.infer(batch)``, ``.warmup()``,
    ``.drain()``, ``.close()``.

    Runs its own event loop in a background thread, so the gRPC channels live in one loop for the client's life.
    """

    def __init__(self, *args, **kwargs):
        self._client = CodedClient(*args, **kwargs)  # validates arguments before a thread exists
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nercc-client", daemon=True)
        self._thread.start()
        try:
            self._run(self._client.connect())
        except BaseException:
            self.close()
            raise

    @property
    def client(self) -> CodedClient:
        return self._client

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def infer(self, batch: np.ndarray) -> CodedResult:
        return self._run(self._client.infer(batch))

    def warmup(self, n_batches: int = 2) -> None:
        self._run(self._client.warmup(n_batches))

    def drain(self, timeout_s: float | None = None) -> int:
        return self._run(self._client.drain(timeout_s))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                self._run(self._client.close(), timeout=10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SyncCodedClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name):  # scheme, policy, n_workers, spec ... of the wrapped client
        client = self.__dict__.get("_client")
        if client is None:
            raise AttributeError(name)
        return getattr(client, name)


__all__ = ["CodedClient", "SyncCodedClient", "ABANDONED_REQUEST_TIMEOUT_S", "MIN_CODED_ANSWERS"]
