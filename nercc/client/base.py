"""What every transport of the coded client shares: arguments, model spec, lams, the local steps of a batch.

:class:`ClientBase` holds the settings of one client and everything that needs no network: argument checks,
the model spec from ``nercc.json``, the tuning-profile lookups (lam_enc, lam_dec), the coding schemes, batch
validation, local preprocessing and local encoding, planning a batch and turning a finished
:class:`~nercc.client.core.WaitState` into a :class:`~nercc.client.core.CodedResult`. A transport subclass
(:class:`nercc.client.aio.CodedClient`, :class:`nercc.client.gevent.GeventCodedClient`) adds the connections,
the requests and the waiting.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from nercc.client import core
from nercc.client.core import (
    CODED_SCHEMES,
    ENCODE_MODES,
    MIN_CODED_ANSWERS,
    SCHEMES,
    CodedResult,
    Decision,
    HedgeDelay,
    MasterError,
    ModelSpec,
    RequestPlan,
    WaitState,
    check_answer,
)
from nercc.client.health import (
    DEFAULT_MASTER_COOLDOWN_S,
    DEFAULT_MAX_FAILURES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PROBE_INTERVAL_S,
    MasterPool,
    WorkerHealth,
)
from nercc.coding.registry import DEFAULT_SCHEME, HEDGED, REPLICATION
from nercc.paths import model_dir as default_model_dir

#: Decoding matrices and leave-one-out operators a client keeps per coding scheme (~1 KB each at N = 12).
DECODE_CACHE_ENTRIES = 4096
#: Most arrived sets warm-up builds decoders for ahead of time (first:7@T at N = 12: 1,586 sets, ~3 s of CPU;
#: each set is a decoding matrix and a leave-one-out operator, well inside DECODE_CACHE_ENTRIES).
PREBUILD_MAX_SETS = 2000
#: Worker round trips the hedge-delay estimator keeps (its p95 is the default hedge delay).
HEDGE_WINDOW = 256
#: Most extra warm-up batches ``hedged`` sends to measure its hedge delay.
WARMUP_HEDGE_BATCHES_MAX = 50


def error_text(exc: BaseException, with_status: bool = False) -> str:
    """``Type: message`` of a failed request (tritonclient's exceptions carry ``message()``); ``with_status``
    adds the status in brackets (HTTP: 400 is a refusal, see nercc.client.gevent) and names the type when the
    message is empty."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    if not with_status:
        return f"{type(exc).__name__}: {text}"
    status = getattr(exc, "status", None)
    status = status() if callable(status) else None
    return f"{type(exc).__name__}: {f'[{status}] ' if status else ''}{text or type(exc).__name__}"


#: The inbox key of a systematic batch's parity rows (``(PARITY, t, rows, error)``), beside the workers' answers.
PARITY = -1


def feed_answers(state: WaitState, items, now: float, on_parity=None) -> Decision:
    """Hand arrived answers ``(worker, t, output, error)`` to the state machine in arrival order, then tick its
    clock at ``now``: one decision whose ``send`` holds every request the answers and the tick asked for.
    An item for ``PARITY`` (the parity rows of a systematic batch, or why there are none) goes to
    ``on_parity(t, rows, error)``, which returns the state's decision."""
    sends: list = []
    for worker, t, output, error in items:
        if worker == PARITY:
            decision = on_parity(t, output, error)
        elif error is None:
            decision = state.on_answer(worker, t, output)
        else:
            decision = state.on_failure(worker, t, error)
        sends += decision.send
    decision = state.on_tick(now)
    return Decision(decision.action, tuple(sends) + decision.send, decision.reason)


def parity_arrived(state: WaitState, payloads: np.ndarray, parity_workers, fanout, t: float, made,
                   error: str | None) -> Decision:
    """A systematic batch's parity rows came (``made`` = (rows, where, master)) or could not be made
    (``error``): fill the payload rows and let the state send the deferred requests (or fail them); the
    fan-out's ``encoded`` records where the rows the batch uses were made."""
    if error is not None:
        if state.final is None:
            fanout.encoded = ("failed", error)
        return state.on_deferred(t, error)
    rows, where, master = made
    if state.final is None:
        payloads[list(parity_workers)] = rows
        fanout.encoded = (where, master)
    return state.on_deferred(t)


class ClientBase:
    """Settings and transport-free steps of a coded client; see :class:`nercc.client.aio.CodedClient` for the
    arguments."""

    @classmethod
    def from_urls_file(cls, path, **kwargs):
        """A client for the cluster a ``urls.json`` describes (:mod:`nercc.serving.urls`): its first master, its
        workers in order, and its model unless ``model=`` is given."""
        from nercc.serving.urls import read_urls

        cluster = read_urls(path)
        if cluster.model and "model" not in kwargs:
            kwargs["model"] = cluster.model
        return cls(cluster.master_url, cluster.worker_urls, **kwargs)

    def __init__(
        self,
        master_url: str | Sequence[str] | None,
        worker_urls: Sequence[str],
        model: str = "lenet5",
        scheme: str = DEFAULT_SCHEME,
        deadline_ms: float = 50.0,
        policy: str = "deadline",
        n_inputs: int | None = None,
        lam_enc: float | None = None,
        lam_dec: float | None = None,
        hard_timeout_ms: float = 2000.0,
        n_stragglers: int | None = None,
        model_dir: str | None = None,
        cancel_stragglers: bool = False,
        min_answers: int = MIN_CODED_ANSWERS,
        encode: str = "auto",
        hedge_ms: float | None = None,
        robust: bool = True,
        answer_range: Tuple[float, float] | None | str = "auto",
        max_failures: int = DEFAULT_MAX_FAILURES,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        master_cooldown_s: float = DEFAULT_MASTER_COOLDOWN_S,
        avoid_stragglers: bool = False,
    ):
        master_urls = [] if not master_url else ([master_url] if isinstance(master_url, str) else list(master_url))
        self._check_arguments(master_urls, worker_urls, scheme, deadline_ms, hard_timeout_ms, lam_enc, lam_dec,
                              encode)
        self.master_urls = master_urls
        self.master_url = master_urls[0] if master_urls else None  # the first choice (older readers)
        self.masters = MasterPool(master_urls, master_cooldown_s) if master_urls else None
        self.worker_urls = list(worker_urls)
        self.n_workers = len(self.worker_urls)
        self.model = model
        self.scheme = scheme
        self.encode = encode
        self.deadline_ms = float(deadline_ms)
        self.hard_timeout_ms = float(hard_timeout_ms)
        self.policy = policy
        self.policy_kind, self.policy_m, self.patience_ms = core.parse_policy(policy, self.n_workers)
        if n_inputs is not None:
            self._check_k(int(n_inputs))
        self.n_inputs = None if n_inputs is None else int(n_inputs)
        self.lam_enc = lam_enc
        self.lam_dec = lam_dec
        if n_stragglers is None:
            n_stragglers = self.n_workers - self.policy_m if self.policy_kind in ("first", "exact") else 0
        if not 0 <= n_stragglers < self.n_workers:
            raise ValueError(f"n_stragglers must be in [0, n_workers), got {n_stragglers}")
        self.n_stragglers = int(n_stragglers)
        self._model_dir = Path(model_dir) if model_dir else default_model_dir(model)
        self.spec: ModelSpec | None = core.load_model_spec(model, self._model_dir)
        if encode == "local" and scheme in CODED_SCHEMES and self.spec is None:
            raise ValueError(f"encode='local' needs the model's local metadata ({self._model_dir}/nercc.json)")
        if encode == "auto" and scheme in CODED_SCHEMES and not master_urls and self.spec is None:
            raise ValueError(f"scheme {scheme!r} needs master_url, or the model's local metadata "
                             f"({self._model_dir}/nercc.json) to encode here")
        self.robust = bool(robust)
        self._answer_range_auto = isinstance(answer_range, str) and answer_range == "auto"
        self.answer_range = self._check_answer_range(answer_range)
        #: the ONNX sha256 every worker must serve (the master's, else the local nercc.json's); set at connect
        self.expected_sha256: str | None = self.spec.onnx_sha256 if self.spec else None
        #: workers found serving another model at connect or on a probe: worker -> error naming both hashes
        self.identity_errors: Dict[int, str] = {}
        self.health = WorkerHealth(len(self.worker_urls), max_failures=max_failures,
                                   probe_interval_s=probe_interval_s, max_in_flight=max_in_flight,
                                   avoid_stragglers=avoid_stragglers)
        self._settings: Dict[int, Any] = {}  # K -> CodedSetting
        self._rotation = itertools.count()
        self._closed = False
        self.cancel_stragglers = bool(cancel_stragglers)
        if isinstance(min_answers, bool) or not isinstance(min_answers, int) or not (
                MIN_CODED_ANSWERS <= min_answers <= self.n_workers):
            raise ValueError(f"min_answers must be an int in [{MIN_CODED_ANSWERS}, n_workers={self.n_workers}], "
                             f"got {min_answers!r}")
        self._check_policy(min_answers)
        self.min_answers = min_answers
        # hedged: fixed hedge_ms, else the p95 of the worker round trips seen (deadline / 2 until 20 are in)
        self.hedge_delay = HedgeDelay(hedge_ms, initial_ms=self.deadline_ms / 2, window=HEDGE_WINDOW)

    def _check_answer_range(self, answer_range):
        """(low, high) or None; ``"auto"``: from the model's output kind ((0, 1) for probabilities only)."""
        if self._answer_range_auto:
            return core.answer_range_for(self.spec.output_kind if self.spec else "probabilities")
        if isinstance(answer_range, str):
            raise ValueError(f"answer_range must be 'auto', (low, high) or None; got {answer_range!r}")
        if answer_range is None:
            return None
        lo, hi = (float(v) for v in answer_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"answer_range must be (low, high) finite with low < high, or None; got {answer_range!r}")
        return (lo, hi)

    # ------------------------------------------------------------ model identity
    def _server_spec_settled(self) -> None:
        """The spec came from the servers (no local nercc.json): the answer range follows its output kind."""
        if self._answer_range_auto and self.spec is not None:
            self.answer_range = core.answer_range_for(self.spec.output_kind)

    def _set_identity(self, master_configs: Sequence[Any], worker_configs: Sequence[Any]) -> None:
        """Compare every worker's model identity with the master's, from their Triton model configs (JSON, or
        the exception the request raised): a worker serving another ONNX is marked down at once.

        The reference is the first master's ``onnx_sha256`` config parameter, else the local nercc.json's. An
        unreachable worker is not judged here (it is a straggler, and its probe checks it later)."""
        for config in master_configs:
            if isinstance(config, dict):
                params = core.config_parameters(config)
                if params.get("onnx_sha256"):
                    self.expected_sha256 = params["onnx_sha256"]
                if params.get("output_kind") and self.spec is not None and self.spec.info is None \
                        and self.spec.output_kind != params["output_kind"]:
                    import dataclasses

                    self.spec = dataclasses.replace(self.spec, output_kind=params["output_kind"])
                    self._server_spec_settled()
                break
        now = time.perf_counter()
        for worker, config in enumerate(worker_configs):
            if isinstance(config, dict):
                error = self.identity_error(worker, config)
                if error is not None:
                    self.health.mark_down(worker, now, error)

    def identity_error(self, worker: int, config: dict) -> str | None:
        """The identity error of ``worker`` given its model config (JSON), or None when it serves our model."""
        got = core.config_parameters(config).get("onnx_sha256")
        error = core.identity_error(self.worker_urls[worker], self.model, got, self.expected_sha256)
        if error is None:
            self.identity_errors.pop(worker, None)
        else:
            self.identity_errors[worker] = error
        return error

    @staticmethod
    def _check_arguments(master_url, worker_urls, scheme, deadline_ms, hard_timeout_ms, lam_enc, lam_dec,
                         encode) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
        worker_urls = list(worker_urls)
        if not worker_urls or not all(isinstance(u, str) and u for u in worker_urls):
            raise ValueError("worker_urls must be a non-empty list of 'host:port' strings")
        if encode not in ENCODE_MODES:
            raise ValueError(f"encode must be one of {', '.join(ENCODE_MODES)}, got {encode!r}")
        if not all(isinstance(u, str) and u for u in master_url):
            raise ValueError(f"master_url must be a 'host:port' string or a list of them, got {master_url!r}")
        if len(set(master_url)) != len(master_url):
            raise ValueError(f"master URLs must be distinct, got {master_url}")
        if scheme in CODED_SCHEMES and not master_url and encode == "server":
            raise ValueError(f"scheme {scheme!r} needs master_url (the encoder runs on the master), "
                             "or encode='local'")
        if isinstance(deadline_ms, bool) or not (
                isinstance(deadline_ms, (int, float)) and deadline_ms > 0 and math.isfinite(deadline_ms)):
            raise ValueError(f"deadline_ms must be a finite number > 0, got {deadline_ms!r}")
        if isinstance(hard_timeout_ms, bool) or not (
                isinstance(hard_timeout_ms, (int, float)) and math.isfinite(hard_timeout_ms)
                and hard_timeout_ms >= deadline_ms):
            raise ValueError(
                f"hard_timeout_ms must be a finite number >= deadline_ms={deadline_ms}, got {hard_timeout_ms!r}"
            )
        for name, lam in (("lam_enc", lam_enc), ("lam_dec", lam_dec)):
            if lam is not None and not (lam >= 0 and math.isfinite(lam)):
                raise ValueError(f"{name} must be a finite number >= 0, got {lam!r}")

    def _check_k(self, k: int) -> None:
        core.check_n_inputs(self.scheme, k, self.n_workers)

    @property
    def coded(self) -> bool:
        return self.scheme in CODED_SCHEMES

    @property
    def systematic(self) -> bool:
        """A systematic coded scheme: the inputs go to their own workers as they are (the fast path)."""
        return core.is_systematic(self.scheme)

    # ------------------------------------------------------------ coding state
    def setting(self, k: int):
        """The :class:`nercc.coding.CodedSetting` for K inputs: read from the tuning profile once (given lams win).

        lam_enc comes from the profile entry for the expected stragglers S (``n_stragglers``); lam_dec, once
        |F| answers are known, from the entry for S = N - |F| (and its per-|F| table): the decoding matrix
        depends on lam_dec alone, so it can follow the answers that actually came.
        """
        if k not in self._settings:
            from nercc.coding import CodedSetting
            from nercc.profiles import load_profile

            self._settings[k] = CodedSetting.from_profile(
                load_profile(self._model_dir), self.scheme, k, self.n_workers, n_stragglers=self.n_stragglers,
                lam_enc=self.lam_enc, lam_dec=self.lam_dec,
                # every arrived set F has a decoding matrix and (robust decoding) a leave-one-out operator;
                # first:M meets up to C(N, M) sets (495 for 8 of 12): room for them all
                cache_size=DECODE_CACHE_ENTRIES)
        return self._settings[k]

    def smoothing_params(self, k: int, n_arrived: int | None = None) -> Tuple[float, float]:
        """(lam_enc, lam_dec) for K inputs: the pair sent to the master, and lam_dec for ``n_arrived`` answers."""
        setting = self.setting(k)
        return setting.lam_enc, setting.lam_dec_for(n_arrived)

    def coding_scheme(self, k: int, lam_dec: float | None = None):
        """The NeRCC/BACC object for K inputs and N workers (decoding matrices are cached inside it)."""
        return self.setting(k).coder(lam_dec)

    # -------------------------------------------------------------- one batch
    def _check_batch(self, batch: Any) -> Tuple[np.ndarray, bool]:
        """(batch, is_raw) after checking type, dtype, shape, finiteness and K."""
        batch, is_raw = core.check_batch(self.spec, self.model, batch)
        k = batch.shape[0]
        if self.n_inputs is not None and k != self.n_inputs:
            raise ValueError(f"batch has {k} inputs but the client was built with n_inputs={self.n_inputs}")
        self._check_k(k)
        return batch, is_raw

    def _local_inputs(self, batch: np.ndarray, is_raw: bool) -> np.ndarray | None:
        """The preprocessed float32 inputs, made here; None when only a master can (raw input, no metadata)."""
        if is_raw:
            if self.spec.info is None:
                return None
            from nercc.preprocessing import preprocess

            batch = preprocess(self.spec.info, batch)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _local_payloads(self, batch: np.ndarray, is_raw: bool) -> np.ndarray | None:
        """The rows the workers get, when the client can make them itself; None when the master must."""
        if self.coded and self.encode != "local":
            return None
        x = self._local_inputs(batch, is_raw)
        if x is None or not self.coded:
            return x  # None: no local metadata, the master preprocesses (baselines only)
        return core.encode_local(self.coding_scheme(x.shape[0]), x)

    # The fast path of a systematic batch: the inputs (preprocessed here, else by a master's
    # <model>_preprocess) go to their own workers at once; the parity rows come from a master (<model>_encoder,
    # asked concurrently) or from here (encode="local", or the fallback) and go out as soon as they exist.
    def _systematic_payloads(self, x: np.ndarray):
        """(the N payload rows, the coding scheme): the inputs at their systematic workers' rows, the parity
        rows filled too when this process encodes them (``encode="local"``), else left for the master's."""
        coding = self.coding_scheme(x.shape[0])
        payloads = np.empty((self.n_workers, *x.shape[1:]), dtype=np.float32)
        payloads[list(coding.systematic_workers)] = x
        if self.encode == "local":
            payloads[list(coding.parity_workers)] = self._parity_local(coding, x)
        return payloads, coding

    @staticmethod
    def _parity_local(coding, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(coding.encode_parity(x), dtype=np.float32)

    def _parity_request(self, k: int) -> Tuple[str, str, str, dict]:
        """(model, input name, output name, parameters) of the master request for the N - K parity rows."""
        model, _, out, params = self._master_request(False, k)
        return model, "INPUT", out, params

    def _check_parity(self, rows: np.ndarray | None, url: str, n_inputs: int) -> np.ndarray:
        return self._check_rows(rows, self.n_workers - n_inputs, url, "parity rows",
                                f" (N - K = {self.n_workers - n_inputs}; a master older than systematic schemes "
                                "returns N rows)")

    def _parity_after_masters(self, coding, x: np.ndarray, model: str, failures: list):
        """No master made the parity rows: (rows, "local-fallback", why) with ``encode="auto"``, else a
        MasterError (the batch then serves from the systematic answers alone)."""
        if self.encode == "auto":
            return self._parity_local(coding, x), "local-fallback", "; ".join(failures) or "no master"
        raise MasterError(f"parity encoding failed on every master ({model}): " + ("; ".join(failures)
                                                                                  or "no master"))

    def _parity_master_failed(self, index: int, text: str, failures: list, fault: bool) -> None:
        """A master's parity request failed: a fault skips the master for its cool-down (a refusal does not:
        every master would refuse the batch the same way); the next is tried."""
        if fault:
            self.masters.failed(index, time.perf_counter(), text)
        failures.append(f"{self.master_urls[index]}: {text}")

    def _master_request(self, is_raw: bool, k: int, preprocess: bool = False) -> Tuple[str, str, str, dict | None]:
        """(model, input name, output name, parameters) of the master request that makes the payloads
        (``preprocess``: the preprocessed inputs only, whatever the scheme)."""
        if not self.coded or preprocess:
            if not self.master_urls:
                raise ValueError(
                    f"raw uint8 input for {self.model!r} needs either the model's local metadata or a master_url "
                    f"serving {self.model}_preprocess; or send preprocessed float32"
                )
            return f"{self.model}_preprocess", "RAW", "INPUT", None
        params = {"scheme": self.scheme, "n_workers": self.n_workers, "n_stragglers": self.n_stragglers}
        if self.setting(k).smoothing:  # NeRCC and systematic NeRCC: the encoder uses the decoder's lam_enc
            params["lam_enc"] = self.setting(k).lam_enc
        model, name = (f"{self.model}_encode", "RAW") if is_raw else (f"{self.model}_encoder", "INPUT")
        return model, name, "CODED", params

    # Step 1 of a batch, the payloads, around the transport's own master request: every transport runs
    #   ready = _payloads_without_master(); for index, url, timeout_s in _master_attempts(): request,
    #   _master_failed() on an error, return on success; then _payloads_after_masters().
    def _payloads_without_master(self, batch: np.ndarray, is_raw: bool):
        """(payloads, "local", None) when no master is asked (local encode, preprocessed baselines), else None."""
        local = self._local_payloads(batch, is_raw)
        if local is not None:
            return local, "local", None
        if not is_raw and not self.coded:
            return batch, "local", None
        return None

    def _master_attempts(self, hard_t: float, failures: list):
        """(index, url, timeout_s) per master in the pool's order, each with an equal share of the time left
        before the hard timeout (a frozen master cannot eat all of it); stops when that time is up."""
        order = self.masters.order(time.perf_counter()) if self.masters is not None else []
        for attempt, index in enumerate(order):
            left = hard_t - time.perf_counter()
            if left <= 0:
                failures.append("hard timeout reached")
                return
            yield index, self.master_urls[index], left / (len(order) - attempt)

    def _master_failed(self, index: int, text: str, failures: list, refused: bool, model: str,
                       exc: BaseException) -> None:
        """A master's request failed: a refusal of the batch itself (every master would refuse it) raises; any
        other failure skips the master for its cool-down and the next one is tried."""
        url = self.master_urls[index]
        if refused:
            raise MasterError(f"encoding on the master {url} ({model}) failed: {text}") from exc
        self.masters.failed(index, time.perf_counter(), text)
        failures.append(f"{url}: {text}")

    def _payloads_after_masters(self, batch: np.ndarray, is_raw: bool, model: str, failures: list):
        """No master made the payloads: the local fallback of ``encode="auto"``, else a MasterError."""
        fallback = self._encode_fallback(batch, is_raw)
        if fallback is not None:
            return fallback, "local-fallback", "; ".join(failures) or "no master"
        what = "encoding" if self.coded else "preprocessing"
        raise MasterError(f"{what} failed on every master ({model}): " + "; ".join(failures))

    # A worker request, around the transport's own call: _answer_record() for an answer, then _request_done().
    def _answer_record(self, worker: int, t_sent: float, output: np.ndarray) -> tuple:
        """(worker, arrival time, output or None, error text or None) of an answer that just arrived: its round
        trip goes into the hedge-delay estimate, the answer is checked (shape, finite, range)."""
        t = time.perf_counter()
        self.hedge_delay.observe((t - t_sent) * 1e3)
        error = check_answer(output, 1, self.spec.n_classes, self.answer_range)
        return worker, t, (output if error is None else None), error

    def _request_done(self, worker: int, ok: bool, error: str | None, abandoned: bool = False) -> None:
        """Tell the worker's health record: an answer or a failure, or (neither: cancelled, killed) released;
        ``abandoned``: the batch had stopped waiting for this request."""
        if ok or error is not None:
            self.health.finished(worker, ok, time.perf_counter(), error or "", abandoned=abandoned)
        else:
            self.health.released(worker, abandoned=abandoned)

    def _check_coded(self, coded: np.ndarray | None, url: str | None = None) -> np.ndarray:
        return self._check_rows(coded, self.n_workers, url or self.master_url, "coded inputs")

    def _check_rows(self, rows: np.ndarray | None, n_rows: int, url: str | None, what: str,
                    hint: str = "") -> np.ndarray:
        """A master's output, refused unless it is ``n_rows`` finite float32 inputs of the model's shape."""
        expected = (n_rows, *self.spec.input_shape)
        if rows is None or tuple(rows.shape) != expected:
            got = None if rows is None else tuple(rows.shape)
            raise RuntimeError(f"master {url} returned {what} of shape {got}, expected {expected}{hint}")
        if rows.dtype != np.float32 or not np.isfinite(rows).all():
            raise RuntimeError(f"master {url} returned non-finite or non-float32 {what}")
        return rows

    def _encode_fallback(self, batch: np.ndarray, is_raw: bool) -> np.ndarray | None:
        """Local encoding when no master answered (``encode="auto"``); None when the client cannot (no nercc.json)."""
        if self.encode != "auto" or not self.coded or self.spec is None or (is_raw and self.spec.info is None):
            return None
        if is_raw:
            from nercc.preprocessing import preprocess

            batch = preprocess(self.spec.info, batch)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return core.encode_local(self.coding_scheme(x.shape[0]), x)

    def _plan(self, k: int) -> RequestPlan:
        rotation = 0 if self.coded else next(self._rotation)
        own = self.coding_scheme(k).systematic_workers if self.systematic else None
        plan = core.plan_requests(self.scheme, k, self.n_workers, rotation, systematic_workers=own)
        available = {w for w in range(self.n_workers) if self.health.available(w)}
        if self.health.avoid_stragglers:
            # a worker still busy with an abandoned straggler would queue the new request behind it: leave it out
            # while the batch keeps enough idle workers (coded: the answers the policy waits for)
            idle = {w for w in available if not self.health.busy_straggling(w)}
            needed = max(self.min_answers, self.policy_m or 0) if self.coded else 0
            if len(idle & set(plan.requests)) >= needed:
                available = idle
        return core.restrict_plan(plan, available)

    def _check_policy(self, min_answers: int) -> None:
        if self.policy_kind == "exact" and not self.systematic:
            systematic = [name for name in SCHEMES if core.is_systematic(name)]
            raise ValueError(f"policy {self.policy!r} needs a systematic scheme ({', '.join(systematic)}); "
                             f"scheme {self.scheme!r} codes every input: use 'first:M' or 'first:M@T'")
        if self.policy_kind in ("first", "exact") and self.policy_m < min_answers:
            raise ValueError(f"policy {self.policy!r} decodes before min_answers={min_answers} answers: use M >= it")
        if self.patience_ms is not None and self.patience_ms >= self.deadline_ms:
            raise ValueError(f"policy {self.policy!r}: T must be below deadline_ms={self.deadline_ms:g} "
                             "(at the deadline every policy decodes with what it has)")

    def _wait_state(self, plan: RequestPlan, policy_kind: str, t0: float, t_fanout: float,
                    deferred=()) -> WaitState:
        hedge_ms = self.hedge_delay.value_ms() if plan.backups else None
        state = WaitState(
            plan, policy_kind=policy_kind, policy_m=self.policy_m, min_answers=self.min_answers,
            t_fanout=t_fanout, deadline_t=t0 + self.deadline_ms / 1e3, hard_t=t0 + self.hard_timeout_ms / 1e3,
            patience_t=None if self.patience_ms is None else t0 + self.patience_ms / 1e3,
            hedge_t=None if hedge_ms is None else t_fanout + hedge_ms / 1e3, deferred=deferred,
        )
        state.hedge_ms = hedge_ms  # reported as given (hedge_t - t_fanout would round)
        return state

    def _prebuild_decoders(self, max_sets: int = PREBUILD_MAX_SETS, k: int | None = None) -> int:
        """Coded ``first:M``: build the decoding matrix (and the robust decoder's leave-one-out operator) of
        every M-of-N arrived set now, at warm-up, when there are at most ``max_sets`` of them; returns how
        many. ``first:M@T`` and ``exact:M@T`` decode from M to N answers: every size from N down, while the
        sets fit.
        A miss costs a batch a few spline fits (~2.5 ms of CPU, NeRCC N = 12) on its critical path.
        ``k``: for K inputs (default ``n_inputs``; a client taking any K, such as the coded endpoint, names it)."""
        k = self.n_inputs if k is None else int(k)
        if not self.coded or self.policy_kind not in ("first", "exact") or k is None:
            return 0
        n, m = self.n_workers, self.policy_m
        sizes = [m] if self.patience_ms is None else list(range(n, m - 1, -1))
        count = 0
        for size in sizes:
            if count + math.comb(n, size) > max_sets:
                break
            lam_dec = self.smoothing_params(k, size)[1] if self.setting(k).smoothing else None
            coding = self.coding_scheme(k, lam_dec)
            for arrived in itertools.combinations(range(n), size):
                coding.decoding_matrix(arrived)
                if self.robust and size >= 3 and size > k:
                    coding.loo_residual_operator(arrived)
                count += 1
        return count

    def _warmup_batches(self, n_batches: int) -> int:
        """Warm-up batches: rotating schemes need ceil(N / K) to reach every worker."""
        if self.coded or self.scheme == REPLICATION:
            return n_batches
        return max(n_batches, math.ceil(self.n_workers / (self.n_inputs or min(4, self.n_workers))))

    def _hedge_warmup_rounds(self):
        """Yields once per extra warm-up batch ``hedged`` needs to measure its hedge delay on warm workers (the
        cold first runs are dropped): until the estimator has its samples, at most WARMUP_HEDGE_BATCHES_MAX.
        The transport sends and drains one all-zero batch per round."""
        if self.scheme != HEDGED or self.hedge_delay.fixed_ms is not None:
            return
        self.hedge_delay.clear()  # cold first runs are no sample of a worker round trip
        for _ in range(WARMUP_HEDGE_BATCHES_MAX):
            if self.hedge_delay.n_samples >= self.hedge_delay.min_samples:
                return
            yield

    def _warmup_batch(self) -> np.ndarray:
        k = self.n_inputs or min(4, self.n_workers)
        shape = self.spec.raw_shape if self.spec.raw_shape is not None else self.spec.input_shape
        dtype = np.uint8 if self.spec.raw_shape is not None else np.float32
        return np.zeros((k, *shape), dtype=dtype)

    def _result(self, state: WaitState, k: int, t0: float, t_fanout: float, t_decide: float,
                clock, encoded_on: str | None = None, master: str | None = None) -> CodedResult:
        """Decode a finished batch (``clock()`` the transport's time in seconds) into its result."""
        used = state.used_workers()
        lam_enc = lam_dec = None
        dropped: Tuple[int, ...] = ()
        errors = dict(state.errors)
        exact = np.ones(k, dtype=bool)  # the baselines: every prediction is its input's own answer
        if self.coded and state.systematic_complete():
            # every input's own answer is in: they are the predictions, as they came (no regression, and no
            # robust check: like the baselines' answers, each is the only answer for its input that is used)
            used = tuple(sorted(state.plan.systematic))
            if self.setting(k).smoothing:
                lam_enc = self.setting(k).lam_enc
            predictions = core.gather_systematic(state.plan, state.answers)
        elif self.coded:
            if self.setting(k).smoothing:
                lam_enc, lam_dec = self.smoothing_params(k, len(used))
            coding = self.coding_scheme(k, lam_dec)
            if self.robust:
                predictions, dropped = core.decode_coded_robust(coding, state.answers, used)
                if dropped:
                    for w in dropped:
                        errors[w] = "wrong answer: left out by robust decoding"
                    used = tuple(w for w in used if w not in dropped)
            else:
                predictions = core.decode_coded(coding, state.answers, used)
            exact = core.exact_mask(coding, used, k)
        else:
            predictions = core.gather_uncoded(state.sent, state.answers, used, k)
        core.ensure_finite(predictions, self.scheme, used)
        t_end = clock()
        return CodedResult(
            predictions=predictions,
            arrived=used,
            worker_latency_ms=state.latency_ms(),
            errors=errors,
            encode_ms=(t_fanout - t0) * 1e3,
            fanout_ms=(t_decide - t_fanout) * 1e3,
            decode_ms=(t_end - t_decide) * 1e3,
            total_ms=(t_end - t0) * 1e3,
            deadline_met=t_end <= state.deadline_t,
            late=state.late(used),
            scheme=self.scheme,
            policy=self.policy,
            n_workers=self.n_workers,
            n_requests=len(state.sent),
            lam_enc=lam_enc,
            lam_dec=lam_dec,
            assignment={} if self.coded else dict(state.sent),
            n_hedges=state.n_hedges(),
            hedge_ms=state.hedge_ms,
            encode=encoded_on if self.coded else None,
            master=master,
            dropped=dropped,
            exact=exact,
            n_recovered=int(k - exact.sum()) if self.coded and state.plan.systematic else 0,
        )
