"""`nercc add-model PATH.onnx --name X`: serve your own ONNX model with coded computing.

  nercc add-model my_model.onnx --name mine --output-kind logits --calibration samples.npz
  nercc demo --model mine
  nercc serve --model mine

It reads the graph (input and output names, shapes and dtypes), checks what a nercc worker needs (one float32
input with a dynamic batch axis, one output of shape [batch, D]), runs the model in onnxruntime on the
calibration inputs, tunes NeRCC's (lam_enc, lam_dec) for them (lam_dec per number of answers |F|), prints an
accuracy table, and writes ``<model repository>/X/``: ``1/model.onnx``, ``nercc.json`` (with the ONNX sha256:
the model identity every worker is checked against), ``config.pbtxt``, ``tuning.json`` and ``calibration.npz``
(the inputs and labels that `nercc demo / loadtest / bench accuracy` use for a model of your own).

Raw input: by default the model's own float32 input (a client sends float32 ``(K, *input_shape)``); with
``--image H,W,C`` the raw input is a uint8 HWC image (``H,W`` for gray) preprocessed as
``(raw * scale - mean) / std`` after an optional shorter-side ``--resize`` and center ``--crop``
(:mod:`nercc.preprocessing`, the same code the built-in models use).

``--calibration``: a ``.npy`` (raw inputs), a ``.npz`` (``x`` raw inputs, optional ``y`` integer labels) or a
folder of images (``*.jpg``/``*.png``; a name ending in ``_<label>`` gives the label), each brought to the
``--image`` size by a shorter-side resize and a center crop. Nothing is written until every check passed: the
folder is built under a temporary name and renamed at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nercc.models import OUTPUT_KINDS

#: Model names: what Triton and a file system accept, and no suffix the master's own models use.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
RESERVED_SUFFIXES = ("_encode", "_encoder", "_preprocess", "_coded", "_pipeline")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
#: Inputs the onnxruntime check runs (the first ones of the calibration set, or random ones without it).
CHECK_INPUTS = 64
#: Largest sum-to-one error of a row that still counts as a probability vector.
PROBABILITY_TOLERANCE = 1e-3


class AddModelError(ValueError):
    """A bad model file or flag: the message names the problem."""


@dataclass(frozen=True)
class Signature:
    """What the ONNX graph declares: one float input with a dynamic batch axis, one [batch, D] output."""

    input_name: str
    input_shape: Tuple[int, ...]  # without the batch axis
    output_name: str
    output_dim: int
    opset: Optional[int]
    params: int


_ELEM_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:  # the export extra has it; serving alone does not need it
        raise AddModelError("nercc add-model reads the ONNX graph with the `onnx` package: "
                            "pip install 'nercc[export]' (or pip install onnx)") from exc
    return onnx


def _dims(value_info) -> List[Any]:
    """Dims of a graph input/output: ints for fixed sizes, the symbol (str) or None for dynamic ones."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    out = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def inspect_onnx(path: Path) -> Signature:
    """Read and check the graph: raises :class:`AddModelError` naming the problem."""
    onnx = _import_onnx()
    path = Path(path)
    if not path.is_file():
        raise AddModelError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others for a non-ONNX file
        raise AddModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    if not graph.node or not graph.output:
        raise AddModelError(f"{path}: not an ONNX model (no graph nodes or outputs)")
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise AddModelError(f"{path}: the model has {len(inputs)} inputs ({names}); nercc codes one input tensor "
                            "per request: export a model with exactly one float32 input")
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        kind = _ELEM_NAMES.get(elem, f"type {elem}")
        what = "an integer" if "int" in kind else "a"
        raise AddModelError(f"{path}: input {inp.name!r} is {what} {kind} tensor; coded inputs are linear "
                            "combinations of inputs, so the model must take float32 (embed integer ids first, or "
                            "cast inside the graph)")
    dims = _dims(inp)
    if len(dims) < 2:
        raise AddModelError(f"{path}: input {inp.name!r} has shape {dims}; expected [batch, ...] with at least one "
                            "axis after the batch axis")
    if isinstance(dims[0], int):
        raise AddModelError(f"{path}: input {inp.name!r} has shape {dims}: no dynamic batch axis (the first axis "
                            f"is fixed to {dims[0]}); export with a dynamic first axis (torch.onnx.export "
                            "dynamic_axes={'<input>': {0: 'batch'}})")
    if not all(isinstance(d, int) for d in dims[1:]):
        raise AddModelError(f"{path}: input {inp.name!r} has shape {dims}: only the batch axis may be dynamic")
    if len(graph.output) != 1:
        raise AddModelError(f"{path}: the model has {len(graph.output)} outputs "
                            f"({', '.join(repr(o.name) for o in graph.output)}); expected one [batch, D] output")
    out = graph.output[0]
    if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = _ELEM_NAMES.get(out.type.tensor_type.elem_type, "?")
        raise AddModelError(f"{path}: output {out.name!r} is {kind}; expected float32 [batch, D]")
    odims = _dims(out)
    if len(odims) != 2 or isinstance(odims[0], int) and odims[0] != 1 or not isinstance(odims[1], int):
        raise AddModelError(f"{path}: output {out.name!r} has shape {odims or 'unknown'}; expected [batch, D] "
                            "with a dynamic batch axis and a fixed D (flatten or pool the output in the graph)")
    if isinstance(odims[0], int):
        raise AddModelError(f"{path}: output {out.name!r} has shape {odims}: no dynamic batch axis")
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    params = int(sum(int(np.prod(t.dims)) for t in graph.initializer))
    return Signature(inp.name, tuple(int(d) for d in dims[1:]), out.name, int(odims[1]), opset, params)


