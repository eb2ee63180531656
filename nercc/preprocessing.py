"""Raw uint8 images -> the float32 model input described by a model's ``nercc.json`` "preprocess" block.

This is the one preprocessing used everywhere: at training/export time (export/), in the Triton
``<name>_preprocess`` Python backend and in the benchmarks, so accuracy measured through
``preprocess`` + ONNX is the model's accuracy. numpy (and PIL for resizing) only: no torch.

For a raw batch ``r`` of shape ``(B, *raw_shape)`` the steps are, in order:

1. resize (optional, ``"resize": S``): each image's shorter side to ``S`` pixels, bilinear (PIL);
2. center crop (optional, ``"crop": C``): the central ``C x C`` window;
3. scale and normalise per channel: ``x = (r * scale - mean[c]) / std[c]``;
4. layout: HWC images become CHW (``"layout": "NCHW"``); gray images ``(H, W)`` get a channel axis.

A model whose raw input is float32 (``"raw_dtype": "float32"``, ``"preprocess": null``: a model added with
``nercc add-model`` without an image spec) takes its raw input unchanged: preprocessing only checks the shape.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _spec(info: Any) -> Mapping[str, Any]:
    spec = info.get("preprocess") if isinstance(info, Mapping) else getattr(info, "preprocess", None)
    if not isinstance(spec, Mapping):
        raise ValueError("model info has no 'preprocess' block (expected a ModelInfo or the nercc.json dict)")
    return spec


def _field(info: Any, name: str):
    return info.get(name) if isinstance(info, Mapping) else getattr(info, name, None)


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one HWC (or HW) uint8 image so that its shorter side is ``size``, bilinear, aspect kept."""
    from PIL import Image

    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    if h <= w:
        new_h, new_w = size, max(1, int(round(w * size / h)))
    else:
        new_h, new_w = max(1, int(round(h * size / w))), size
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` window of a batch ``(B, H, W, ...)``."""
    h, w = images.shape[1:3]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {size}x{size} from {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top : top + size, left : left + size]


def _float_input(info: Any, raw: np.ndarray) -> np.ndarray:
    """A float32 raw input is the model input itself: check dtype and shape, return it contiguous."""
    input_shape = tuple(_field(info, "input_shape") or ())
    if raw.dtype != np.float32:
        raise ValueError(f"this model's raw input is float32 (shape (B, {', '.join(map(str, input_shape))})), "
                         f"got {raw.dtype}")
    if raw.ndim != len(input_shape) + 1 or tuple(raw.shape[1:]) != input_shape:
        raise ValueError(f"raw inputs must have shape (B, {', '.join(map(str, input_shape))}), got {raw.shape}")
    return np.ascontiguousarray(raw)


def preprocess(info: Any, raw: np.ndarray) -> np.ndarray:
    """Turn raw uint8 images ``(B, *raw_shape)`` into the model input float32 ``(B, *input_shape)``.

    ``info`` is a :class:`nercc.models.ModelInfo` or the nercc.json dict. Images of another size than
    ``raw_shape`` are accepted when the model resizes (``"resize"`` set); otherwise the shape must match.
    Raises ValueError naming the problem for a wrong dtype, rank or shape.
    """
    raw = np.asarray(raw)
    if _field(info, "raw_dtype") == "float32":
        return _float_input(info, raw)
    spec = _spec(info)
    if raw.dtype != np.uint8:
        raise ValueError(f"preprocess expects uint8 raw images, got {raw.dtype}")
    raw_shape = tuple(_field(info, "raw_shape") or ())
    input_shape = tuple(_field(info, "input_shape") or ())
    if raw.ndim != len(raw_shape) + 1:
        raise ValueError(
            f"preprocess expects a batch of shape (B, {', '.join(map(str, raw_shape))}), got {raw.shape}"
        )
    resize, crop = spec.get("resize"), spec.get("crop")
    if resize is None and tuple(raw.shape[1:]) != raw_shape:
        raise ValueError(f"raw images have shape {raw.shape[1:]}, this model expects {raw_shape}")
    if resize is not None:
        resized = [resize_shorter_side(img, int(resize)) for img in raw]
        if crop is None and len({r.shape for r in resized}) != 1:
            raise ValueError("images of different aspect ratios need a 'crop' after 'resize'")
        raw = np.stack([center_crop(r[None], int(crop))[0] for r in resized]) if crop else np.stack(resized)
    elif crop is not None:
        raw = center_crop(raw, int(crop))
    if raw.ndim == 3:  # gray (B, H, W) -> (B, H, W, 1)
        raw = raw[..., None]
    mean = np.asarray(spec.get("mean", [0.0]), dtype=np.float32)
    std = np.asarray(spec.get("std", [1.0]), dtype=np.float32)
    scale = np.float32(spec.get("scale", 1.0))
    # (r*scale - mean)/std == r*(scale/std) - mean/std: one fused multiply-add over the batch.
    gain, bias = scale / std, mean / std
    x = raw.astype(np.float32) * gain - bias
    if spec.get("layout", "NCHW") == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if input_shape and tuple(x.shape[1:]) != input_shape:
        raise ValueError(f"preprocessing produced shape {x.shape[1:]}, the model expects {input_shape}")
    return x
