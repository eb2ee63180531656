"""ViT-B/16 (timm ``vit_base_patch16_224``) on ImageNet, exported to ONNX.

Weights, in order of preference:
1. ``--checkpoint PATH``: a timm/PyTorch state_dict for ``vit_base_patch16_224``;
2. timm's pretrained weights (``timm.create_model(..., pretrained=True)``, downloaded from the Hugging Face
   hub) when the network allows; skipped when ``NERCC_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``;
3. otherwise a seeded random initialisation. Then nercc.json says ``"trained": false`` and every printed
   line and report calls the model UNTRAINED: its predictions are meaningless, only its shape and cost
   (86M parameters, 150528-dim input, 1000-dim output) are real.

Preprocessing follows timm's data config for this model (mean = std = 0.5 per channel, crop_pct 0.9, so
resize 248 then center crop 224), with bilinear instead of bicubic resizing (nercc.preprocessing is bilinear).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from nercc.data import load_imagenet_samples
from nercc.export import common
from nercc.preprocessing import preprocess

NAME = "vit_b16"
ARCH = "vit_base_patch16_224"


def metadata(arch: str = ARCH, name: str = NAME) -> dict:
    """nercc.json fields fixed by the architecture (preprocessing from timm's pretrained config)."""
    import timm
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=timm.create_model(arch, pretrained=False))
    size = int(config["input_size"][-1])
    return {
        "name": name, "dataset": "imagenet", "n_classes": 1000,
        "input_name": "input", "input_shape": list(config["input_size"]), "input_dtype": "float32",
        "output_name": "probs", "raw_shape": [512, 512, 3], "raw_dtype": "uint8",
        # resize = floor(size / crop_pct), as timm's eval transform computes it (248 for 224 at 0.9)
        "preprocess": {"scale": 1.0 / 255.0, "mean": list(config["mean"]), "std": list(config["std"]),
                       "layout": "NCHW", "resize": int(math.floor(size / config["crop_pct"])), "crop": size},
    }


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes") for k in ("NERCC_OFFLINE", "HF_HUB_OFFLINE"))


def build(arch: str = ARCH, seed: int = 0, checkpoint: Optional[Path] = None,
          try_pretrained: bool = True) -> Tuple[torch.nn.Module, bool, str]:
    """(model in eval mode, trained?, description of the weights)."""
    import timm

    if checkpoint is not None:
        model = timm.create_model(arch, pretrained=False)
        state = torch.load(checkpoint, map_location="cpu")
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        model.load_state_dict(state)
        return model.eval(), True, f"{arch} weights from checkpoint {Path(checkpoint).name}"
    if try_pretrained and not _offline():
        try:
            model = timm.create_model(arch, pretrained=True)
            tag = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("tag") or "timm default"
            return model.eval(), True, f"timm pretrained ImageNet weights ({tag})"
        except Exception as exc:  # no network, hub error: fall back to the labelled random init
            print(f"{arch}: pretrained weights could not be loaded ({type(exc).__name__}: {str(exc)[:160]}); "
                  f"using a seeded random initialisation (UNTRAINED)")
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    return model.eval(), False, f"UNTRAINED: seeded random initialisation (seed {seed}), no pretrained weights loaded"


def export_model(model: torch.nn.Module, meta: dict, path: Path, verify_inputs: np.ndarray) -> Tuple[int, float]:
    """Export a timm classifier with a softmax head to ``path``; returns (bytes, ORT vs torch max abs diff)."""
    wrapped = common.WithSoftmax(model).eval()
    size = common.export_onnx(wrapped, torch.from_numpy(verify_inputs[:2]), path)
    diff = common.check_ort_matches_torch(wrapped, path, verify_inputs)
    return size, diff


def export(seed: int = 0, out: Optional[Path] = None, checkpoint: Optional[Path] = None) -> dict:
    model, trained, weights = build(seed=seed, checkpoint=checkpoint)
    label = "" if trained else " [UNTRAINED]"
    meta = metadata()
    raw, labels = load_imagenet_samples()
    x = preprocess(meta, raw)
    path = common.onnx_path(NAME, out)
    print(f"vit_b16{label}: exporting {common.count_params(model):,} parameters to {path} ...", flush=True)
    size, diff = export_model(model, meta, path, x[:4])
    (probs,) = common.ort_session(path).run(["probs"], {"input": x})
    correct = int(np.sum(probs.argmax(1) == labels))
    meta.update({
        "accuracy": {"top1": round(correct / len(labels), 4), "split": "imagenet-samples", "n": int(len(labels))},
        "trained": trained, "weights": weights, "params": common.count_params(model), "onnx_bytes": size,
        "opset": common.OPSET, "train_seconds": None, "ort_max_abs_diff": diff,
    })
    meta_path = common.write_metadata(NAME, meta, out)
    print(f"vit_b16{label}: {path} ({size} bytes), ORT vs torch max abs diff {diff:.2e}, top-1 {correct}/"
          f"{len(labels)} on the ImageNet samples{' (meaningless: untrained weights)' if not trained else ''}; "
          f"metadata {meta_path}")
    return meta
