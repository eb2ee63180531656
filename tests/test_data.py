"""Data loaders: real shapes, dtypes and label ranges; the download path and clear errors for missing files."""

import gzip
import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from nercc import data
from nercc.paths import data_dir


@pytest.mark.parametrize(
    "split, n", [("train", 60000), ("test", 10000)],
)
def test_mnist_shapes_dtypes_labels(split, n):
    x, y = data.load_mnist(split)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    assert x.max() == 255 and x.min() == 0
    # Real digits: roughly 19% of MNIST pixels are ink.
    assert 0.1 < np.mean(x > 0) < 0.3


@pytest.mark.parametrize("split, n", [("train", 50000), ("test", 10000)])
def test_cifar10_shapes_dtypes_labels(split, n):
    x, y = data.load_cifar10(split)
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))


def test_imagenet_samples():
    x, y = data.load_imagenet_samples()
    assert x.shape == (20, 512, 512, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.min() >= 0 and y.max() < 1000
    assert y[0] == 243  # imagenet_00_243.jpg
    names = data.imagenet_class_names()
    assert len(names) == 1000 and names[243].startswith("bull mastiff")


def test_load_dataset_dispatch_and_cache():
    x1, y1 = data.load_dataset("mnist", "test")
    x2, _ = data.load_mnist("test")
    assert x1 is x2  # decoded once per process
    assert not x1.flags.writeable  # shared cached arrays must not be changed by a caller
    assert data.load_dataset("imagenet")[0].shape[0] == 20


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load_mnist("validation")
    with pytest.raises(ValueError, match="only the 'test' split"):
        data.load_imagenet_samples("train")


def test_missing_data_dir_offline_says_what_and_where(tmp_path, monkeypatch):
    empty = tmp_path / "nowhere"
    monkeypatch.setenv("NERCC_DATA_DIR", str(empty))
    monkeypatch.setenv("NERCC_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        data.load_mnist("test")
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message and str(empty / "mnist") in message
    assert "NERCC_OFFLINE" in message
    with pytest.raises(FileNotFoundError, match=r"cifar10\.npz not found in .*nowhere/cifar10"):
        data.load_cifar10("test")
    with pytest.raises(FileNotFoundError, match="no \\*.jpg files in .*nowhere/imagenet-samples"):
        data.load_imagenet_samples()


def test_unreachable_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NERCC_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("NERCC_OFFLINE", raising=False)
    # A URL that cannot answer (file:// to a missing folder): the loader must say the download failed.
    monkeypatch.setattr(data, "MNIST_MIRRORS", ((tmp_path / "no-mirror").as_uri() + "/",))
    with pytest.raises(FileNotFoundError, match="Downloading it failed"):
        data.load_mnist("test")
    assert not list((tmp_path / "mnist").glob("*.part"))  # no partial file left behind


def test_mnist_download_path_fetches_and_decodes(tmp_path, monkeypatch):
    """The download code for real, with a local mirror served through urllib (file:// URLs)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in data.MNIST_FILES["test"]:
        shutil.copy(data_dir() / "mnist" / name, mirror / name)
    reference = data.load_mnist("test")
    monkeypatch.setenv("NERCC_DATA_DIR", str(tmp_path / "fresh"))
    monkeypatch.delenv("NERCC_OFFLINE", raising=False)
    monkeypatch.setattr(data, "MNIST_MIRRORS", (mirror.as_uri() + "/",))
    x, y = data.load_mnist("test")
    assert (tmp_path / "fresh" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert np.array_equal(x, reference[0]) and np.array_equal(y, reference[1])


def test_cifar10_tarball_conversion(tmp_path):
    """The official python-pickle tarball layout (CHW rows, batches) becomes x_* HWC uint8 / y_* labels."""
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8) for name in
              ["data_batch_1", "data_batch_2", "test_batch"]}
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, chw in images.items():
            payload = pickle.dumps({b"data": chw.reshape(4, -1), b"labels": [1, 2, 3, 9]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = tmp_path / "cifar10" / "cifar10.npz"
    data._cifar10_from_tarball(tarball, out)
    with np.load(out) as npz:
        assert npz["x_train"].shape == (8, 32, 32, 3) and npz["x_test"].shape == (4, 32, 32, 3)
        assert np.array_equal(npz["x_train"][:4], images["data_batch_1"].transpose(0, 2, 3, 1))
        assert npz["y_test"].tolist() == [1, 2, 3, 9]
        assert npz["classes"][0] == "airplane"


def test_truncated_idx_file_is_rejected(tmp_path):
    path = tmp_path / "bad-idx3-ubyte.gz"
    header = (0x0803).to_bytes(4, "big") + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(path, "wb") as fh:
        fh.write(header + bytes(100))
    with pytest.raises(ValueError, match="truncated"):
        data._read_idx(path)
