"""Triton model repositories for nercc: the one generator of every config.pbtxt we serve.

For a model ``<name>`` (``model_repository/<name>/`` with ``1/model.onnx`` and ``nercc.json``) it writes

worker role (one per worker server)
    ``<name>/config.pbtxt`` + ``<name>/1/model.py`` (Python backend running the ONNX with onnxruntime,
    optional straggler injection) and ``<name>/1/model.onnx``; or, with ``native_onnxruntime=True``,
    ``platform: "onnxruntime_onnx"`` for Triton builds that have the ONNX Runtime backend (NGC containers).
master role
    ``<name>_preprocess`` (RAW UINT8 -> INPUT FP32), ``<name>_encoder`` (INPUT FP32 [K, ...] -> CODED FP32
    [N, ...]) and ``<name>_encode`` (RAW -> CODED: preprocess and encode in one Python model, one stub hop).

The LocalCluster writes one runtime repository per server into a temporary folder (absolute links);
``nercc serve --write-repository DIR`` writes a static one (relative links where possible) for a deployment,
and with ``--copy`` a portable one: real files only (ONNX, model.py, nercc.json and tuning.json copied into
every model folder), no links and no host paths, so the folder can be shipped to other hosts or baked into
an image. Per-worker settings are not in it: each worker server gets them from its environment.
Config parameters that name files may be relative: the Python models resolve them against their own
model folder, so a written repository can be moved together with the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence, Union

from nercc.paths import MODEL_REPOSITORY, PYTHON_BACKENDS, REPO_ROOT

PathLike = Union[str, Path]

#: Default per-request byte limit of the encoder (input or coded output), overridable per cluster.
DEFAULT_MAX_REQUEST_BYTES = 256 * 2**20
#: Largest batch a worker accepts in one request (Triton's max_batch_size).
DEFAULT_WORKER_MAX_BATCH = 64

_DTYPES = {"float32": ("TYPE_FP32", 4), "uint8": ("TYPE_UINT8", 1)}


@dataclass(frozen=True)
class ModelMeta:
    """The fields of ``nercc.json`` that serving needs (read as plain JSON: no torch, no onnxruntime)."""

    name: str
    dir: Path
    input_name: str
    input_shape: tuple
    output_name: str
    n_classes: int
    raw_shape: tuple
    raw_dtype: str
    resizes: bool = False  # preprocess resizes, so raw images of any height and width are accepted

    @property
    def onnx_path(self) -> Path:
        return self.dir / "1" / "model.onnx"

    @property
    def input_bytes(self) -> int:
        """Bytes of one float32 model input."""
        return 4 * _prod(self.input_shape)

    @property
    def raw_bytes(self) -> int:
        """Bytes of one raw input of the nominal raw_shape."""
        return _DTYPES[self.raw_dtype][1] * _prod(self.raw_shape)

    @property
    def raw_dims(self) -> list:
        """RAW dims without the batch axis: height and width free (-1) when preprocessing resizes."""
        if self.resizes and len(self.raw_shape) >= 2:
            return [-1, -1, *self.raw_shape[2:]]
        return list(self.raw_shape)


def _prod(shape: Iterable[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def repository_model_meta(repository: PathLike, model: str) -> ModelMeta:
    """Metadata of ``model`` in a written repository: ``<model>/nercc.json``, else ``<model>_encoder/nercc.json``."""
    repository = Path(repository)
    for folder in (repository / model, repository / f"{model}_encoder", repository / f"{model}_preprocess"):
        if (folder / "nercc.json").exists():
            meta = read_model_meta(folder)
            return ModelMeta(**{**meta.__dict__, "name": model})
    raise FileNotFoundError(f"{repository} has no {model}/nercc.json or {model}_encoder/nercc.json: write it with "
                            f"`nercc serve --write-repository {repository} --copy --model {model}`")


def read_model_meta(model: PathLike, model_repository: PathLike | None = None) -> ModelMeta:
    """Model metadata from ``<model_repository>/<model>/nercc.json`` (``model`` may also be a folder path)."""
    candidate = Path(model)
    if candidate.is_dir() and (candidate / "nercc.json").exists():
        model_dir = candidate.resolve()
    else:
        model_dir = (Path(model_repository or MODEL_REPOSITORY) / str(model)).resolve()
    meta_path = model_dir / "nercc.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"no model metadata at {meta_path}: export the model first (`nercc export {Path(str(model)).name}`)"
        )
    with open(meta_path) as fh:
        meta = json.load(fh)
    try:
        info = ModelMeta(
            name=str(meta.get("name", model_dir.name)),
            dir=model_dir,
            input_name=str(meta.get("input_name", "input")),
            input_shape=tuple(int(d) for d in meta["input_shape"]),
            output_name=str(meta.get("output_name", "probs")),
            n_classes=int(meta["n_classes"]),
            raw_shape=tuple(int(d) for d in meta["raw_shape"]),
            raw_dtype=str(meta.get("raw_dtype", "uint8")),
            resizes=bool((meta.get("preprocess") or {}).get("resize")),
        )
    except KeyError as exc:
        raise ValueError(f"{meta_path}: missing field {exc.args[0]!r}") from None
    if info.raw_dtype not in _DTYPES:
        raise ValueError(f"{meta_path}: raw_dtype {info.raw_dtype!r} not supported (uint8 or float32)")
    return info


# ----------------------------------------------------------------------------------------------------------
# config.pbtxt text


def _dims(shape: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def _tensor(name: str, dtype: str, shape: Sequence[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: {_dims(shape)}\n  }}'


def _parameters(params: dict) -> str:
    lines = []
    for key, value in params.items():
        lines.append(
            f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(str(value))} }}\n}}'
        )
    return "\n".join(lines)


def _config(
    name: str,
    header: str,
    max_batch_size: int,
    inputs: List[str],
    outputs: List[str],
    extra: str = "",
    instances: bool = True,
    instance_count: int = 1,
) -> str:
    parts = [
        "# Generated by nercc.serving.repository (`nercc serve --write-repository`); edit the generator, not this file.",
        f'name: "{name}"',
        header,
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(inputs) + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
    ]
    if instances:
        parts.append(f"instance_group [\n  {{\n    kind: KIND_CPU\n    count: {int(instance_count)}\n  }}\n]")
    if extra:
        parts.append(extra)
    return "\n".join(parts) + "\n"


def worker_config(
    meta: ModelMeta,
    *,
    native_onnxruntime: bool = False,
    straggler: str = "none",
    seed: int = 0,
    worker_index: int = 0,
    intra_op_threads: int = 1,
    max_batch_size: int = DEFAULT_WORKER_MAX_BATCH,
    onnx_path: str | None = None,
    gpu: bool = False,
    gpu_instances: int = 1,
) -> str:
    """config.pbtxt of the worker model ``<name>``: input ``input`` [b, *input_shape], output ``probs``."""
    inputs = [_tensor(meta.input_name, "TYPE_FP32", meta.input_shape)]
    outputs = [_tensor(meta.output_name, "TYPE_FP32", [meta.n_classes])]
    if native_onnxruntime:
        from nercc.serving.stragglers import parse_straggler

        if not parse_straggler(straggler).is_none:
            raise ValueError("straggler injection runs in the Python-backend worker; the native onnxruntime "
                             "config has none (use straggler='none')")
        extra = _parameters({"intra_op_thread_count": intra_op_threads, "inter_op_thread_count": 1})
        if gpu:
            # Explicit GPU placement, and dynamic batching: several workers' requests sharing one GPU are
            # batched by Triton instead of running one small batch at a time.
            extra = (f"instance_group [\n  {{\n    kind: KIND_GPU\n    count: {int(gpu_instances)}\n  }}\n]\n"
                     "dynamic_batching {\n  max_queue_delay_microseconds: 100\n}\n" + extra)
        # No instance_group otherwise: Triton places the instance on a GPU when there is one, else on the CPU.
        return _config(meta.name, 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"',
                       max_batch_size, inputs, outputs, extra, instances=False)
    params = {
        "intra_op_threads": intra_op_threads,
        "straggler": straggler,
        "seed": seed,
        "worker_index": worker_index,
    }
    if onnx_path is not None:
        params["onnx_path"] = onnx_path
    return _config(meta.name, 'backend: "python"', max_batch_size, inputs, outputs, _parameters(params))


def master_configs(
    meta: ModelMeta,
    *,
    nercc_model_dir: str,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    repo_root: str | None = None,
    master_instances: int = 1,
) -> dict:
    """{model name: config.pbtxt} of ``<name>_preprocess``, ``<name>_encoder`` and ``<name>_encode``.

    ``master_instances`` model instances (one Python stub process each) serve preprocess and encoder, so that
    concurrent batches do not queue behind one another's encode on a multi-core master. ``<name>_encoder`` and
    ``<name>_encode`` run the same Python model file (``python_backends/encoder``): float32 input, or raw uint8
    preprocessed first.
    """
    if isinstance(master_instances, bool) or not isinstance(master_instances, int) or master_instances < 1:
        raise ValueError(f"master_instances must be an int >= 1, got {master_instances!r}")
    name = meta.name
    raw_type = _DTYPES[meta.raw_dtype][0]
    common = {"nercc_model_dir": nercc_model_dir}
    if repo_root is not None:
        common["nercc_repo_root"] = repo_root
    batch_input = [-1, *meta.input_shape]
    preprocess = _config(
        f"{name}_preprocess", 'backend: "python"', 0,
        [_tensor("RAW", raw_type, [-1, *meta.raw_dims])],
        [_tensor("INPUT", "TYPE_FP32", batch_input)],
        _parameters({**common, "max_request_bytes": max_request_bytes}),
        instance_count=master_instances,
    )
    encoder = _config(
        f"{name}_encoder", 'backend: "python"', 0,
        [_tensor("INPUT", "TYPE_FP32", batch_input)],
        [_tensor("CODED", "TYPE_FP32", batch_input)],
        _parameters({**common, "max_request_bytes": max_request_bytes}),
        instance_count=master_instances,
    )
    # preprocess + encode in one Python model (the encoder backend with a UINT8 input): one stub hop on the
    # master, where the former preprocess -> encoder ensemble paid two (issue 9: most of the coded path's cost)
    encode = _config(
        f"{name}_encode", 'backend: "python"', 0,
        [_tensor("RAW", raw_type, [-1, *meta.raw_dims])],
        [_tensor("CODED", "TYPE_FP32", batch_input)],
        _parameters({**common, "max_request_bytes": max_request_bytes}),
        instance_count=master_instances,
    )
    return {f"{name}_preprocess": preprocess, f"{name}_encoder": encoder, f"{name}_encode": encode}


# ----------------------------------------------------------------------------------------------------------
# writing folders


def _link(target: Path, link: Path, relative) -> None:
    """Link ``link`` to ``target`` (relative or absolute); ``relative="copy"``: a real copy of the file."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if relative == "copy":
        if link.is_symlink():
            link.unlink()
        if not (link.exists() and link.stat().st_size == target.stat().st_size
                and link.read_bytes() == target.read_bytes()):
            shutil.copyfile(target, link)
        return
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    source = os.path.relpath(target, link.parent) if relative else str(target)
    link.symlink_to(source)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return
    path.write_text(text)


