"""Shared export steps: softmax head, ONNX export with a dynamic batch axis, ORT-vs-torch check, metadata.

torch and onnx are imported here, so this module is imported only by the export commands.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from nercc.paths import model_dir

OPSET = 17
#: Largest allowed max abs difference between onnxruntime and torch probabilities on real inputs.
ORT_TOLERANCE = 1e-4


class WithSoftmax(nn.Module):
    """Wrap a logits network so that the exported graph returns softmax probabilities (the paper's f)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=-1)


def set_threads(threads: Optional[int]) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def onnx_path(name: str, out: Optional[Path] = None) -> Path:
    root = Path(out) / name if out is not None else model_dir(name)
    return root / "1" / "model.onnx"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = OPSET,
                output_name: str = "probs") -> int:
    """Export ``model`` (the built-in models: already returning probabilities, in eval mode) to ``path``; returns
    the file size.

    Input ``input`` / output ``output_name`` (``probs``), batch axis dynamic. The file is written to a temporary name and
    moved into place, so a reader (a running Triton) never sees a half-written model.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings flag Python-side shape asserts (fixed 224x224 input in timm); the legacy exporter's
        # deprecation notice is known. The ORT-vs-torch check after export is what guards correctness.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        # The TorchScript-based exporter: deterministic single-file output with dynamic_axes, no onnxscript.
        torch.onnx.export(
            model, (example,), str(tmp), input_names=["input"], output_names=[output_name],
            dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}}, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size


def ort_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def check_ort_matches_torch(model: nn.Module, path: Path, x: np.ndarray, tolerance: float = ORT_TOLERANCE,
                            output_name: str = "probs", relative: bool = False) -> float:
    """Max abs difference between torch and onnxruntime outputs on ``x``; raise when over ``tolerance`` (times
    the largest output magnitude, at least 1, when ``relative``: logits and regression outputs are not in [0, 1])."""
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort_session(path)
    (got,) = session.run([output_name], {"input": x})
    diff = float(np.max(np.abs(got - expected)))
    if relative:
        tolerance = tolerance * max(1.0, float(np.max(np.abs(expected))))
    if not diff <= tolerance:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {diff:.3g} > {tolerance:g}")
    return diff


def ort_accuracy(path: Path, x: np.ndarray, labels: np.ndarray, batch: int = 500, progress: str = "") -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on preprocessed inputs ``x``."""
    from nercc.progress import progress_bar

    session = ort_session(path)
    correct = 0
    for start in progress_bar(range(0, len(x), batch), desc=progress or "onnx accuracy", unit="batch", leave=False):
        (probs,) = session.run(["probs"], {"input": x[start : start + batch]})
        correct += int(np.sum(probs.argmax(1) == labels[start : start + batch]))
    return correct / len(x)


def time_per_input(path: Path, x: np.ndarray, batch: int, threads: int, repeats: int = 20) -> float:
    """Median onnxruntime wall time per input in milliseconds at a given batch size and thread count."""
    session = ort_session(path, threads=threads)
    xb = np.ascontiguousarray(np.resize(x, (batch,) + x.shape[1:]))
    session.run(["probs"], {"input": xb})  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(["probs"], {"input": xb})
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3 / batch


#: nercc.json fields that are measurements of one export run (they differ run to run by float noise), not
#: properties of the model: a re-export that changes only these leaves a committed nercc.json as it is.
MEASURED_FIELDS = ("ort_max_abs_diff", "reparam_max_abs_diff", "train_seconds")


def _without_measured(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in meta.items() if key not in MEASURED_FIELDS}


def write_metadata(name: str, meta: Dict[str, Any], out: Optional[Path] = None) -> Path:
    """Write ``<model folder>/nercc.json`` with the model identity (``onnx_sha256`` of the exported ONNX) and
    the output kind, unless the file there already says the same apart from :data:`MEASURED_FIELDS` (then it is
    left untouched, so that re-running the setup's export does not dirty a tracked file; the export prints this
    run's measurements). An ONNX file that hashes differently is a new model identity: the file is rewritten."""
    from nercc.models import file_sha256

    model_file = onnx_path(name, out)
    meta = dict(meta)
    meta.setdefault("output_kind", "probabilities")
    if model_file.exists():
        meta["onnx_sha256"] = file_sha256(model_file)
    path = model_file.parent.parent / "nercc.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=2) + "\n"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None  # unreadable: rewrite it
        if isinstance(old, dict) and _without_measured(old) == json.loads(json.dumps(_without_measured(meta))):
            return path
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
