"""Serving on Triton: the local cluster launcher, model repositories, straggler profiles, `nercc serve`.

``from nercc.serving import LocalCluster`` starts one master and N worker tritonserver processes on
loopback; see :mod:`nercc.serving.cluster`. The Triton models themselves live in ``python_backends/``.

The names below load on first use: the Python backends import ``nercc.serving.backend_utils`` inside every
Triton stub, and must not pull in the cluster launcher (and its exit hook) with it.
"""

import importlib

_LAZY = {
    "LocalCluster": "nercc.serving.cluster",
    "ClusterError": "nercc.serving.cluster",
    "ServerStartError": "nercc.serving.cluster",
    "PortInUseError": "nercc.serving.cluster",
    "parse_straggler": "nercc.serving.stragglers",
    "StragglerProfile": "nercc.serving.stragglers",
    "StragglerSampler": "nercc.serving.stragglers",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nercc.serving' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
