"""Data loaders for the three model families: MNIST, CIFAR-10 and the ImageNet sample images.

Every loader returns ``(raw, labels)``: ``raw`` is the undecoded-by-model uint8 pixel array exactly as the
data set stores it (MNIST ``(N, 28, 28)``, CIFAR-10 ``(N, 32, 32, 3)`` HWC, ImageNet samples ``(N, H, W, 3)``)
and ``labels`` is int64 ``(N,)``. Model-specific scaling and resizing lives in :mod:`nercc.preprocessing`.

Files are read from :func:`nercc.paths.data_dir`. A missing file is downloaded from its canonical public
source into that folder, unless downloads are disabled (``download=False`` or ``NERCC_OFFLINE=1``) or the
network is unreachable; then the loader raises :class:`FileNotFoundError` naming the missing file and the
folder it looked in. Decoded arrays are cached per process, so repeated calls are free; callers must not
modify the returned arrays in place (they are marked read-only).
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from nercc.paths import data_dir

DATASETS = ("mnist", "cifar10", "imagenet-samples")
SPLITS = ("train", "test")

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

Array = np.ndarray


def _downloads_enabled(download: Optional[bool]) -> bool:
    if download is not None:
        return bool(download)
    return os.environ.get("NERCC_OFFLINE", "").strip().lower() not in ("1", "true", "yes")


def _missing(path: Path, what: str, hint: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what}: {path.name} not found in {path.parent} (data directory from NERCC_DATA_DIR or "
        f"../shared/data). {hint}"
    )


def _fetch(urls, dest: Path) -> None:
    """Download the first URL that answers into ``dest`` (atomically: a partial file never stays behind)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        part = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out)
            os.replace(part, dest)
            return
        except OSError as exc:  # URLError and HTTPError are OSErrors
            errors.append(f"{url}: {exc}")
            part.unlink(missing_ok=True)
    raise OSError("download failed: " + "; ".join(errors))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _read_idx(path: Path) -> Array:
    """Decode one gzipped IDX file (the MNIST format: magic, dims as big-endian int32, then uint8 data)."""
    with gzip.open(path, "rb") as fh:
        payload = fh.read()
    magic = int.from_bytes(payload[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte elements
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} values, found {data.size} (truncated file?)")
    return data.reshape(dims)


def _readonly(*arrays: Array) -> Tuple[Array, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.cache
def _mnist(root: str, split: str, download: bool) -> Tuple[Array, Array]:
    folder = Path(root) / "mnist"
    arrays = []
    for name in MNIST_FILES[split]:
        path = folder / name
        if not path.exists():
            if not download:
                raise _missing(path, "MNIST", "Downloads are disabled (NERCC_OFFLINE=1 or download=False).")
            try:
                _fetch([m + name for m in MNIST_MIRRORS], path)
            except OSError as exc:
                raise _missing(path, "MNIST", f"Downloading it failed ({exc}).") from exc
        arrays.append(_read_idx(path))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return _readonly(np.ascontiguousarray(images), labels.astype(np.int64))


def load_mnist(split: str = "test", download: Optional[bool] = None) -> Tuple[Array, Array]:
    """MNIST digits: images uint8 ``(N, 28, 28)`` (N = 60000 train, 10000 test), labels int64 in [0, 10)."""
    _check_split(split)
    return _mnist(str(data_dir()), split, _downloads_enabled(download))


def _cifar10_from_tarball(tarball: Path, dest: Path) -> None:
    """Convert the official python-pickle tarball to the npz layout used here (x_* HWC uint8, y_* uint8)."""
    parts = {"train": [], "test": []}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            split = "train" if base.startswith("data_batch_") else "test" if base == "test_batch" else None
            if split is None:
                continue
            batch = pickle.load(tar.extractfile(member), encoding="bytes")
            parts[split].append((base, batch[b"data"], batch[b"labels"]))
    out = {}
    for split, batches in parts.items():
        batches.sort()
        x = np.concatenate([b[1] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out[f"x_{split}"] = np.ascontiguousarray(x, dtype=np.uint8)
        out[f"y_{split}"] = np.concatenate([np.asarray(b[2], dtype=np.uint8) for b in batches])
    buf = io.BytesIO()
    np.savez(buf, classes=np.array(CIFAR10_CLASSES), **out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(buf.getvalue())


@functools.cache
def _cifar10(root: str, split: str, download: bool) -> Tuple[Array, Array]:
    path = Path(root) / "cifar10" / "cifar10.npz"
    if not path.exists():
        if not download:
            raise _missing(path, "CIFAR-10", "Downloads are disabled (NERCC_OFFLINE=1 or download=False).")
        tarball = path.parent / "cifar-10-python.tar.gz"
        try:
            if not tarball.exists():
                _fetch([CIFAR10_URL], tarball)
            _cifar10_from_tarball(tarball, path)
        except OSError as exc:
            raise _missing(path, "CIFAR-10", f"Downloading {CIFAR10_URL} failed ({exc}).") from exc
    with np.load(path) as npz:
        x, y = npz[f"x_{split}"], npz[f"y_{split}"]
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise ValueError(f"{path}: x_{split} has shape {x.shape} {x.dtype}, expected (N, 32, 32, 3) uint8")
    return _readonly(np.ascontiguousarray(x), y.astype(np.int64).reshape(-1))


def load_cifar10(split: str = "test", download: Optional[bool] = None) -> Tuple[Array, Array]:
    """CIFAR-10: images uint8 ``(N, 32, 32, 3)`` HWC (50000 train, 10000 test), labels int64 in [0, 10)."""
    _check_split(split)
    return _cifar10(str(data_dir()), split, _downloads_enabled(download))


IMAGENET_SAMPLE_SIZE = 512


def _square(img, size: int) -> Array:
    """Resize the shorter side to ``size`` (bilinear) and center-crop to ``size x size``.

    The samples are 512x512 except one 1024x683 photo; a common shape lets them travel as one uint8 batch
    (Triton's RAW input has a fixed shape). Square 512 images pass through untouched.
    """
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((w, h), Image.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


@functools.cache
def _imagenet_samples(root: str) -> Tuple[Array, Array]:
    from PIL import Image  # PIL only where images are decoded

    folder = Path(root) / "imagenet-samples"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"ImageNet samples: no *.jpg files in {folder} (data directory from NERCC_DATA_DIR or "
            f"../shared/data). They are the 20 sample images of the PyPI package foolbox (foolbox/data/), "
            f"named <anything>_<label>.jpg; there is no automatic download for them."
        )
    images, labels = [], []
    for path in files:
        try:
            labels.append(int(path.stem.rsplit("_", 1)[-1]))
        except ValueError as exc:
            raise ValueError(f"{path.name}: cannot read the class from the file name (want *_<label>.jpg)") from exc
        with Image.open(path) as img:
            images.append(_square(img.convert("RGB"), IMAGENET_SAMPLE_SIZE))
    return _readonly(np.stack(images), np.asarray(labels, dtype=np.int64))


def load_imagenet_samples(split: str = "test", download: Optional[bool] = None) -> Tuple[Array, Array]:
    """The 20 ImageNet sample images: uint8 ``(20, 512, 512, 3)`` HWC, labels int64 in [0, 1000).

    Images that are not 512x512 are brought to it by a shorter-side resize and a center crop (see ``_square``);
    the models' own resize/crop then happens in :func:`nercc.preprocessing.preprocess`.

    ``split`` and ``download`` exist for a uniform signature: there is a single split and no download.
    """
    if split != "test":
        raise ValueError(f"imagenet-samples has only the 'test' split, not {split!r}")
    return _imagenet_samples(str(data_dir()))


@functools.cache
def imagenet_class_names() -> Tuple[str, ...]:
    """The 1000 ILSVRC-2012 class names in index order (from imagenet-samples/classes.txt)."""
    path = data_dir() / "imagenet-samples" / "classes.txt"
    if not path.exists():
        raise _missing(path, "ImageNet class names", "It lists the 1000 ILSVRC-2012 names, one a line.")
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


#: A user's model (``nercc add-model``) says ``"dataset": "calibration"``: its data is the model folder's
#: calibration file, raw inputs ``x`` (the model's raw dtype and shape) and optional int labels ``y``.
CALIBRATION = "calibration"
CALIBRATION_FILE = "calibration.npz"
#: Label of an input whose class is unknown (a calibration file without ``y``): never equal to a prediction.
NO_LABEL = -1


def load_calibration(folder, split: str = "test") -> Tuple[Array, Array]:
    """``(raw inputs, labels)`` of a model folder's calibration.npz; labels are ``NO_LABEL`` where it has no ``y``.

    There is one split: ``split`` is accepted for a uniform signature (the experiments use the even- and
    odd-indexed inputs as disjoint evaluation and tuning sets, as for the ImageNet samples).
    """
    path = Path(folder) / CALIBRATION_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: `nercc add-model --calibration FILE` writes it")
    with np.load(path, allow_pickle=False) as npz:
        if "x" not in npz.files:
            raise ValueError(f"{path}: no array 'x' (raw inputs)")
        x = np.ascontiguousarray(npz["x"])
        y = npz["y"].astype(np.int64).reshape(-1) if "y" in npz.files else np.full(len(x), NO_LABEL, np.int64)
    if len(y) != len(x):
        raise ValueError(f"{path}: {len(x)} inputs but {len(y)} labels")
    return _readonly(x, y)


def load_model_data(info, split: str = "test", download: Optional[bool] = None) -> Tuple[Array, Array]:
    """``(raw inputs, labels)`` for a model (a :class:`nercc.models.ModelInfo`): its data set, or, for a model
    added with ``nercc add-model`` (``"dataset": "calibration"``), the calibration file in its folder."""
    if info.dataset == CALIBRATION:
        return load_calibration(info.dir, split)
    return load_dataset(info.dataset, split=split, download=download)


_LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10, "imagenet-samples": load_imagenet_samples}


def load_dataset(name: str, split: str = "test", download: Optional[bool] = None) -> Tuple[Array, Array]:
    """``(raw uint8 array, labels int64)`` for ``name`` in ``mnist``, ``cifar10``, ``imagenet-samples``.

    ``imagenet`` is accepted as a synonym for ``imagenet-samples`` (the ImageNet models' nercc.json say
    ``"dataset": "imagenet"``).
    """
    key = "imagenet-samples" if name == "imagenet" else name
    if key not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
    return _LOADERS[key](split, download=download)
