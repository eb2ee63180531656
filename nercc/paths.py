"""Where things live: the one place for the repository layout and the data directory."""

from __future__ import annotations

import os
from pathlib import Path

#: Root of the source checkout (the folder holding model_repository/, export/, bench/, loadtest/).
REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
PYTHON_BACKENDS = REPO_ROOT / "python_backends"

#: Model names shipped or produced by `nercc export`.
MODEL_NAMES = ("lenet5", "repvgg_cifar10", "vit_b16", "efficientnet_lite0")


def data_dir() -> Path:
    """The data directory: $NERCC_DATA_DIR, else ../shared/data beside the checkout, else ~/.cache/nercc/data.

    Loaders download missing files into it where the network allows.
    """
    env = os.environ.get("NERCC_DATA_DIR")
    if env:
        return Path(env).expanduser()
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "nercc" / "data"


def model_dir(name: str) -> Path:
    """model_repository/<name>: ONNX at 1/model.onnx, metadata in nercc.json, tuning profile in tuning.json."""
    return MODEL_REPOSITORY / name
