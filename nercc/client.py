"""Async coded-computing client for Triton: encode on the master, fan out to N workers, decode by a deadline.

One ``await client.infer(batch)`` for a batch of K inputs:

``nercc`` / ``bacc`` (coded)
    1. one request to the master: raw uint8 → ``<model>_encode`` (preprocess → encoder ensemble), or float32
       → ``<model>_encoder``; answer: N coded inputs (request parameters ``scheme``, ``n_workers``,
       ``lam_enc``, ``n_stragglers``);
    2. coded input i → worker i, all N requests at once (batch 1 each);
    3. wait according to the policy (below), cancel whatever is still in flight, and decode the K predictions
       from the set F of workers that answered with the same scheme (same K, N, lams) built locally.
``uncoded``
    input k → one worker (K of the N workers, rotating from request to request), wait for all K.
``replication``
    each input → r = N // K workers; the first answer per input wins.

Raw uint8 inputs are preprocessed on the master for the coded schemes (the ensemble) and locally with
:func:`nercc.preprocessing.preprocess` for the baselines, so the baselines pay no extra round trip; the
preprocessing time is part of ``encode_ms`` for every scheme.

Policies (the deadline counts from the moment ``infer`` is called):

``deadline``
    wait until every worker answered or the deadline passed.
``first:M``
    decode as soon as M answers are in, and never wait past the deadline.
``all``
    wait for every worker, up to the hard timeout.

When the deadline passes before the minimum a scheme needs (2 answers for coded, all K inputs for uncoded,
one answer per input for replication), the client keeps waiting up to ``hard_timeout_ms`` and marks the
result ``late``; if the minimum never comes, it raises :class:`NotEnoughAnswersError`. A worker that
errors, times out or is unreachable counts as a straggler: its error is recorded, nothing crashes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from nercc.paths import model_dir as default_model_dir

SCHEMES = ("nercc", "bacc", "uncoded", "replication")
CODED_SCHEMES = ("nercc", "bacc")
#: Fewest answers a coded decode accepts: an interpolant through one point is a constant.
MIN_CODED_ANSWERS = 2
#: gRPC deadline added to the hard timeout for worker requests when stragglers are abandoned, not cancelled.
ABANDONED_REQUEST_TIMEOUT_S = 60.0


class NotEnoughAnswersError(RuntimeError):
    """Too few workers answered within the hard timeout to produce the K predictions."""

    def __init__(self, message: str, n_arrived: int, n_needed: int, errors: Dict[int, str]):
        super().__init__(message)
        self.n_arrived = n_arrived
        self.n_needed = n_needed
        self.errors = errors


class MasterError(RuntimeError):
    """The master could not encode the batch (unreachable, or it rejected the request)."""


@dataclass
class CodedResult:
    """K predictions and how they were obtained.

    ``arrived`` lists the worker indices whose answers were used (ascending); ``worker_latency_ms`` maps every
    worker that answered before the client stopped waiting to its round trip, counted from the fan-out;
    ``errors`` maps workers that failed to the error text. Times are milliseconds on the client's clock:
    ``encode_ms`` (master round trip, or local preprocessing for the baselines), ``fanout_ms`` (first worker
    request sent → decision to decode), ``decode_ms``, ``total_ms`` (call → return).
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
    n_requests: int  # worker requests sent for this batch: the compute spent (uncoded K, replication rK, coded N)
    lam_enc: float | None = None
    lam_dec: float | None = None
    assignment: Dict[int, int] = field(default_factory=dict)  # worker -> input index (baselines only)


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


def parse_policy(policy: str, n_workers: int) -> Tuple[str, int | None]:
    """``"deadline"`` | ``"all"`` | ``"first:M"`` → (kind, M); M must satisfy 2 <= M <= n_workers."""
    if not isinstance(policy, str):
        raise ValueError(f"policy must be a string, got {policy!r}")
    text = policy.strip().lower()
    if text in ("deadline", "all"):
        return text, None
    if text.startswith("first:"):
        try:
            m = int(text.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"policy {policy!r}: M in 'first:M' must be an integer") from None
        if not MIN_CODED_ANSWERS <= m <= n_workers:
            raise ValueError(
                f"policy {policy!r}: M must be between {MIN_CODED_ANSWERS} and n_workers={n_workers}"
            )
        return "first", m
    raise ValueError(f"unknown policy {policy!r}; use 'deadline', 'first:M' or 'all'")


