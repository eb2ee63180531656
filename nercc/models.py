"""Model metadata (``model_repository/<name>/nercc.json``) and an onnxruntime runner for the model f.

Light on purpose: imported by the Triton Python backends, so only numpy, json and (lazily) onnxruntime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from nercc.paths import MODEL_NAMES, MODEL_REPOSITORY, model_dir


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The fields of a model's nercc.json, plus where the model lives.

    ``input_shape`` excludes the batch axis; the ONNX graph takes float32 ``(B, *input_shape)`` under
    ``input_name`` and returns ``(B, n_classes)`` under ``output_name``: softmax probabilities for the built-in
    models, or what ``output_kind`` says (``logits``, ``regression``: then ``n_classes`` is the output width D).
    ``onnx_sha256`` identifies the ONNX file (workers and master must serve the same one).
    """

    name: str
    dataset: str
    n_classes: int
    input_name: str
    input_shape: Tuple[int, ...]
    input_dtype: str
    output_name: str
    raw_shape: Tuple[int, ...]
    raw_dtype: str
    preprocess: Dict[str, Any]
    accuracy: Optional[Dict[str, Any]] = None
    trained: bool = True
    weights: str = ""
    params: Optional[int] = None
    onnx_bytes: Optional[int] = None
    opset: Optional[int] = None
    output_kind: str = "probabilities"
    onnx_sha256: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    dir: Path = Path(".")

    @property
    def onnx_path(self) -> Path:
        return self.dir / "1" / "model.onnx"

    @property
    def input_dim(self) -> int:
        """Number of scalars in one model input (the d of the paper)."""
        return math.prod(self.input_shape)

    @property
    def resizes(self) -> bool:
        """Preprocessing resizes, so raw images of any height and width are accepted."""
        return bool((self.preprocess or {}).get("resize"))

    @property
    def classifier(self) -> bool:
        """Outputs are class scores (probabilities or logits): top-1 and RelAcc mean something."""
        return self.output_kind in CLASSIFIER_KINDS

    @property
    def input_bytes(self) -> int:
        """Bytes of one float32 model input."""
        return 4 * self.input_dim

    @property
    def raw_bytes(self) -> int:
        """Bytes of one raw input of the nominal raw_shape."""
        return RAW_DTYPE_BYTES[self.raw_dtype] * math.prod(self.raw_shape)

    @property
    def raw_dims(self) -> list:
        """RAW dims without the batch axis: height and width free (-1) when preprocessing resizes."""
        if self.resizes and len(self.raw_shape) >= 2:
            return [-1, -1, *self.raw_shape[2:]]
        return list(self.raw_shape)

    def to_json(self) -> Dict[str, Any]:
        """The nercc.json dict (without the location fields)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("dir", "extra")}
        out["input_shape"], out["raw_shape"] = list(self.input_shape), list(self.raw_shape)
        out.update(self.extra)
        return out


#: Raw input dtypes a model may declare, and their item sizes.
RAW_DTYPE_BYTES = {"uint8": 1, "float32": 4}
#: What a model's output is (nercc.json "output_kind"): the answer checks, RelAcc and the docs follow it.
OUTPUT_KINDS = ("probabilities", "logits", "regression")
#: Output kinds whose argmax is a class (top-1, RelAcc).
CLASSIFIER_KINDS = ("probabilities", "logits")


def file_sha256(path: Union[str, Path]) -> str:
    """Hex sha256 of a file (the model identity of an ONNX file: nercc.json "onnx_sha256")."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

_REQUIRED = ("name", "dataset", "n_classes", "input_name", "input_shape", "input_dtype", "output_name",
             "raw_shape", "raw_dtype", "preprocess")


def list_models(repository: Optional[Path] = None) -> List[str]:
    """Names of the models that have a nercc.json in the model repository (sorted)."""
    root = Path(repository) if repository is not None else MODEL_REPOSITORY
    return sorted(p.parent.name for p in root.glob("*/nercc.json"))


def _build_hint(name: str) -> str:
    if name in MODEL_NAMES:
        return f"build it with `nercc export {name}` (or `make models`)"
    return f"known models: {', '.join(MODEL_NAMES)}"


def load_model_info(name: str, repository: Optional[Path] = None) -> ModelInfo:
    """Read ``<repository>/<name>/nercc.json`` into a :class:`ModelInfo` (``name`` may also be a model folder).

    Raises ValueError for an unknown model (listing the known ones) and FileNotFoundError when the
    metadata of a known model was not exported yet.
    """
    candidate = Path(name)
    if (candidate / "nercc.json").exists():
        return read_model_info(candidate)
    folder = (Path(repository) / name) if repository is not None else model_dir(name)
    path = folder / "nercc.json"
    if not path.exists():
        available = list_models(repository)
        if name not in MODEL_NAMES and name not in available:
            raise ValueError(
                f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}"
                + (f" (exported here: {', '.join(available)})" if available else "")
            )
        raise FileNotFoundError(f"{path} does not exist: {_build_hint(name)}")
    return read_model_info(folder)


def read_model_info(folder: Union[str, Path]) -> ModelInfo:
    """The :class:`ModelInfo` of the model folder ``folder`` (its ``nercc.json``); ``dir`` is the folder."""
    folder = Path(folder)
    path = folder / "nercc.json"
    if not path.exists():
        raise FileNotFoundError(f"no model metadata at {path}: {_build_hint(folder.name)}")
    data = json.loads(path.read_text())
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}")
    if data["raw_dtype"] not in RAW_DTYPE_BYTES:
        raise ValueError(f"{path}: raw_dtype {data['raw_dtype']!r} not supported ({' or '.join(RAW_DTYPE_BYTES)})")
    kind = data.get("output_kind", "probabilities")
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"{path}: output_kind {kind!r} not supported ({', '.join(OUTPUT_KINDS)})")
    known = {f.name for f in dataclasses.fields(ModelInfo)} - {"extra", "dir"}
    fields = {k: v for k, v in data.items() if k in known}
    extra = {k: v for k, v in data.items() if k not in known}
    fields["input_shape"] = tuple(int(v) for v in data["input_shape"])
    fields["raw_shape"] = tuple(int(v) for v in data["raw_shape"])
    fields["n_classes"] = int(data["n_classes"])
    return ModelInfo(**fields, extra=extra, dir=folder)


class OnnxModel:
    """The model f as a numpy function: ``f(x float32 (B, *input_shape)) -> (B, n_classes) float32``.

    Outputs are what the model's ``output_kind`` says (softmax probabilities for the built-in models). ``threads`` sets onnxruntime's
    intra-op threads (1 keeps many workers on one machine from fighting; 0 = onnxruntime's default).
    """

    def __init__(self, model: Union[str, ModelInfo], threads: int = 1, providers: Optional[List[str]] = None):
        import onnxruntime as ort

        self.info = model if isinstance(model, ModelInfo) else load_model_info(model)
        path = self.info.onnx_path
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: {_build_hint(self.info.name)}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_shape = tuple(self.info.input_shape)
        self.n_classes = int(self.info.n_classes)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise ValueError(f"{self.info.name}: input must be float32, got {x.dtype} (preprocess raw uint8 first)")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.info.name}: input must have shape (B, {', '.join(map(str, self.input_shape))}), got {x.shape}"
            )
        if x.shape[0] == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        (probs,) = self.session.run([self.info.output_name], {self.info.input_name: np.ascontiguousarray(x)})
        return probs

    def __repr__(self) -> str:
        return f"OnnxModel({self.info.name!r}, input={self.input_shape}, n_classes={self.n_classes})"
