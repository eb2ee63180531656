"""Where things live: the one place for the repository layout and the data directory.

Two layouts: a source checkout (``pip install -e .``: model_repository/, python_backends/, bench/ beside the
package) and an installed wheel (``pip install .``: the committed models and the Triton Python backends are
package data under ``nercc/_shipped/``). ``$NERCC_MODEL_REPOSITORY`` (or ``nercc --model-repository DIR``)
points every command at another model repository.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
#: True when nercc runs from a source checkout (editable install), False from an installed wheel.
IN_CHECKOUT = (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "python_backends").is_dir()
#: What the wheel carries in place of the checkout's folders (written by setup.py's build step).
SHIPPED = _PACKAGE / "_shipped"

#: Root of the source checkout (model_repository/, export/, bench/, loadtest/); from a wheel, the working
#: directory: where commands write their outputs (bench/results, reports/) by default.
REPO_ROOT = _CHECKOUT if IN_CHECKOUT else Path.cwd()
#: The Triton Python backends (worker, preprocess, encoder model.py files).
PYTHON_BACKENDS = (_CHECKOUT if IN_CHECKOUT else SHIPPED) / "python_backends"
#: Models: $NERCC_MODEL_REPOSITORY, else the checkout's model_repository/, else the wheel's copy of it.
MODEL_REPOSITORY = (
    Path(os.environ["NERCC_MODEL_REPOSITORY"]).expanduser().resolve()
    if os.environ.get("NERCC_MODEL_REPOSITORY")
    else (_CHECKOUT if IN_CHECKOUT else SHIPPED) / "model_repository"
)

#: Committed measurements the code reads (the simulator's calibration and accuracy tables): the checkout's
#: bench/results/, else the wheel's copy of those files. Commands write their own results under REPO_ROOT.
COMMITTED_RESULTS = (_CHECKOUT if IN_CHECKOUT else SHIPPED) / "bench" / "results"

#: Model names shipped or produced by `nercc export`.
MODEL_NAMES = ("lenet5", "repvgg_cifar10", "vit_b16", "efficientnet_lite0")


def display_path(path) -> str:
    """``path`` as a result file or a log should name it: relative to the checkout (or the working directory)
    when it lies inside, ``~/...`` under the home folder, else as given. Recorded results then name no folder
    that only the machine which produced them has."""
    text = str(path)
    try:
        given = Path(text).expanduser().absolute()
        candidates = [(given, root) for root in (_CHECKOUT, Path.cwd(), Path.home())]
        candidates += [(given.resolve(), root.resolve()) for root in (_CHECKOUT, Path.cwd(), Path.home())]
    except (OSError, RuntimeError, ValueError):
        return text
    for where, root in candidates:
        try:
            inside = where.relative_to(root)
        except ValueError:
            continue
        return str(Path("~") / inside) if root in (Path.home(), Path.home().resolve()) else str(inside)
    return text


def data_dir() -> Path:
    """The data directory: $NERCC_DATA_DIR, else ../shared/data beside the checkout, else ~/.cache/nercc/data.

    Loaders download missing files into it where the network allows.
    """
    env = os.environ.get("NERCC_DATA_DIR")
    if env:
        return Path(env).expanduser()
    shared = _CHECKOUT.parent / "shared" / "data"
    if IN_CHECKOUT and shared.is_dir():
        return shared
    return Path.home() / ".cache" / "nercc" / "data"


def model_dir(name: str) -> Path:
    """model_repository/<name>: ONNX at 1/model.onnx, metadata in nercc.json, tuning profile in tuning.json."""
    return MODEL_REPOSITORY / name
