"""Export a torch ``nn.Module`` (or a timm architecture with a local checkpoint) and add it like `nercc add-model`.

    from nercc.export import export_module
    export_module(net, torch.zeros(1, 3, 32, 32), name="mine", output_kind="logits", calibration="samples.npz")

    nercc export timm:resnet18 --checkpoint resnet18.pth --name my_resnet --image 256,256,3 --resize 224 \\
        --crop 224 --scale 0.0039215686 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --calibration imgs/

The module is exported with the same steps and checks as the built-in models (:mod:`nercc.export.common`:
TorchScript-based ``torch.onnx.export``, input ``input`` with a dynamic batch axis, onnx checker, onnxruntime
against torch within 1e-4 of the output scale), then handed to :func:`nercc.addmodel.add_model`: graph checks,
calibration, tuning, the model folder written atomically. timm models are built with ``pretrained=False`` and
the checkpoint's weights: nothing is downloaded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from nercc.addmodel import AddModelError, add_model, options
from nercc.export import common

#: Output tensor name by output kind (the built-in models' softmax output is ``probs``).
OUTPUT_NAMES = {"probabilities": "probs", "logits": "logits", "regression": "output"}


def export_module(module: nn.Module, example_input: Union[torch.Tensor, np.ndarray], name: str, *,
                  output_kind: str = "logits", repository: Optional[Path] = None, opset: int = common.OPSET,
                  **settings) -> Path:
    """Export ``module`` to ONNX, check it against torch, and add it as model ``name``; returns its folder.

    ``example_input``: one float32 batch ``(B, *input_shape)`` (B >= 1; the batch axis is exported dynamic).
    ``output_kind``: ``logits`` (default: a classifier's last layer), ``probabilities`` or ``regression``.
    Other keyword settings are `nercc add-model`'s (``image``, ``mean``, ``std``, ``scale``, ``resize``,
    ``crop``, ``calibration``, ``workers``, ``inputs``, ``stragglers``, ``force``...; see :data:`nercc.addmodel.DEFAULTS`).
    """
    if not isinstance(module, nn.Module):
        raise AddModelError(f"module must be a torch nn.Module, got {type(module).__name__}")
    example = torch.as_tensor(np.asarray(example_input) if isinstance(example_input, np.ndarray) else example_input)
    if example.dtype != torch.float32 or example.ndim < 2 or example.shape[0] < 1:
        raise AddModelError(f"example_input must be a float32 batch (B, ...) with B >= 1, got {example.dtype} "
                            f"{tuple(example.shape)}")
    if output_kind not in OUTPUT_NAMES:
        raise AddModelError(f"output_kind must be one of {', '.join(OUTPUT_NAMES)}, got {output_kind!r}")
    args = options(Path("model.onnx"), name, output_kind=output_kind, **settings)
    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="nercc-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        common.export_onnx(module, example, path, opset=opset, output_name=OUTPUT_NAMES[output_kind])
        # the same inputs, batched 2 when the example has one row: the batch axis must really be dynamic
        x = example.numpy()
        x = np.concatenate([x, x[:1] * 0.5]) if len(x) == 1 else x
        common.check_ort_matches_torch(module, path, np.ascontiguousarray(x), output_name=OUTPUT_NAMES[output_kind],
                                       relative=output_kind != "probabilities")
        args.onnx = path
        return add_model(args, repository=repository)


def load_timm(arch: str, checkpoint: Path) -> nn.Module:
    """timm's ``arch`` with ``pretrained=False`` and the weights of ``checkpoint`` (a state_dict, or a dict holding
    one under ``state_dict`` / ``model``); the head size follows the checkpoint."""
    try:
        import timm
    except ImportError as exc:
        raise AddModelError("timm:ARCH needs the timm package (pip install 'nercc[export]')") from exc
    if arch not in timm.list_models():
        raise AddModelError(f"timm:{arch}: not a timm architecture (see timm.list_models())")
    if checkpoint is None:
        raise AddModelError(f"timm:{arch} needs --checkpoint FILE (weights; nothing is downloaded)")
    if not Path(checkpoint).is_file():
        raise AddModelError(f"--checkpoint {checkpoint}: no such file")
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not state:
        raise AddModelError(f"--checkpoint {checkpoint}: expected a state_dict (parameter name -> tensor)")
    net = timm.create_model(arch, pretrained=False)
    # the checkpoint's head may have another number of classes than ImageNet's 1000
    head = (getattr(net, "pretrained_cfg", None) or {}).get("classifier")
    head_weight = state.get(f"{head}.weight") if isinstance(head, str) else None
    if head_weight is not None and head_weight.ndim == 2 and head_weight.shape[0] != net.num_classes:
        net = timm.create_model(arch, pretrained=False, num_classes=int(head_weight.shape[0]))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AddModelError(f"--checkpoint {checkpoint} does not fit timm:{arch}: missing {list(missing)[:5]}, "
                            f"unexpected {list(unexpected)[:5]}")
    return net.eval()


def example_for(net: nn.Module, arch: str, image: Optional[str], crop: Optional[int]) -> torch.Tensor:
    """A float32 example batch: the model's default input size (timm's pretrained_cfg), else the crop size."""
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    size = cfg.get("input_size")
    if crop is not None and size:
        size = (size[0], crop, crop)
    elif size is None and image is not None:
        h, w, *c = (int(v) for v in image.split(","))
        size = (c[0] if c else 1, crop or h, crop or w)
    if size is None:
        raise AddModelError(f"timm:{arch}: cannot tell the input size; give --image H,W,C (and --crop)")
    return torch.zeros((1, *size), dtype=torch.float32)
