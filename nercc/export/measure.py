"""Measure each exported model: accuracy, ONNX size, onnxruntime CPU time per input at batch 1 and 8.

Times are the fastest of ``repeats`` runs (after a warm-up) divided by the batch size: on a shared machine the
minimum is the least disturbed estimate of what the model costs. ``threads=1`` is one intra-op thread (as each
Triton worker uses); ``default`` is onnxruntime's default (one thread per core).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import numpy as np

from nercc.data import load_model_data
from nercc.models import OnnxModel, list_models, load_model_info
from nercc.preprocessing import preprocess


def time_per_input_ms(model: OnnxModel, x: np.ndarray, batch: int, repeats: int) -> float:
    xb = np.ascontiguousarray(np.resize(x, (batch,) + x.shape[1:]))
    model(xb)  # warm-up: first run allocates and picks kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(xb)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3 / batch


def measure(name: str, repeats: Optional[int] = None) -> Dict[str, object]:
    info = load_model_info(name)
    raw, labels = load_model_data(info, "test")
    n_eval = min(len(labels), 10000)
    x = preprocess(info, raw[:8])
    heavy = info.input_dim * (info.params or 0) > 1e10  # ViT-B / EfficientNet: fewer repeats
    repeats = repeats or (5 if heavy else 30)
    row: Dict[str, object] = {"model": name, "trained": info.trained, "params": info.params,
                              "onnx_MB": round(info.onnx_path.stat().st_size / 1e6, 2)}
    for threads, label in ((1, "1"), (0, "default")):
        model = OnnxModel(info, threads=threads)
        for batch in (1, 8):
            row[f"ms_b{batch}_t{label}"] = round(time_per_input_ms(model, x, batch, repeats), 3)
    model = OnnxModel(info, threads=0)
    correct = 0
    for i in range(0, n_eval, 500):
        correct += int(np.sum(model(preprocess(info, raw[i : min(i + 500, n_eval)])).argmax(1) == labels[i : i + 500]))
    row["top1"] = round(correct / n_eval, 4)
    row["n_eval"] = n_eval
    row["train_seconds"] = info.extra.get("train_seconds")
    return row


def markdown(rows: List[Dict[str, object]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(names: Optional[List[str]] = None) -> List[Dict[str, object]]:
    rows = []
    for name in names or list_models():
        if not load_model_info(name).onnx_path.exists():
            print(f"{name}: no ONNX, skipped (nercc export {name})")
            continue
        rows.append(measure(name))
        print(rows[-1], flush=True)
    print(f"\nload average at the end: {os.getloadavg()}")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:] or None)
