"""Serving on Triton: the local cluster launcher, model repositories, straggler profiles, `nercc serve`.

``from nercc.serving import LocalCluster`` starts one master and N worker tritonserver processes on
loopback; see :mod:`nercc.serving.cluster`. The Triton models themselves live in ``python_backends/``.
"""

from nercc.serving.cluster import ClusterError, LocalCluster, PortInUseError, ServerStartError
from nercc.serving.stragglers import StragglerProfile, StragglerSampler, parse_straggler

__all__ = [
    "LocalCluster",
    "ClusterError",
    "ServerStartError",
    "PortInUseError",
    "parse_straggler",
    "StragglerProfile",
    "StragglerSampler",
]