def write_worker_model(
    dest: PathLike,
    meta: ModelMeta,
    *,
    native_onnxruntime: bool = False,
    relative: bool = False,
    absolute_paths: bool = False,
    **config_kw,
) -> Path:
    """Write ``dest/<name>/`` (config + version 1 with model.py and model.onnx links); returns the folder."""
    folder = Path(dest) / meta.name
    version = folder / "1"
    if not meta.onnx_path.exists():
        raise FileNotFoundError(f"no ONNX model at {meta.onnx_path}: export it first (`nercc export {meta.name}`)")
    onnx_path = str(meta.onnx_path) if absolute_paths else None
    _write(folder / "config.pbtxt", worker_config(meta, native_onnxruntime=native_onnxruntime,
                                                  onnx_path=onnx_path, **config_kw))
    if version.resolve() != meta.onnx_path.parent.resolve():
        _link(meta.onnx_path, version / "model.onnx", relative)
    if not native_onnxruntime:
        _link(PYTHON_BACKENDS / "onnx_worker" / "model.py", version / "model.py", relative)
    elif (version / "model.py").is_symlink() or (relative == "copy" and (version / "model.py").exists()):
        (version / "model.py").unlink()  # a native-ORT folder must not carry the Python worker
    if relative == "copy":
        _copy_metadata(meta, folder)
    return folder


