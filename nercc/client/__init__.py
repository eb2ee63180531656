"""The coded client: K inputs → N Triton workers → K predictions by a deadline, despite stragglers.

Layout (see ``docs/client.md``):

:mod:`nercc.client.core`
    transport-free: schemes and request planning, the wait policy as a state machine
    (:class:`~nercc.client.core.WaitState`), the hedge-delay estimator, decoding, result and error types.
:mod:`nercc.client.base`
    :class:`~nercc.client.base.ClientBase`: arguments, model spec, tuning-profile lams, local preprocessing and
    encoding, result assembly, shared by every transport.
:mod:`nercc.client.health`
    transport-free worker health (marked down after consecutive failures, probes, in-flight caps) and the
    master failover order (:class:`~nercc.client.health.MasterPool`).
:mod:`nercc.client.aio`
    :class:`CodedClient` on ``tritonclient.grpc.aio`` (asyncio) and :class:`SyncCodedClient` (its blocking
    wrapper with a background event loop).
:mod:`nercc.client.gevent`
    :class:`GeventCodedClient` on ``tritonclient.http`` under gevent: synchronous ``infer``, for Locust
    (imported lazily: it needs gevent).
"""

from nercc.client.aio import ABANDONED_REQUEST_TIMEOUT_S, CodedClient, SyncCodedClient
from nercc.client.core import (
    CODED_SCHEMES,
    ENCODE_MODES,
    MIN_CODED_ANSWERS,
    SCHEME_ORDER,
    SCHEMES,
    UNCODED_SCHEMES,
    BadPredictionsError,
    CodedResult,
    Decision,
    HedgeDelay,
    MasterError,
    ModelSpec,
    NotEnoughAnswersError,
    RequestPlan,
    WaitState,
    check_answer,
    parse_policy,
    plan_requests,
)
from nercc.client.health import MasterPool, WorkerHealth

__all__ = [
    "ABANDONED_REQUEST_TIMEOUT_S",
    "CODED_SCHEMES",
    "ENCODE_MODES",
    "MIN_CODED_ANSWERS",
    "SCHEME_ORDER",
    "SCHEMES",
    "UNCODED_SCHEMES",
    "BadPredictionsError",
    "CodedClient",
    "CodedResult",
    "Decision",
    "HedgeDelay",
    "MasterError",
    "ModelSpec",
    "NotEnoughAnswersError",
    "RequestPlan",
    "SyncCodedClient",
    "WaitState",
    "check_answer",
    "MasterPool",
    "WorkerHealth",
    "parse_policy",
    "plan_requests",
]


def __getattr__(name):
    if name == "GeventCodedClient":  # gevent monkey-patching concerns: import only when asked for
        from nercc.client.gevent import GeventCodedClient

        return GeventCodedClient
    raise AttributeError(f"module 'nercc.client' has no attribute {name!r}")
