"""Helpers shared by the Triton Python-backend models in ``python_backends/`` (used inside the stub only).

Kept out of the model files so that encoder, preprocess and worker read their configs and report errors the
same way. ``triton_python_backend_utils`` exists only inside Triton's Python stub, so it is imported lazily.
"""

from __future__ import annotations

from pathlib import Path


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