def _copy_metadata(meta: ModelMeta, folder: Path) -> None:
    """nercc.json and tuning.json beside a model's config (Triton ignores them; our models and tools read them)."""
    if folder.resolve() == meta.dir.resolve():
        return
    for name in ("nercc.json", "tuning.json"):
        if (meta.dir / name).exists():
            _link(meta.dir / name, folder / name, "copy")


def write_master_models(
    dest: PathLike,
    meta: ModelMeta,
    *,
    relative: bool = False,
    absolute_paths: bool = False,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    master_instances: int = 1,
) -> List[Path]:
    """Write ``dest/<name>_preprocess``, ``dest/<name>_encoder`` and ``dest/<name>_encode``."""
    dest = Path(dest)
    if relative == "copy":
        model_dir_param, repo_root = ".", None  # metadata copied into each model folder; nercc is installed
    elif absolute_paths:
        model_dir_param, repo_root = str(meta.dir), str(REPO_ROOT)
    else:
        # relative to each model folder; the Python models resolve it against args["model_repository"]
        model_dir_param, repo_root = os.path.relpath(meta.dir, dest / f"{meta.name}_encoder"), None
    folders = []
    configs = master_configs(meta, nercc_model_dir=model_dir_param, max_request_bytes=max_request_bytes,
                             repo_root=repo_root, master_instances=master_instances)
    backend_of = {f"{meta.name}_preprocess": "preprocess", f"{meta.name}_encoder": "encoder",
                  f"{meta.name}_encode": "encoder"}
    for model_name, text in configs.items():
        folder = dest / model_name
        _write(folder / "config.pbtxt", text)
        _link(PYTHON_BACKENDS / backend_of[model_name] / "model.py", folder / "1" / "model.py", relative)
        if relative == "copy":
            _copy_metadata(meta, folder)
        gitkeep = folder / "1" / ".gitkeep"  # left by the former ensemble's empty version folder
        if gitkeep.exists():
            gitkeep.unlink()
        folders.append(folder)
    return folders