# ------------------------------------------------------------------------------------------------ image spec
def _numbers(text: str, flag: str, integer: bool = False) -> List[float]:
    try:
        values = [int(v) if integer else float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        kind = "integers" if integer else "numbers"
        raise AddModelError(f"{flag}: expected comma-separated {kind}, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise AddModelError(f"{flag}: expected finite comma-separated numbers, got {text!r}")
    return values


def image_spec(signature: Signature, image: Optional[str], mean: Optional[str], std: Optional[str],
               scale: float, resize: Optional[int], crop: Optional[int], layout: Optional[str]) -> Tuple[
                   Tuple[int, ...], str, Optional[dict]]:
    """(raw_shape, raw_dtype, preprocess block) from the flags; the spec is checked against the model input."""
    image_flags = {"--mean": mean, "--std": std, "--resize": resize, "--crop": crop, "--layout": layout}
    if image is None:
        given = [k for k, v in image_flags.items() if v is not None]
        if given:
            raise AddModelError(f"{', '.join(given)} describe image preprocessing: give --image H,W,C too")
        return tuple(signature.input_shape), "float32", None
    raw_shape = tuple(int(v) for v in _numbers(image, "--image", integer=True))
    if len(raw_shape) not in (2, 3) or min(raw_shape) < 1 or (len(raw_shape) == 3 and raw_shape[2] not in (1, 3, 4)):
        raise AddModelError(f"--image must be H,W (gray) or H,W,C with C in 1, 3, 4, got {image!r}")
    channels = raw_shape[2] if len(raw_shape) == 3 else 1
    if not (scale > 0 and math.isfinite(scale)):
        raise AddModelError(f"--scale must be a finite number > 0, got {scale}")
    means = _numbers(mean, "--mean") if mean is not None else [0.0]
    stds = _numbers(std, "--std") if std is not None else [1.0]
    for flag, values in (("--mean", means), ("--std", stds)):
        if len(values) not in (1, channels):
            raise AddModelError(f"{flag}: give 1 or {channels} values (one per channel), got {len(values)}")
    if any(s <= 0 for s in stds):
        raise AddModelError(f"--std values must be > 0, got {stds}")
    for flag, value in (("--resize", resize), ("--crop", crop)):
        if value is not None and value < 1:
            raise AddModelError(f"{flag} must be >= 1 pixels, got {value}")
    if layout is None:  # the model's input tells: channels first or last
        shape = signature.input_shape
        layout = "NHWC" if len(shape) == 3 and shape[-1] == channels and shape[0] != channels else "NCHW"
    if layout not in ("NCHW", "NHWC"):
        raise AddModelError(f"--layout must be NCHW or NHWC, got {layout!r}")
    spec = {"scale": float(scale), "mean": means, "std": stds, "layout": layout,
            "resize": None if resize is None else int(resize), "crop": None if crop is None else int(crop)}
    from nercc.preprocessing import preprocess

    info = {"raw_shape": list(raw_shape), "input_shape": list(signature.input_shape), "preprocess": spec,
            "raw_dtype": "uint8"}
    try:
        preprocess(info, np.zeros((1, *raw_shape), dtype=np.uint8))
    except ValueError as exc:
        raise AddModelError(f"--image {image} with --resize {resize} --crop {crop} --layout {layout} does not give "
                            f"the model's input shape {list(signature.input_shape)}: {exc}") from None
    return raw_shape, "uint8", spec


# ------------------------------------------------------------------------------------------------ calibration
def fit_image(img, height: int, width: int) -> np.ndarray:
    """A PIL image resized (bilinear) to cover ``height x width`` and center-cropped to it, as uint8."""
    from PIL import Image

    w, h = img.size
    if (w, h) != (width, height):
        scale = max(width / w, height / h)
        w, h = max(width, round(w * scale)), max(height, round(h * scale))
        img = img.resize((w, h), Image.BILINEAR)
        left, top = (w - width) // 2, (h - height) // 2
        img = img.crop((left, top, left + width, top + height))
    return np.asarray(img, dtype=np.uint8)


def _label_of(stem: str) -> Optional[int]:
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if len(stem.rsplit("_", 1)) == 2 and tail.isdigit() else None


def read_image_folder(folder: Path, raw_shape: Tuple[int, ...]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise AddModelError(f"--calibration {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    mode = "L" if len(raw_shape) == 2 or raw_shape[2] == 1 else ("RGBA" if raw_shape[2] == 4 else "RGB")
    images, labels = [], []
    for path in files:
        try:
            with Image.open(path) as img:
                array = fit_image(img.convert(mode), raw_shape[0], raw_shape[1])
        except OSError as exc:
            raise AddModelError(f"--calibration {folder}: cannot read {path.name} as an image ({exc})") from None
        images.append(array.reshape(raw_shape))
        labels.append(_label_of(path.stem))
    y = np.asarray(labels, dtype=np.int64) if all(v is not None for v in labels) else None
    return np.stack(images), y


def read_calibration(source: Path, raw_shape: Tuple[int, ...], raw_dtype: str, resizes: bool) -> Tuple[
        np.ndarray, Optional[np.ndarray]]:
    """(raw inputs, labels or None) from a .npy, .npz or image folder, checked against the raw input format."""
    source = Path(source)
    if source.is_dir():
        if raw_dtype != "uint8":
            raise AddModelError(f"--calibration {source} is an image folder: give the image spec (--image H,W,C ...)")
        return read_image_folder(source, raw_shape)
    if not source.is_file():
        raise AddModelError(f"--calibration {source}: no such file or folder")
    y = None
    try:
        if source.suffix == ".npz":
            with np.load(source, allow_pickle=False) as npz:
                key = "x" if "x" in npz.files else (npz.files[0] if len(npz.files) == 1 else None)
                if key is None:
                    raise AddModelError(f"--calibration {source}: an .npz needs an array 'x' (raw inputs), "
                                        f"optional 'y' (labels); it has {npz.files}")
                x = npz[key]
                y = npz["y"] if "y" in npz.files else None
        elif source.suffix == ".npy":
            x = np.load(source, allow_pickle=False)
        else:
            raise AddModelError(f"--calibration {source}: expected a .npy or .npz file or an image folder")
    except (OSError, ValueError) as exc:
        if isinstance(exc, AddModelError):
            raise
        raise AddModelError(f"--calibration {source}: cannot read it ({exc})") from None
    x = np.asarray(x)
    if raw_dtype == "uint8":
        if x.dtype != np.uint8:
            raise AddModelError(f"--calibration {source}: images must be uint8 (raw pixels), got {x.dtype}")
    else:
        if x.dtype.kind != "f":
            raise AddModelError(f"--calibration {source}: inputs must be floating point (the model's float32 "
                                f"input), got {x.dtype}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise AddModelError(f"--calibration {source}: inputs contain NaN or inf")
    ok = x.ndim == len(raw_shape) + 1 and (tuple(x.shape[1:]) == tuple(raw_shape) or (
        resizes and x.shape[-1:] == tuple(raw_shape[-1:])))
    if not ok:
        raise AddModelError(f"--calibration {source}: inputs have shape {x.shape}, expected (n, "
                            f"{', '.join(map(str, raw_shape))})")
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise AddModelError(f"--calibration {source}: 'y' must hold one integer label per input, got "
                                f"{y.dtype} {y.shape}")
    return np.ascontiguousarray(x), (None if y is None else y.astype(np.int64))


# ------------------------------------------------------------------------------------------------ checks
def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise AddModelError(f"{path}: onnxruntime cannot load the model ({exc})") from None


def ort_check(path: Path, signature: Signature, x: np.ndarray) -> np.ndarray:
    """Run the model on ``x`` (float32 model inputs) in onnxruntime: batch 1, batch 2 and all of ``x`` must give
    finite [batch, D] outputs that agree row by row. Returns the outputs on ``x``."""
    session = _session(path)

    def run(batch):
        try:
            (y,) = session.run([signature.output_name], {signature.input_name: np.ascontiguousarray(batch)})
        except Exception as exc:  # noqa: BLE001
            raise AddModelError(f"{path}: onnxruntime failed on a batch of {len(batch)} ({exc})") from None
        if y.shape != (len(batch), signature.output_dim):
            raise AddModelError(f"{path}: output {signature.output_name!r} came out {y.shape} for a batch of "
                                f"{len(batch)}, expected ({len(batch)}, {signature.output_dim})")
        return np.asarray(y, dtype=np.float32)

    y = run(x)
    if not np.isfinite(y).all():
        raise AddModelError(f"{path}: the model's outputs on the calibration inputs contain NaN or inf")
    one = run(x[:1])
    two = run(x[:2]) if len(x) >= 2 else one
    scale = max(1.0, float(np.abs(y).max()))
    diff = max(float(np.abs(one - y[:1]).max()), float(np.abs(two - y[:len(two)]).max()))
    if diff > 1e-3 * scale:
        raise AddModelError(f"{path}: outputs depend on the batch size (batch 1 vs {len(x)} differ by {diff:.3g}); "
                            "the batch axis must be a real batch axis")
    return y


def looks_like_probabilities(y: np.ndarray) -> bool:
    return bool(y.size and y.min() >= -PROBABILITY_TOLERANCE and y.max() <= 1 + PROBABILITY_TOLERANCE
                and np.abs(y.sum(axis=1) - 1).max() <= PROBABILITY_TOLERANCE * y.shape[1])


def resolve_output_kind(kind: Optional[str], y: np.ndarray, calibrated: bool) -> str:
    """The output kind: given (checked against the outputs for probabilities), or inferred from the outputs."""
    if kind is not None:
        if kind not in OUTPUT_KINDS:
            raise AddModelError(f"--output-kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
        if kind == "probabilities" and not looks_like_probabilities(y):
            raise AddModelError(f"--output-kind probabilities, but the outputs are not probability vectors (values in "
                                f"[{y.min():.3g}, {y.max():.3g}], row sums up to {np.abs(y.sum(1) - 1).max() + 1:.3g}):"
                                " use --output-kind logits (class scores) or regression")
        return kind
    if not calibrated:
        raise AddModelError("--output-kind is needed without --calibration (probabilities, logits or regression)")
    return "probabilities" if looks_like_probabilities(y) else "logits"


# ------------------------------------------------------------------------------------------------ the command
def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("onnx", type=Path, metavar="PATH.onnx", help="the model: one float32 input [batch, ...], "
                        "one output [batch, D]")
    parser.add_argument("--name", required=True, help="model name to serve it under (letters, digits, _ and -)")
    add_options(parser)


def add_options(parser: argparse.ArgumentParser, output_kind_default: Optional[str] = None,
                seed_and_threads: bool = True) -> None:
    """The options `nercc add-model` and `nercc export timm:ARCH` share (output kind, image spec, calibration)."""
    parser.add_argument("--output-kind", choices=OUTPUT_KINDS, default=None,
                        help="what the output is: probabilities (answers checked in [0, 1]), logits (class "
                             "scores) or regression; RelAcc only for the first two. Default: probabilities when "
                             "the calibration outputs are probability vectors, else logits")
    if output_kind_default is not None:
        parser.set_defaults(output_kind=output_kind_default)
    image = parser.add_argument_group("image input (raw uint8 images preprocessed on the master)")
    image.add_argument("--image", default=None, metavar="H,W[,C]", help="raw image size (HWC uint8)")
    image.add_argument("--mean", default=None, help="per-channel mean, after --scale (e.g. 0.485,0.456,0.406)")
    image.add_argument("--std", default=None, help="per-channel std, after --scale (e.g. 0.229,0.224,0.225)")
    image.add_argument("--scale", type=float, default=1.0, help="pixel scale before mean/std (1/255 = 0.0039215686)")
    image.add_argument("--resize", type=int, default=None, help="resize each image's shorter side to this first")
    image.add_argument("--crop", type=int, default=None, help="then keep the central CROP x CROP window")
    image.add_argument("--layout", default=None, choices=("NCHW", "NHWC"),
                       help="model input layout (default: from the model's input shape)")
    calib = parser.add_argument_group("calibration and tuning")
    calib.add_argument("--calibration", type=Path, default=None, metavar="FILE.npy|FILE.npz|FOLDER",
                       help="sample raw inputs (npz: 'x', optional labels 'y'; folder: images named *_<label>.jpg)")
    calib.add_argument("--workers", "-N", type=int, default=12, help="N to tune for (the demo's default 12)")
    calib.add_argument("--inputs", "-K", type=int, default=4, help="K to tune for (the demo's default 4)")
    calib.add_argument("--stragglers", "-S", default=None,
                       help="straggler counts to tune for, '0,2,4' (default: N - ceil(2N/3), the demo's first:M)")
    calib.add_argument("--trials", type=int, default=None, help="calibration batches per setting (default 16)")
    calib.add_argument("--straggler-sets", type=int, default=None, help="random arrived sets per setting (default 20)")
    calib.add_argument("--no-tune", action="store_true", help="no tuning (the built-in fallback lams are used)")
    if seed_and_threads:  # `nercc export` has its own
        calib.add_argument("--seed", type=int, default=0)
        calib.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the tuning")
    parser.add_argument("--force", action="store_true", help="replace an existing model of that name")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_name(name: str, repository: Path, force: bool) -> Path:
    from nercc.paths import MODEL_NAMES

    if not NAME_PATTERN.match(name or ""):
        raise AddModelError(f"--name {name!r}: use a letter, then letters, digits, '_' or '-' (at most 64)")
    if name.endswith(RESERVED_SUFFIXES):
        raise AddModelError(f"--name {name!r}: names ending in {', '.join(RESERVED_SUFFIXES)} are the master's own "
                            "models; choose another name")
    if name in MODEL_NAMES and not force:
        raise AddModelError(f"--name {name!r} is a built-in model; choose another name (or --force to replace it)")
    dest = repository / name
    if dest.exists() and not force:
        raise AddModelError(f"--name {name!r}: {dest} exists; choose another name or add --force to replace it")
    return dest


def _stragglers(text: Optional[str], n_workers: int, n_inputs: int) -> List[int]:
    from nercc.bench.experiment import parse_int_list

    if n_inputs < 2 or n_workers < n_inputs:
        raise AddModelError(f"need 2 <= --inputs <= --workers, got K = {n_inputs}, N = {n_workers}")
    if text is None:
        return [n_workers - max(2, math.ceil(2 * n_workers / 3))]
    try:
        values = parse_int_list(text)
    except ValueError as exc:
        raise AddModelError(f"--stragglers: {exc}") from None
    bad = [s for s in values if not 0 <= s <= n_workers - n_inputs]
    if not values or bad:
        raise AddModelError(f"--stragglers must lie in [0, N - K] = [0, {n_workers - n_inputs}], got {text!r}")
    return sorted(set(values))


#: add-model's settings with their defaults, for callers that are not the command line (export_module).
DEFAULTS = {"output_kind": None, "image": None, "mean": None, "std": None, "scale": 1.0, "resize": None, "crop": None,
            "layout": None, "calibration": None, "workers": 12, "inputs": 4, "stragglers": None, "trials": None,
            "straggler_sets": None, "no_tune": False, "seed": 0, "threads": 2, "force": False, "quiet": True}


def options(onnx: Path, name: str, **settings) -> argparse.Namespace:
    """add-model's arguments as a Namespace, from keyword settings (unknown ones are an error)."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise AddModelError(f"unknown add-model setting(s) {unknown}; known: {', '.join(sorted(DEFAULTS))}")
    return argparse.Namespace(onnx=Path(onnx), name=name, **{**DEFAULTS, **settings})


def add_model(args: argparse.Namespace, repository: Optional[Path] = None) -> Path:
    """Everything `nercc add-model` does; returns the model folder written (in ``repository``, default the
    model repository: ``--model-repository`` / ``$NERCC_MODEL_REPOSITORY`` / the checkout's)."""
    from nercc import paths
    from nercc.models import file_sha256, read_model_info
    from nercc.preprocessing import preprocess
    from nercc.serving.repository import worker_config

    started = time.perf_counter()
    repository = Path(repository if repository is not None else paths.MODEL_REPOSITORY)
    dest = check_name(args.name, repository, args.force)
    signature = inspect_onnx(args.onnx)
    raw_shape, raw_dtype, spec = image_spec(signature, args.image, args.mean, args.std, args.scale, args.resize,
                                            args.crop, args.layout)
    stragglers = _stragglers(args.stragglers, args.workers, args.inputs)
    labels = None
    if args.calibration is not None:
        raw, labels = read_calibration(args.calibration, raw_shape, raw_dtype, bool(spec and spec.get("resize")))
        if len(raw) < 2:
            raise AddModelError(f"--calibration {args.calibration}: {len(raw)} input(s); give at least 2")
    else:
        rng = np.random.default_rng(args.seed)
        raw = (rng.integers(0, 256, size=(8, *raw_shape), dtype=np.uint8) if raw_dtype == "uint8"
               else rng.standard_normal((8, *raw_shape)).astype(np.float32))
    meta_stub = {"raw_shape": list(raw_shape), "input_shape": list(signature.input_shape), "preprocess": spec,
                 "raw_dtype": raw_dtype}
    x = preprocess(meta_stub, raw[:CHECK_INPUTS])
    y = ort_check(args.onnx, signature, x)
    kind = resolve_output_kind(args.output_kind, y, args.calibration is not None)
    if labels is not None and kind == "regression":
        print("regression output: the calibration labels are not used (no RelAcc)")
        labels = None
    if labels is not None and (labels.min() < 0 or labels.max() >= signature.output_dim):
        raise AddModelError(f"--calibration labels must lie in [0, D = {signature.output_dim}), got "
                            f"[{labels.min()}, {labels.max()}]")
    print(f"{args.onnx}: input {signature.input_name!r} float32 [batch, {', '.join(map(str, signature.input_shape))}]"
          f", output {signature.output_name!r} [batch, {signature.output_dim}] ({kind}), opset {signature.opset}, "
          f"{signature.params} parameters; onnxruntime ran {len(x)} inputs "
          f"({'calibration' if args.calibration else 'random'}): outputs in [{y.min():.3g}, {y.max():.3g}]")

    repository.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=repository, prefix=f".{args.name}.adding-"))
    try:
        (tmp / "1").mkdir()
        shutil.copyfile(args.onnx, tmp / "1" / "model.onnx")
        meta: Dict[str, Any] = {
            "name": args.name, "dataset": "calibration", "n_classes": signature.output_dim,
            "input_name": signature.input_name, "input_shape": list(signature.input_shape),
            "input_dtype": "float32", "output_name": signature.output_name,
            "raw_shape": list(raw_shape), "raw_dtype": raw_dtype, "preprocess": spec,
            "output_kind": kind, "onnx_sha256": file_sha256(tmp / "1" / "model.onnx"),
            "trained": True, "weights": f"added with nercc add-model from {Path(args.onnx).name}",
            "params": signature.params, "onnx_bytes": (tmp / "1" / "model.onnx").stat().st_size,
            "opset": signature.opset, "source": "nercc add-model",
        }
        if args.calibration is not None:
            full = np.concatenate([preprocess(meta_stub, raw[i:i + 256]) for i in range(0, len(raw), 256)])
            outputs = ort_check(tmp / "1" / "model.onnx", signature, full) if len(raw) > CHECK_INPUTS else y
            arrays = {"x": raw} if labels is None else {"x": raw, "y": labels}
            np.savez(tmp / "calibration.npz", **arrays)
            meta["calibration"] = {"source": Path(args.calibration).name, "n": int(len(raw)),
                                   "labels": labels is not None}
            if labels is not None and kind != "regression":
                meta["accuracy"] = {"top1": round(float((outputs.argmax(1) == labels).mean()), 4),
                                    "split": "calibration", "n": int(len(labels))}
        (tmp / "nercc.json").write_text(json.dumps(meta, indent=2) + "\n")
        info = read_model_info(tmp)
        (tmp / "config.pbtxt").write_text(worker_config(info, native_onnxruntime=True))
        if args.calibration is not None and not args.no_tune:
            tune_and_report(info, args, stragglers)
        _install(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {dest} ({time.perf_counter() - started:.1f} s): serve it with `nercc serve --model {args.name}`, "
          f"try it with `nercc demo --model {args.name}`")
    return dest


def _install(tmp: Path, dest: Path) -> None:
    """Move the finished folder into place (an existing one is replaced only after the new one is complete)."""
    for path in [tmp, *tmp.rglob("*")]:  # mkdtemp / mkstemp make owner-only entries: readable like any model
        path.chmod(0o755 if path.is_dir() else 0o644)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.replaced-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def tune_and_report(info, args, stragglers: Sequence[int]) -> None:
    """Tune (lam_enc, lam_dec) per S on the odd-indexed calibration inputs (lam_dec per |F|), save them in
    tuning.json, then print MSE / RelAcc of BACC, NeRCC-0 and tuned NeRCC on the even-indexed ones."""
    from nercc.bench.accuracy import Smoothing, format_table, run_benchmark, write_results
    from nercc.bench.experiment import command_line, default_batch_size, load_inputs
    from nercc.bench.tune import tune_setting
    from nercc.models import OnnxModel
    from nercc.profiles import save_entry

    K, N = args.inputs, args.workers
    pool = len(load_inputs(info, "tune", 10**9, args.seed).x)
    if pool < K:
        raise AddModelError(f"--calibration: tuning uses the odd-indexed inputs ({pool}), fewer than K = {K}; give at "
                            f"least {2 * K} inputs or a smaller --inputs")
    smoothing = {}
    for s in stragglers:
        entry = tune_setting(info, K, N, s, seed=args.seed, threads=args.threads, progress=not args.quiet,
                             trials=args.trials, straggler_sets_per_s=args.straggler_sets)
        entry["command"] = command_line(["add-model", "...", "--name", info.name, "--workers", N, "--inputs", K,
                                         "--stragglers", s, "--seed", args.seed])
        save_entry(info.dir, entry, make_default=(s == stragglers[0]))
        smoothing[s] = Smoothing(entry["lam_enc"], entry["lam_dec"], "tuned by add-model",
                                 dict(entry.get("lam_dec_by_arrived") or {}))
        print(f"tuned N={N} K={K} S={s}: lam_enc={entry['lam_enc']:.3g} lam_dec={entry['lam_dec']:.3g}, held-out "
              f"MSE NeRCC {entry['mse']:.4g} / NeRCC-0 {entry['mse_nercc0']:.4g} / BACC {entry['mse_bacc']:.4g}"
              + (f", lam_dec per |F| {entry['lam_dec_by_arrived']}" if entry.get("lam_dec_by_arrived") else ""),
              flush=True)
    evaluation = load_inputs(info, "eval", 10**9, args.seed)
    if len(evaluation.x) < K:
        print(f"accuracy table skipped: {len(evaluation.x)} evaluation inputs (even-indexed) < K = {K}")
        return
    trials = max(4, min(40, len(evaluation.x) // K))
    f = OnnxModel(info, threads=args.threads)
    core = run_benchmark(f, evaluation, K, N, list(stragglers), smoothing, trials, args.seed,
                         default_batch_size(info.input_dim), progress=not args.quiet)
    report = {"model": info.name, "dataset": info.dataset, "N": N, "K": K, "trials": trials, "seed": args.seed,
              "stragglers": list(stragglers), "eval_split": evaluation.split,
              "lams": {str(s): choice.to_json() for s, choice in smoothing.items()}, **core}
    print(format_table(report))
    # beside the model: `nercc simulate / plan --model X` read their RelAcc tables from it
    write_results(report, info.dir)
    if not info.classifier:
        print("(regression output: RelAcc does not apply; MSE is the mean squared error of the decoded outputs)")


def main(args: argparse.Namespace) -> int:
    try:
        add_model(args)
    except (AddModelError, FileNotFoundError) as exc:
        print(f"nercc add-model: error: {exc}", file=sys.stderr)
        return 2
    return 0
