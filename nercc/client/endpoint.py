"""A client of the master's coded endpoint ``<model>_coded``: one gRPC request per batch, decoding server-side.

:class:`EndpointClient` has the interface of :class:`nercc.client.aio.CodedClient` that the load engines use
(``connect``, ``warmup``, ``infer(batch) -> CodedResult``, ``drain``, ``close``, ``scheme``, ``deadline_ms``,
``hard_timeout_ms``), so ``nercc loadtest`` and the engines measure the endpoint beside client-side decoding on
the same cluster. It is also the smallest example of calling the endpoint from Python; any Triton client in any
language does the same with one request (docs/serving.md shows curl).

Per-worker round trips, errors and the request count are the endpoint's business: the result carries the
arrived workers, the late flag and the end-to-end time (``encode_ms`` and ``decode_ms`` are 0: all of it is
``fanout_ms``, the one round trip).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nercc.client.core import CODED_SCHEMES, CodedResult, MasterError, parse_policy
from nercc.coding.registry import DEFAULT_SCHEME, scheme_info


class EndpointClient:
    """Coded predictions from ``<model>_coded`` on ``master_url`` (gRPC ``host:port``).

    ``scheme``, ``deadline_ms``, ``policy`` travel as request parameters; ``n_workers`` (the cluster's N) only
    sizes ``result.n_requests`` for the coded schemes (the endpoint sends N worker requests per batch).
    """

    def __init__(self, master_url: str, model: str = "lenet5", scheme: str = DEFAULT_SCHEME,
                 deadline_ms: float = 50.0, policy: str = "deadline", n_workers: int | None = None,
                 hard_timeout_ms: float = 2000.0, n_inputs: int | None = None, endpoint: str | None = None,
                 **_ignored: Any):
        if not isinstance(master_url, str) or not master_url:
            raise ValueError(f"master_url must be a 'host:port' string, got {master_url!r}")
        self.scheme = scheme_info(scheme).name
        if not (deadline_ms > 0 and hard_timeout_ms >= deadline_ms):
            raise ValueError(f"need deadline_ms > 0 and hard_timeout_ms >= deadline_ms, got {deadline_ms}, "
                             f"{hard_timeout_ms}")
        if n_workers is not None:
            parse_policy(policy, n_workers)
        self.master_url, self.model = master_url, model
        self.endpoint = endpoint or f"{model}_coded"
        self.deadline_ms, self.hard_timeout_ms = float(deadline_ms), float(hard_timeout_ms)
        self.policy, self.n_workers, self.n_inputs = policy, n_workers, n_inputs
        self._client = None

    @property
    def coded(self) -> bool:
        return self.scheme in CODED_SCHEMES

    async def connect(self) -> EndpointClient:
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.master_url)
        return self

    async def warmup(self, n_batches: int = 2, settle_s: float = 2.0) -> None:
        """A few all-zero batches with policy ``all`` (every worker runs once; first runs are slow), then as many
        with this client's own settings, then ``settle_s`` seconds: the endpoint builds the decoders of its
        ``first:M`` arrived sets in the background after its first batch of a setting (the client's own warm-up
        builds them before)."""
        import asyncio

        await self.connect()
        meta = await self._client.get_model_metadata(self.endpoint, as_json=True, client_timeout=10.0)
        tensor = meta["inputs"][0]
        shape = [self.n_inputs or 4] + [int(d) for d in tensor["shape"][1:]]
        dtype = np.uint8 if tensor["datatype"] == "UINT8" else np.float32
        for _ in range(max(1, int(n_batches))):
            await self._request(np.zeros(shape, dtype), {"policy": "all"})
        for _ in range(max(1, int(n_batches))):
            await self._request(np.zeros(shape, dtype))
        await asyncio.sleep(settle_s)

    async def _request(self, batch: np.ndarray, overrides: dict | None = None):
        from tritonclient.grpc import InferInput
        from tritonclient.utils import np_to_triton_dtype

        tensor = InferInput("RAW", list(batch.shape), np_to_triton_dtype(batch.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        params = {"scheme": self.scheme, "deadline_ms": self.deadline_ms, "policy": self.policy, **(overrides or {})}
        return await self._client.infer(self.endpoint, [tensor], parameters=params,
                                        client_timeout=self.hard_timeout_ms / 1e3 + 5.0)

    async def infer(self, batch: np.ndarray) -> CodedResult:
        """K predictions for K raw inputs, decoded on the master."""
        from tritonclient.utils import InferenceServerException

        await self.connect()
        t0 = time.perf_counter()
        try:
            response = await self._request(batch)
        except InferenceServerException as exc:
            text = exc.message() or str(exc)
            if "INVALID_ARG" in str(exc.status()) or "must" in text:
                raise ValueError(text) from None
            raise MasterError(f"coded endpoint {self.master_url} ({self.endpoint}): {text}") from None
        total_ms = (time.perf_counter() - t0) * 1e3
        arrived = tuple(int(w) for w in response.as_numpy("ARRIVED"))
        result = CodedResult(
            predictions=response.as_numpy("PREDICTIONS"), arrived=arrived, worker_latency_ms={}, errors={},
            encode_ms=0.0, fanout_ms=total_ms, decode_ms=0.0, total_ms=total_ms,
            deadline_met=total_ms <= self.deadline_ms, late=bool(response.as_numpy("LATE")[0]),
            scheme=self.scheme, policy=self.policy, n_workers=self.n_workers or len(arrived),
            n_requests=(self.n_workers or len(arrived)) if self.coded else len(arrived),
            encode="server", master=self.master_url)
        result.exact = response.as_numpy("EXACT")
        return result

    async def drain(self, timeout_s: float | None = None) -> int:
        return 0  # stragglers are the endpoint's: nothing of them is in flight here

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> EndpointClient:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()