def write_repository(
    dest: PathLike,
    models: Sequence[str],
    *,
    role: str = "all",
    native_onnxruntime: bool = False,
    model_repository: PathLike | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    intra_op_threads: int = 1,
    master_instances: int = 1,
    copy: bool = False,
    gpu: bool = False,
) -> List[Path]:
    """A static repository for deployment (``nercc serve --write-repository``): worker and/or master models.

    ``copy``: real files, no links and no host paths (portable: ship it to other hosts or into an image).
    ``gpu``: native onnxruntime workers get a KIND_GPU instance group and dynamic batching.
    """
    if role not in ("all", "master", "worker"):
        raise ValueError(f"role must be 'all', 'master' or 'worker', got {role!r}")
    if gpu and not native_onnxruntime:
        raise ValueError("gpu=True writes native onnxruntime configs (KIND_GPU); add native_onnxruntime=True "
                         "(the Python-backend worker picks its device from NERCC_DEVICE instead)")
    dest = Path(dest)
    # links stay relative inside the checkout (it can move as a whole), absolute from anywhere else
    relative = "copy" if copy else _inside(dest, REPO_ROOT)
    written: List[Path] = []
    for model in models:
        meta = read_model_meta(model, model_repository)
        if role in ("all", "worker"):
            extra = {"gpu": True} if gpu else {}
            written.append(write_worker_model(dest, meta, native_onnxruntime=native_onnxruntime, relative=relative,
                                              intra_op_threads=intra_op_threads, **extra))
        if role in ("all", "master"):
            written += write_master_models(dest, meta, relative=relative, absolute_paths=not relative,
                                           max_request_bytes=max_request_bytes, master_instances=master_instances)
    return written
