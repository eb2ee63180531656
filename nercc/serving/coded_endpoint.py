"""The coded endpoint on the master (``<model>_coded``): K inputs in, K predictions out, for any Triton client.

The Python-backend model ``python_backends/coded`` is a thin shell around :class:`CodedEndpoint`, which runs the
coded client itself (:class:`nercc.client.aio.CodedClient` with ``encode="local"``) inside the master's Python
stub: preprocess and encode here (no extra hop), fan out to the N workers over async gRPC, wait with the client's
own policy state machine (:class:`nercc.client.core.WaitState`), check the answers and the workers' health
(:mod:`nercc.client.health`), decode. Nothing of the wait logic is written again here: this module only turns a
Triton request into a client call and a :class:`~nercc.client.core.CodedResult` into output tensors.

Request parameters (KServe v2 ``parameters``; tritonclient ``parameters={...}``), all optional:

``scheme``
    any scheme of the registry (:data:`nercc.coding.SCHEME_ORDER`); default: the model config's ``scheme``.
``deadline_ms``
    the end-to-end budget of the batch (a number > 0); default: the config's ``deadline_ms``.
``policy``
    ``deadline`` | ``first:M`` | ``first:M@T`` | ``all`` | ... (:mod:`nercc.policy`); default: the config's.

Outputs: ``PREDICTIONS`` FP32 [K, D]; ``EXACT`` BOOL [K] (the prediction is the input's own worker answer: the
baselines, and systematic schemes whose input's own worker answered); ``ANSWERS_USED`` INT32 [1];
``ARRIVED`` INT32 [|F|] (the worker indices whose answers were decoded); ``LATE`` BOOL [1] (an answer used came
in after the deadline).

Workers: ``worker_urls`` (comma-separated ``host:port`` gRPC, worker order) from the environment variable
``NERCC_WORKER_URLS``, else the model config's parameter ``worker_urls``, else a cluster description
(``urls.json``, :mod:`nercc.serving.urls`) named by the config's ``urls_file``; read at the first request, so a
master may start before its workers and before the file is written.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

#: The environment variable that names the workers (overrides the config; one repository, many deployments).
WORKER_URLS_ENV = "NERCC_WORKER_URLS"
#: Request parameters the endpoint accepts.
REQUEST_PARAMETERS = ("scheme", "deadline_ms", "policy")
#: Output tensors, in the order of the model config.
OUTPUTS = ("PREDICTIONS", "EXACT", "ANSWERS_USED", "ARRIVED", "LATE")
#: Client settings (scheme, policy, deadline) kept at once; each shares the connections and health record.
MAX_VARIANTS = 32
DEFAULT_DEADLINE_MS = 50.0
DEFAULT_POLICY = "deadline"
DEFAULT_HARD_TIMEOUT_MS = 2000.0
#: Most arrived sets the endpoint builds decoders for ahead of use, per (client, K) (the client's warm-up bound).
PREBUILD_MAX_SETS = 2000


class RequestError(ValueError):
    """A problem with one request (its parameters or input): the message goes back to that client only."""


class NoWorkersError(RuntimeError):
    """The endpoint has no workers configured (no NERCC_WORKER_URLS, worker_urls or urls_file)."""


def parse_worker_urls(text: str | None) -> List[str]:
    """``"h:p,h:p"`` -> ["h:p", "h:p"] (spaces ignored); an empty list for None or blank."""
    if not text:
        return []
    urls = [u.strip() for u in str(text).split(",") if u.strip()]
    for url in urls:
        host, colon, port = url.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"worker URL {url!r} is not 'host:port'")
    return urls


def _number(name: str, value, *, minimum: float, inclusive: bool = False) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RequestError(f"request parameter {name!r} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"request parameter {name!r} must be a finite number, got {value!r}")
    if value < minimum or (value == minimum and not inclusive):
        raise RequestError(f"request parameter {name!r} must be {'>=' if inclusive else '>'} {minimum:g}, "
                           f"got {value!r}")
    return float(value)


class CodedEndpoint:
    """One master model instance's coded serving: a base client plus a bounded set of variants by settings.

    ``model`` / ``model_dir``: the served model and its folder (nercc.json, tuning.json). ``worker_urls`` the N
    workers (or ``urls_file``, read when the first request comes). ``scheme``, ``deadline_ms``, ``policy``: the
    defaults of a request without parameters. ``client_kwargs`` go to every :class:`CodedClient` (``hard_timeout_ms``,
    ``min_answers``, ``robust``, ``answer_range``, ``max_failures`` ...).
    """

    def __init__(self, model: str, model_dir: str | Path, worker_urls: Sequence[str] = (), *,
                 urls_file: str | Path | None = None, scheme: str | None = None,
                 deadline_ms: float = DEFAULT_DEADLINE_MS, policy: str = DEFAULT_POLICY,
                 hard_timeout_ms: float = DEFAULT_HARD_TIMEOUT_MS, max_variants: int = MAX_VARIANTS,
                 **client_kwargs):
        from nercc.coding.registry import DEFAULT_SCHEME, scheme_info

        self.model, self.model_dir = model, Path(model_dir)
        self.worker_urls = list(worker_urls)
        self.urls_file = None if urls_file is None else Path(urls_file)
        self.scheme = scheme_info(scheme or DEFAULT_SCHEME).name
        self.deadline_ms = _number("deadline_ms", deadline_ms, minimum=0.0)
        self.policy = policy
        self.hard_timeout_ms = float(hard_timeout_ms)
        if self.hard_timeout_ms < self.deadline_ms:
            raise ValueError(f"hard_timeout_ms = {hard_timeout_ms} is below deadline_ms = {deadline_ms}")
        self.max_variants = int(max_variants)
        self.client_kwargs = client_kwargs
        self._base = None
        self._variants: OrderedDict[tuple, object] = OrderedDict()
        self._prebuilt: set = set()  # (id(client), K) whose decoders are built or being built

    # ------------------------------------------------------------------ clients
    def _workers(self) -> List[str]:
        if self.worker_urls:
            return self.worker_urls
        if self.urls_file is not None and self.urls_file.exists():
            from nercc.serving.urls import read_urls

            self.worker_urls = list(read_urls(self.urls_file).worker_urls)
        if not self.worker_urls:
            where = f" (urls_file {self.urls_file} does not exist yet)" if self.urls_file is not None else ""
            raise NoWorkersError(f"{self.model}_coded has no workers{where}: set {WORKER_URLS_ENV}='host:port,...' "
                                 "for the master, or the model parameter worker_urls or urls_file "
                                 "(nercc serve fills them in)")
        return self.worker_urls

    def _base_client(self):
        if self._base is None:
            from nercc.client.aio import CodedClient

            self._base = CodedClient(None, self._workers(), model=self.model, model_dir=str(self.model_dir),
                                     scheme=self.scheme, deadline_ms=self.deadline_ms, policy=self.policy,
                                     hard_timeout_ms=self.hard_timeout_ms, encode="local", **self.client_kwargs)
        return self._base

    def client(self, scheme: str, deadline_ms: float, policy: str):
        """The client for these settings (built once, kept in an LRU of ``max_variants``)."""
        base = self._base_client()
        key = (scheme, deadline_ms, policy)
        if key == (base.scheme, base.deadline_ms, base.policy):
            return base
        client = self._variants.get(key)
        if client is None:
            try:
                client = base.variant(scheme=scheme, deadline_ms=deadline_ms, policy=policy,
                                      hard_timeout_ms=max(self.hard_timeout_ms, deadline_ms))
            except ValueError as exc:
                raise RequestError(str(exc)) from None
            self._variants[key] = client
            while len(self._variants) > self.max_variants:
                _, old = self._variants.popitem(last=False)
                asyncio.ensure_future(old.close())
        else:
            self._variants.move_to_end(key)
        return client

    # ------------------------------------------------------------------ requests
    def settings(self, parameters: Dict[str, object]) -> tuple:
        """(scheme, deadline_ms, policy) of a request from its parameters and the defaults; RequestError."""
        from nercc.coding.registry import SCHEME_ORDER

        unknown = sorted(set(parameters) - set(REQUEST_PARAMETERS))
        if unknown:
            raise RequestError(f"unknown request parameter(s) {unknown}; allowed: {', '.join(REQUEST_PARAMETERS)}")
        scheme = parameters.get("scheme", self.scheme)
        if not isinstance(scheme, str) or scheme.lower() not in SCHEME_ORDER:
            raise RequestError(f"request parameter 'scheme' must be one of {', '.join(SCHEME_ORDER)}, got {scheme!r}")
        deadline_ms = self.deadline_ms
        if "deadline_ms" in parameters:
            deadline_ms = _number("deadline_ms", parameters["deadline_ms"], minimum=0.0)
        policy = parameters.get("policy", self.policy)
        if not isinstance(policy, str):
            raise RequestError(f"request parameter 'policy' must be a string, got {policy!r}")
        return scheme.lower(), deadline_ms, policy.strip().lower()

    async def infer(self, batch: np.ndarray, parameters: Dict[str, object] | None = None) -> Dict[str, np.ndarray]:
        """The output tensors for one request: ``batch`` raw uint8 (K, *raw_shape) or float32 (K, *input_shape)."""
        client = self.client(*self.settings(parameters or {}))
        try:
            result = await client.infer(batch)
        except ValueError as exc:  # a bad batch or a policy that does not fit this scheme / N
            raise RequestError(str(exc)) from None
        self._prebuild(client, result.predictions.shape[0])
        return self.outputs(result, client)

    def _prebuild(self, client, k: int) -> None:
        """After the first batch of K inputs on a client: build its ``first:M`` / ``exact:M`` decoders for every
        arrived set in a worker thread (the client's warm-up does it before the first batch; the endpoint only
        learns K from a request). Without it, batches pay a spline fit per arrived set not seen yet (~2.5 ms of
        CPU each, C(12, 8) = 495 sets at first:8) for their first few hundred batches. The coding schemes lock
        their caches: decoding goes on meanwhile."""
        key = (id(client), k)
        if key in self._prebuilt:
            return
        self._prebuilt.add(key)
        asyncio.get_running_loop().run_in_executor(None, client._prebuild_decoders, PREBUILD_MAX_SETS, k)

    @staticmethod
    def outputs(result, client) -> Dict[str, np.ndarray]:
        """A :class:`~nercc.client.core.CodedResult` as the endpoint's output tensors."""
        k = result.predictions.shape[0]
        exact = getattr(result, "exact", None)
        if exact is None and client.coded:
            # systematic schemes: input k is exact when its own worker's answer was decoded (plain codes: never)
            exact = ~np.asarray(client.coding_scheme(k).recovered(list(result.arrived)), dtype=bool)
        elif exact is None:  # the baselines: every prediction is its input's own worker answer
            exact = np.ones(k, dtype=bool)
        return {
            "PREDICTIONS": np.ascontiguousarray(result.predictions, dtype=np.float32),
            "EXACT": np.asarray(exact, dtype=bool).reshape(k),
            "ANSWERS_USED": np.array([len(result.arrived)], dtype=np.int32),
            "ARRIVED": np.asarray(result.arrived, dtype=np.int32),
            "LATE": np.array([bool(result.late)], dtype=bool),
        }

    async def close(self) -> None:
        for client in list(self._variants.values()):
            await client.close()
        self._variants.clear()
        if self._base is not None:
            await self._base.close()
            self._base = None