def _load_model_spec(model: str, directory: Path | None) -> ModelSpec | None:
    """The model's spec from its local ``nercc.json``; None when the model has no local metadata."""
    directory = Path(directory) if directory is not None else default_model_dir(model)
    meta_path = directory / "nercc.json"
    if not meta_path.exists():
        return None
    with open(meta_path) as fh:
        meta = json.load(fh)
    raw_shape = meta.get("raw_shape")
    return ModelSpec(
        name=model,
        input_shape=tuple(int(s) for s in meta["input_shape"]),
        n_classes=int(meta["n_classes"]),
        raw_shape=tuple(int(s) for s in raw_shape) if raw_shape else None,
        input_name=meta.get("input_name", "input"),
        output_name=meta.get("output_name", "probs"),
        directory=directory,
        info=meta if "preprocess" in meta else None,
    )


def _elapsed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


class CodedClient:
    """Coded prediction serving over Triton gRPC (see the module docstring for the protocol).

    Parameters
    ----------
    master_url, worker_urls : gRPC ``host:port`` of the master (encoder) and of the N workers.
    model : served model name (``lenet5``); its ``model_repository/<model>/nercc.json`` gives the shapes,
        else the servers' metadata is queried on first use.
    scheme : ``nercc`` | ``bacc`` | ``uncoded`` | ``replication``.
    deadline_ms : end-to-end budget per ``infer`` call, counted from the call.
    policy : ``deadline`` | ``first:M`` | ``all``.
    n_inputs : K; None accepts any K per call (schemes are built and cached per K).
    lam_enc, lam_dec : NeRCC smoothing; None looks them up in the model's tuning profile
        (:func:`nercc.profiles.lookup`, lam_dec per number of answers when the profile has a table). The client
        always sends its lam_enc to the master, so encoder and decoder agree.
    n_stragglers : expected stragglers S for the profile lookup; default N - M for ``first:M``, else 0.
    hard_timeout_ms : longest an ``infer`` call waits for the minimum number of answers.
    model_dir : folder with ``nercc.json`` / ``tuning.json`` (default ``model_repository/<model>``).
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
    """

    def __init__(
        self,
        master_url: str | None,
        worker_urls: Sequence[str],
        model: str = "lenet5",
        scheme: str = "nercc",
        deadline_ms: float = 50.0,
        policy: str = "deadline",
        n_inputs: int | None = None,
        lam_enc: float | None = None,
        lam_dec: float | None = None,
        hard_timeout_ms: float = 2000.0,
        n_stragglers: int | None = None,
        model_dir: str | None = None,
        channel_args: List[Tuple[str, Any]] | None = None,
        cancel_stragglers: bool = False,
        min_answers: int = MIN_CODED_ANSWERS,
    ):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
        worker_urls = list(worker_urls)
        if not worker_urls or not all(isinstance(u, str) and u for u in worker_urls):
            raise ValueError("worker_urls must be a non-empty list of 'host:port' strings")
        if scheme in CODED_SCHEMES and not master_url:
            raise ValueError(f"scheme {scheme!r} needs master_url (the encoder runs on the master)")
        if not (isinstance(deadline_ms, (int, float)) and deadline_ms > 0 and math.isfinite(deadline_ms)):
            raise ValueError(f"deadline_ms must be a positive number, got {deadline_ms!r}")
        if not (isinstance(hard_timeout_ms, (int, float)) and hard_timeout_ms >= deadline_ms):
            raise ValueError(
                f"hard_timeout_ms must be a number >= deadline_ms={deadline_ms}, got {hard_timeout_ms!r}"
            )
        for name, lam in (("lam_enc", lam_enc), ("lam_dec", lam_dec)):
            if lam is not None and not (lam >= 0 and math.isfinite(lam)):
                raise ValueError(f"{name} must be a finite number >= 0, got {lam!r}")
        self.master_url = master_url
        self.worker_urls = worker_urls
        self.n_workers = len(worker_urls)
        self.model = model
        self.scheme = scheme
        self.deadline_ms = float(deadline_ms)
        self.hard_timeout_ms = float(hard_timeout_ms)
        self.policy = policy
        self.policy_kind, self.policy_m = parse_policy(policy, self.n_workers)
        if n_inputs is not None:
            self._check_k(int(n_inputs))
        self.n_inputs = None if n_inputs is None else int(n_inputs)
        self.lam_enc = lam_enc
        self.lam_dec = lam_dec
        if n_stragglers is None:
            n_stragglers = self.n_workers - self.policy_m if self.policy_kind == "first" else 0
        if not 0 <= n_stragglers < self.n_workers:
            raise ValueError(f"n_stragglers must be in [0, n_workers), got {n_stragglers}")
        self.n_stragglers = int(n_stragglers)
        self._model_dir = Path(model_dir) if model_dir else default_model_dir(model)
        self.spec: ModelSpec | None = _load_model_spec(model, self._model_dir)
        self._channel_args = channel_args
        self._master = None
        self._workers: List[Any] = []
        self._schemes: Dict[Tuple[int, float, float], Any] = {}
        self._lams: Dict[Tuple[int, int | None], Tuple[float, float]] = {}
        self._rotation = itertools.count()
        self._closed = False
        self.cancel_stragglers = bool(cancel_stragglers)
        if isinstance(min_answers, bool) or not isinstance(min_answers, int) or not (
                MIN_CODED_ANSWERS <= min_answers <= self.n_workers):
            raise ValueError(f"min_answers must be an int in [{MIN_CODED_ANSWERS}, n_workers={self.n_workers}], "
                             f"got {min_answers!r}")
        if self.policy_kind == "first" and self.policy_m < min_answers:
            raise ValueError(f"policy {policy!r} decodes before min_answers={min_answers} answers: use M >= it")
        self.min_answers = min_answers
        self._abandoned: set = set()  # straggler requests left to finish in the background
        self._active_infers = 0  # calls of infer() under way: close() lets them finish (closing cancels)
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ set-up
    def _check_k(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"n_inputs must be >= 1, got {k}")
        if self.scheme in CODED_SCHEMES:
            if k < 2:
                raise ValueError(f"scheme {self.scheme!r} needs n_inputs K >= 2, got {k}")
            if k > self.n_workers:
                raise ValueError(f"scheme {self.scheme!r} needs n_inputs K <= n_workers={self.n_workers}, got {k}")
        elif k > self.n_workers:
            raise ValueError(f"scheme {self.scheme!r} needs n_inputs K <= n_workers={self.n_workers}, got {k}")

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
        if not self._workers:
            import tritonclient.grpc.aio as grpcclient

            kwargs = {} if self._channel_args is None else {"channel_args": self._channel_args}
            if self.master_url:
                self._master = grpcclient.InferenceServerClient(self.master_url, **kwargs)
            self._workers = [grpcclient.InferenceServerClient(url, **kwargs) for url in self.worker_urls]
            # open every connection now rather than inside the first request's deadline; a server that does
            # not answer is simply a straggler later
            clients = ([self._master] if self._master is not None else []) + self._workers
            await asyncio.gather(*(c.is_server_ready(client_timeout=2.0) for c in clients), return_exceptions=True)
        if self.spec is None:
            self.spec = await self._spec_from_servers()
        return self

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
        inp = meta["inputs"][0]
        out = meta["outputs"][0]
        raw_shape = None
        if self._master is not None:
            try:
                enc = await self._master.get_model_metadata(f"{self.model}_encode", as_json=True,
                                                            client_timeout=5.0)
                raw_shape = tuple(int(s) for s in enc["inputs"][0]["shape"][1:])
            except InferenceServerException:
                raw_shape = None  # raw input is then refused with a clear error; float input still works
        return ModelSpec(
            name=self.model,
            input_shape=tuple(int(s) for s in inp["shape"][1:]),
            n_classes=int(out["shape"][-1]),
            raw_shape=raw_shape,
            input_name=inp["name"],
            output_name=out["name"],
        )

    async def warmup(self, n_batches: int = 2) -> None:
        """Send a few all-zero batches (untimed, results dropped) and wait for every request to finish.

        The first requests after a server starts are slow (Python-backend and onnxruntime first runs: ~0.1-0.3 s
        measured here), far past any deadline; benchmarks and latency-sensitive scripts call this first.
        """
        await self.connect()
        k = self.n_inputs or min(4, self.n_workers)
        shape = self.spec.raw_shape if self.spec.raw_shape is not None else self.spec.input_shape
        dtype = np.uint8 if self.spec.raw_shape is not None else np.float32
        for _ in range(n_batches):  # policy `all`: every worker sees the warm-up, not only the fastest M
            await self._infer(np.zeros((k, *shape), dtype=dtype), "all")
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
        clients = ([self._master] if self._master is not None else []) + self._workers
        self._master, self._workers = None, []
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> CodedClient:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------ coding state
    def lams(self, k: int, n_arrived: int | None = None) -> Tuple[float, float]:
        """(lam_enc, lam_dec) for K inputs, cached: the pair sent to the master and used to decode.

        lam_enc comes from the profile entry for the expected stragglers S (``n_stragglers``). lam_dec, with
        ``n_arrived`` = |F| known, from the entry for S = N - |F| (and its per-|F| table): the decoding matrix
        depends on lam_dec alone, so it can follow the answers that actually came.
        """
        key = (k, n_arrived)
        if key not in self._lams:
            from nercc.profiles import lookup

            prof_enc, prof_dec = lookup(self._model_dir, k, self.n_workers, n_stragglers=self.n_stragglers)
            if n_arrived is not None:
                lam_enc_now, _ = self.lams(k)
                prof_enc = lam_enc_now
                _, prof_dec = lookup(self._model_dir, k, self.n_workers, n_arrived=n_arrived)
            self._lams[key] = (
                float(prof_enc if self.lam_enc is None else self.lam_enc),
                float(prof_dec if self.lam_dec is None else self.lam_dec),
            )
        return self._lams[key]

    def coding_scheme(self, k: int, lam_dec: float | None = None):
        """The NeRCC/BACC object for K inputs and N workers (decoding matrices are cached inside it)."""
        from nercc.coding import make_scheme

        if self.scheme == "bacc":  # no parameters besides K and N
            lam_enc = lam_dec = 0.0
        else:
            lam_enc, default_dec = self.lams(k)
            lam_dec = default_dec if lam_dec is None else lam_dec
        key = (k, lam_enc, lam_dec)
        if key not in self._schemes:
            self._schemes[key] = make_scheme(self.scheme, k, self.n_workers, lam_enc, lam_dec)
        return self._schemes[key]

    # -------------------------------------------------------------- validation
    def _check_batch(self, batch: Any) -> Tuple[np.ndarray, bool]:
        """(batch, is_raw) after checking type, dtype, shape and finiteness."""
        spec = self.spec
        if not isinstance(batch, np.ndarray):
            raise ValueError(f"batch must be a numpy array, got {type(batch).__name__}")
        if batch.dtype == np.uint8:
            if spec.raw_shape is None:
                raise ValueError(f"model {self.model!r} has no raw input format; send float32 {spec.input_shape}")
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
                f"{kind} batch for {self.model!r} must have shape (K, {', '.join(map(str, expected))}), "
                f"got {tuple(batch.shape)}"
            )
        k = batch.shape[0]
        if self.n_inputs is not None and k != self.n_inputs:
            raise ValueError(f"batch has {k} inputs but the client was built with n_inputs={self.n_inputs}")
        self._check_k(k)
        return np.ascontiguousarray(batch), is_raw

    # --------------------------------------------------------------- requests
    async def _infer_one(self, client, model: str, name: str, data: np.ndarray, out: str,
                         timeout_s: float | None, parameters: dict | None = None) -> np.ndarray:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import np_to_triton_dtype

        tensor = InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        response = await client.infer(
            model, [tensor], outputs=[InferRequestedOutput(out)], client_timeout=None if timeout_s is None else max(timeout_s, 1e-3),
            parameters=parameters,
        )
        return response.as_numpy(out)

    async def _encode(self, batch: np.ndarray, is_raw: bool, k: int, timeout_s: float) -> np.ndarray:
        params = {"scheme": self.scheme, "n_workers": self.n_workers, "n_stragglers": self.n_stragglers}
        if self.scheme == "nercc":
            params["lam_enc"] = self.lams(k)[0]
        model, name = (f"{self.model}_encode", "RAW") if is_raw else (f"{self.model}_encoder", "INPUT")
        try:
            coded = await self._infer_one(self._master, model, name, batch, "CODED", timeout_s, params)
        except Exception as exc:  # noqa: BLE001 - any failure here means no coded inputs to send
            raise MasterError(f"encoding on the master {self.master_url} ({model}) failed: {_error_text(exc)}") from exc
        expected = (self.n_workers, *self.spec.input_shape)
        if coded is None or tuple(coded.shape) != expected:
            got = None if coded is None else tuple(coded.shape)
            raise RuntimeError(f"master {self.master_url} returned coded inputs of shape {got}, expected {expected}")
        return coded

    async def _preprocess(self, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        """Raw → float for the baselines: locally when the model's metadata is here, else on the master."""
        if self.spec.info is not None:
            from nercc.preprocessing import preprocess

            return np.ascontiguousarray(preprocess(self.spec.info, batch), dtype=np.float32)
        if self._master is None:
            raise ValueError(
                f"raw uint8 input for {self.model!r} needs either the model's local metadata or a master_url "
                f"serving {self.model}_preprocess; or send preprocessed float32"
            )
        return await self._infer_one(self._master, f"{self.model}_preprocess", "RAW", batch, "INPUT", timeout_s)

    # ------------------------------------------------------------------ infer
    async def infer(self, batch: np.ndarray) -> CodedResult:
        """K predictions for a batch of K inputs: raw uint8 ``(K, *raw_shape)`` or float32 ``(K, *input_shape)``."""
        return await self._infer(batch, self.policy_kind)

    async def _infer(self, batch: np.ndarray, policy_kind: str) -> CodedResult:
        self._active_infers += 1
        try:
            return await self._infer_counted(batch, policy_kind)
        finally:
            self._active_infers -= 1

    async def _infer_counted(self, batch: np.ndarray, policy_kind: str) -> CodedResult:
        t0 = time.perf_counter()
        await self.connect()
        batch, is_raw = self._check_batch(batch)
        k = batch.shape[0]
        deadline_t = t0 + self.deadline_ms / 1e3
        hard_t = t0 + self.hard_timeout_ms / 1e3

        # 1. inputs for the workers
        if self.scheme in CODED_SCHEMES:
            payloads = await self._encode(batch, is_raw, k, hard_t - time.perf_counter())
            plan = {i: i for i in range(self.n_workers)}  # worker -> row of payloads
        else:
            payloads = await self._preprocess(batch, hard_t - time.perf_counter()) if is_raw else batch
            copies = 1 if self.scheme == "uncoded" else self.n_workers // k
            offset = (next(self._rotation) * k) % self.n_workers if copies * k < self.n_workers else 0
            plan = {(offset + j) % self.n_workers: j % k for j in range(copies * k)}
        t_fanout = time.perf_counter()
        encode_ms = (t_fanout - t0) * 1e3

        # 2. fan-out: every request at once
        spec = self.spec
        tasks: Dict[asyncio.Task, int] = {}
        for worker, row in plan.items():
            # an expiring gRPC deadline is a cancellation too: without cancel_stragglers only a generous one,
            # which frees the client from a hung worker but never races a normal answer
            coro = self._infer_one(
                self._workers[worker], self.model, spec.input_name, payloads[row:row + 1], spec.output_name,
                (hard_t - t_fanout) + (0.0 if self.cancel_stragglers else ABANDONED_REQUEST_TIMEOUT_S),
            )
            tasks[asyncio.ensure_future(coro)] = worker
        answers, latency, errors = await self._collect(tasks, plan, k, policy_kind, t_fanout, deadline_t, hard_t)
        t_decide = time.perf_counter()

        # 3. decode
        lam_enc = lam_dec = None
        if self.scheme in CODED_SCHEMES:
            arrived = tuple(sorted(answers))
            y = np.concatenate([answers[w] for w in arrived], axis=0)
            if self.scheme == "nercc":
                lam_enc, lam_dec = self.lams(k, len(arrived))
            scheme = self.coding_scheme(k, lam_dec)
            predictions = np.asarray(scheme.decode(y, list(arrived)), dtype=np.float32)
        else:
            first = {}
            for worker in sorted(answers, key=latency.get):
                first.setdefault(plan[worker], worker)
            arrived = tuple(sorted(first.values()))
            predictions = np.concatenate([answers[first[j]] for j in range(k)], axis=0).astype(np.float32, copy=False)
        t_end = time.perf_counter()
        # late: some answer that was used came in after the deadline (the client waited past it)
        late = any(t_fanout + latency[w] / 1e3 > deadline_t for w in arrived)
        return CodedResult(
            predictions=predictions,
            arrived=arrived,
            worker_latency_ms=latency,
            errors=errors,
            encode_ms=encode_ms,
            fanout_ms=(t_decide - t_fanout) * 1e3,
            decode_ms=(t_end - t_decide) * 1e3,
            total_ms=(t_end - t0) * 1e3,
            deadline_met=t_end <= deadline_t,
            late=late,
            scheme=self.scheme,
            policy=self.policy,
            n_workers=self.n_workers,
            n_requests=len(plan),
            lam_enc=lam_enc,
            lam_dec=lam_dec,
            assignment={} if self.scheme in CODED_SCHEMES else dict(plan),
        )

    def _rules(self, plan: Dict[int, int], k: int, policy_kind: str) -> Tuple[Callable, Callable, Callable, int]:
        """(enough, target, possible, n_needed) for this scheme and policy, as functions of the answer set.

        ``enough``: the minimum to produce K predictions; ``target``: the policy is satisfied and the client stops
        before the deadline; ``possible(answered, pending)``: the minimum can still be reached.
        """
        if self.scheme in CODED_SCHEMES:
            need = self.min_answers
            stop_at = self.policy_m if policy_kind == "first" else len(plan)
            return (
                lambda ans: len(ans) >= need,
                lambda ans: len(ans) >= stop_at,
                lambda ans, pend: len(ans) + len(pend) >= need,
                need,
            )

        def covered(ans):
            return len({plan[w] for w in ans}) == k

        def possible(ans, pend):
            return len({plan[w] for w in ans} | {plan[w] for w in pend}) == k

        if policy_kind == "all":
            return covered, lambda ans: len(ans) == len(plan), possible, k
        return covered, covered, possible, k

    async def _collect(self, tasks, plan, k, policy_kind, t_fanout, deadline_t, hard_t):
        """Wait for worker answers per the policy; cancel the rest. Returns (answers, latency_ms, errors)."""
        enough, target, possible, need = self._rules(plan, k, policy_kind)
        answers: Dict[int, np.ndarray] = {}
        latency: Dict[int, float] = {}
        errors: Dict[int, str] = {}
        pending = set(tasks)
        # `all` waits for everyone up to the hard timeout; the others stop at the deadline once they have enough
        soft_t = hard_t if policy_kind == "all" else deadline_t
        try:
            while pending:
                if target(answers):
                    break
                now = time.perf_counter()
                if now >= soft_t and enough(answers):
                    break
                if now >= hard_t or not possible(answers, {tasks[t] for t in pending}):
                    break
                wake = soft_t if now < soft_t else hard_t
                done, pending = await asyncio.wait(pending, timeout=wake - now, return_when=asyncio.FIRST_COMPLETED)
                now = time.perf_counter()
                for task in done:
                    worker = tasks[task]
                    exc = task.exception()
                    if exc is None:
                        answers[worker] = task.result()
                        latency[worker] = (now - t_fanout) * 1e3
                    else:
                        errors[worker] = _error_text(exc)
        finally:
            for task in pending:
                if self.cancel_stragglers:
                    task.cancel()
                else:
                    self._abandoned.add(task)
                    task.add_done_callback(self._abandoned.discard)
                task.add_done_callback(_swallow)
        if not enough(answers):
            raise NotEnoughAnswersError(
                f"{self.scheme}: {len(answers)} of {len(plan)} workers answered within the hard timeout "
                f"({self.hard_timeout_ms:g} ms) but "
                + (f"decoding needs at least {need}" if self.scheme in CODED_SCHEMES
                   else f"all {k} inputs need an answer (covered {len({plan[w] for w in answers})})")
                + (f"; errors: {errors}" if errors else ""),
                n_arrived=len(answers), n_needed=need, errors=errors,
            )
        return answers, latency, errors


def _error_text(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return f"{type(exc).__name__}: {text}"


def _swallow(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


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
