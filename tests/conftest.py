"""Shared pytest setup and the helpers several test modules use (``from conftest import free_port``, as the
modules import ``netlab`` and ``tlsca``). Fixtures that start servers live in the test modules that need them."""

from __future__ import annotations

import socket

import numpy as np
import pytest


def require_tritonserver_and_model(model: str) -> None:
    """Skip the calling test module unless a tritonserver binary is found and ``model`` is exported."""
    from nercc.models import load_model_info
    from nercc.serving import ClusterError
    from nercc.serving.cluster import find_tritonserver

    try:
        find_tritonserver()
    except ClusterError as exc:  # pragma: no cover - a machine without the serve extra
        pytest.skip(str(exc), allow_module_level=True)
    if not load_model_info(model).onnx_path.exists():
        pytest.skip(f"{model} not exported", allow_module_level=True)


def assert_cluster_gone(cluster) -> None:
    """After a LocalCluster stopped: none of its servers or stubs still runs, no shared-memory region is left."""
    from nercc.serving.cluster import leftover_shm, running_processes

    assert running_processes(cluster.pids()) == [], "servers or stubs left after stop()"
    assert leftover_shm(cluster.shm_prefix) == [], "shared-memory regions left after stop()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mse(pred: np.ndarray, ref: np.ndarray) -> float:
    """DESIGN.md's MSE: mean over inputs of the squared L2 distance between probability vectors."""
    return float(((pred - ref) ** 2).sum(axis=1).mean())