def endpoint_from_config(config: dict, model_name: str, model_dir: Path, model_folder: Path,
                         environ=None) -> CodedEndpoint:
    """The endpoint a ``<model>_coded`` config describes (parameters: ``worker_urls``, ``urls_file`` relative to
    the model's folder, ``scheme``, ``deadline_ms``, ``policy``, ``hard_timeout_ms``, ``min_answers``)."""
    from nercc.serving.backend_utils import config_param

    environ = os.environ if environ is None else environ
    urls = parse_worker_urls(environ.get(WORKER_URLS_ENV) or config_param(config, "worker_urls", ""))
    urls_file = config_param(config, "urls_file", "") or None
    if urls_file is not None and not Path(urls_file).is_absolute():
        urls_file = model_folder / urls_file
    extra = {}
    if config_param(config, "min_answers"):
        extra["min_answers"] = int(config_param(config, "min_answers"))
    return CodedEndpoint(
        model_name, model_dir, urls, urls_file=urls_file, scheme=config_param(config, "scheme") or None,
        deadline_ms=float(config_param(config, "deadline_ms", DEFAULT_DEADLINE_MS)),
        policy=config_param(config, "policy", DEFAULT_POLICY),
        hard_timeout_ms=float(config_param(config, "hard_timeout_ms", DEFAULT_HARD_TIMEOUT_MS)), **extra)
