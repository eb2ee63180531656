"""Helpers shared by the Triton Python-backend models in ``python_backends/`` (used inside the stub only).

Kept out of the model files so that encoder, preprocess and worker read their configs and report errors the
same way. ``triton_python_backend_utils`` exists only inside Triton's Python stub, so it is imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

#: Environment variables that override a worker's config parameters (the launcher sets them per server).
WORKER_ENV = {"worker_index": "NERCC_WORKER_INDEX", "straggler": "NERCC_STRAGGLER", "seed": "NERCC_SEED",
              "device": "NERCC_DEVICE", "fault": "NERCC_FAULT"}


def config_param(config: dict, key: str, default=None):
    """A ``parameters { key: ... value: { string_value: ... } }`` entry of a model config, else ``default``."""
    entry = config.get("parameters", {}).get(key)
    if entry is None:
        return default
    return entry.get("string_value", default)


def triton_error(message: str, code: str = "INVALID_ARG"):
    """A ``pb_utils.TritonError`` with ``code`` where this Triton version has error codes (2.40+)."""
    import triton_python_backend_utils as pb_utils

    code_value = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message, code_value) if code_value is not None else pb_utils.TritonError(message)


def nercc_model_dir(config: dict, args: dict) -> Path:
    """The model's folder (nercc.json, tuning.json) for a master model ``<name>_preprocess|_encoder``.

    ``nercc_model_dir`` in the config, relative to this model's folder or absolute; by default the sibling
    folder ``<name>`` of the repository the model is loaded from.
    """
    folder = Path(args["model_repository"])
    default = str(folder.parent / args["model_name"].rsplit("_", 1)[0])
    model_dir = Path(config_param(config, "nercc_model_dir", default))
    return model_dir if model_dir.is_absolute() else (folder / model_dir).resolve()


def worker_setting(config: dict, key: str, default=None, environ=None):
    """A per-worker setting: ``$NERCC_<KEY>`` when set (one repository serves every worker), else the config's."""
    environ = os.environ if environ is None else environ
    value = environ.get(WORKER_ENV[key], "")
    return value if value != "" else config_param(config, key, default)


def onnxruntime_providers(device: str, available: Sequence[str]) -> list:
    """onnxruntime execution providers for ``device`` (auto | cpu | cuda) given ``ort.get_available_providers()``.

    auto takes CUDA when this onnxruntime build has it (the ``gpu`` extra's onnxruntime-gpu), else the CPU;
    cuda insists and fails with the reason when it is missing, rather than running silently on the CPU.
    """
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise RuntimeError("device=cuda but this onnxruntime has no CUDAExecutionProvider (available: "
                           f"{', '.join(available)}); install the gpu extra: pip install 'nercc[gpu]' after "
                           "removing onnxruntime (docs/deploy.md)")
    if device != "cpu" and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
