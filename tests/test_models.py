"""Models: metadata, the onnxruntime runner, preprocessing, committed ONNX accuracy, RepVGG re-parameterization,
and the ONNX export round trip."""

import json
import shutil

import numpy as np
import pytest

from nercc.data import load_cifar10, load_imagenet_samples, load_mnist
from nercc.models import ModelInfo, OnnxModel, list_models, load_model_info
from nercc.paths import model_dir
from nercc.preprocessing import preprocess


def test_lenet5_metadata_matches_contract():
    info = load_model_info("lenet5")
    assert isinstance(info, ModelInfo)
    assert (info.input_name, info.output_name, info.input_shape, info.raw_shape) == ("input", "probs", (1, 28, 28), (28, 28))
    assert info.n_classes == 10 and info.trained and info.onnx_path.exists()
    assert info.onnx_path == model_dir("lenet5") / "1" / "model.onnx"
    assert info.onnx_bytes == info.onnx_path.stat().st_size
    assert "lenet5" in list_models()


def test_lenet5_onnx_accuracy_full_mnist_test_set():
    model = OnnxModel("lenet5", threads=1)
    x_raw, y = load_mnist("test")
    probs = np.concatenate([model(preprocess(model.info, x_raw[i : i + 2000])) for i in range(0, len(y), 2000)])
    assert probs.shape == (10000, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs.min() >= 0.0
    accuracy = float(np.mean(probs.argmax(1) == y))
    assert accuracy >= 0.988
    assert abs(accuracy - model.info.accuracy["top1"]) < 1e-3  # nercc.json reports what the ONNX does


def test_onnx_model_rejects_bad_input():
    model = OnnxModel("lenet5")
    with pytest.raises(ValueError, match="float32"):
        model(np.zeros((2, 1, 28, 28), dtype=np.float64))
    with pytest.raises(ValueError, match=r"shape \(B, 1, 28, 28\)"):
        model(np.zeros((2, 28, 28), dtype=np.float32))
    assert model(np.zeros((0, 1, 28, 28), dtype=np.float32)).shape == (0, 10)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*lenet5.*repvgg_cifar10"):
        load_model_info("resnet9")


def test_missing_onnx_names_the_command(tmp_path):
    (tmp_path / "lenet5").mkdir()
    shutil.copy(model_dir("lenet5") / "nercc.json", tmp_path / "lenet5" / "nercc.json")  # metadata, no ONNX
    info = load_model_info("lenet5", repository=tmp_path)
    with pytest.raises(FileNotFoundError, match="nercc export lenet5"):
        OnnxModel(info)
    with pytest.raises(FileNotFoundError, match="nercc export repvgg_cifar10"):
        load_model_info("repvgg_cifar10", repository=tmp_path)


def test_preprocess_formula_and_errors():
    info = load_model_info("lenet5")
    raw = np.array([[[0, 255], [51, 102]]], dtype=np.uint8).repeat(14, 1).repeat(14, 2)
    x = preprocess(info, raw)
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0, 0], (0 - 0.1307) / 0.3081, rtol=1e-6)
    np.testing.assert_allclose(x[0, 0, 0, 14], (1 - 0.1307) / 0.3081, rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(info, raw.astype(np.float32))
    with pytest.raises(ValueError, match="expects"):
        preprocess(info, np.zeros((1, 32, 32), dtype=np.uint8))


def test_preprocess_hwc_resize_crop():
    spec = {"scale": 1.0, "mean": [127.0] * 3, "std": [128.0] * 3, "layout": "NCHW", "resize": 256, "crop": 224}
    info = {"raw_shape": [512, 512, 3], "input_shape": [3, 224, 224], "preprocess": spec}
    raw, _ = load_imagenet_samples()
    x = preprocess(info, raw[:2])
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    # A non-square image of another size is resized by its shorter side, then center-cropped.
    wide = np.zeros((1, 300, 600, 3), dtype=np.uint8)
    wide[:, :, 300 - 20 : 300 + 20] = 255  # a bright vertical stripe in the middle
    y = preprocess(info, wide)
    assert y.shape == (1, 3, 224, 224) and y[0, 0, :, 112].min() > 0.9 and y[0, 0, :, 0].max() < -0.9
    # CIFAR-style HWC without resize goes to CHW channel by channel.
    cifar = {"raw_shape": [32, 32, 3], "input_shape": [3, 32, 32],
             "preprocess": {"scale": 1 / 255, "mean": [0.0, 0.5, 1.0], "std": [1.0, 1.0, 1.0], "layout": "NCHW"}}
    z = preprocess(cifar, np.full((1, 32, 32, 3), 255, dtype=np.uint8))
    np.testing.assert_allclose(z[0, :, 5, 5], [1.0, 0.5, 0.0], atol=1e-6)


# --------------------------------------------------------------------------------------- RepVGG


def test_repvgg_reparameterized_equals_multibranch():
    torch = pytest.importorskip("torch")
    from nercc.export.repvgg import PRESETS, build_multibranch, reparameterize

    model = build_multibranch(PRESETS["tiny"], seed=0)
    # A few training-mode passes give the BNs non-trivial running statistics; then random affine BN params.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 2 + 0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.eval()
    plain = reparameterize(model)
    assert all(isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU)) for m in plain.body)
    assert all(m.kernel_size == (3, 3) for m in plain.body if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        diff = (model(x) - plain(x)).abs().max().item()
    assert diff <= 1e-4
    # The identity branch exists where shapes allow, so the test covers all three branch kinds.
    assert any(block.identity is not None for block in model.blocks)


def test_repvgg_committed_onnx_accuracy_matches_metadata():
    path = model_dir("repvgg_cifar10") / "1" / "model.onnx"
    if not path.exists():
        pytest.skip(f"{path} not built yet (training runs in the background: `nercc export train-repvgg`)")
    model = OnnxModel("repvgg_cifar10", threads=0)
    info = model.info
    assert info.input_shape == (3, 32, 32) and info.raw_shape == (32, 32, 3) and info.trained
    x_raw, y = load_cifar10("test")
    # Every 5th image: 2000 images, 200 per class (the test split is sorted by class, so not the first 2000).
    x_raw, y = x_raw[::5], y[::5]
    probs = np.concatenate([model(preprocess(info, x_raw[i : i + 500])) for i in range(0, 2000, 500)])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(probs.argmax(1) == y))
    assert abs(accuracy - info.accuracy["top1"]) <= 0.015, (accuracy, info.accuracy)


def test_efficientnet_lite0_on_imagenet_samples():
    info = load_model_info("efficientnet_lite0")
    if not info.onnx_path.exists():
        pytest.skip(f"{info.onnx_path} is generated at setup (`nercc export efficientnet_lite0`)")
    raw, labels = load_imagenet_samples()
    probs = OnnxModel(info, threads=0)(preprocess(info, raw))
    assert probs.shape == (20, 1000)
    assert int(np.sum(probs.argmax(1) == labels)) >= 16  # real pretrained weights: 17/20 measured


# --------------------------------------------------------------------------------------- ONNX export


def test_tiny_vit_onnx_round_trip_dynamic_batch(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from nercc.export import common, vit

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    meta = vit.metadata("vit_tiny_patch16_224", "vit_tiny")
    raw, _ = load_imagenet_samples()
    x = preprocess(meta, raw[:3])
    path = tmp_path / "vit_tiny" / "1" / "model.onnx"
    size, diff = vit.export_model(model, meta, path, x)
    assert size == path.stat().st_size and diff <= 1e-4
    session = common.ort_session(path)
    wrapped = common.WithSoftmax(model).eval()
    for batch in (1, 3):
        (got,) = session.run(["probs"], {"input": x[:batch]})
        with torch.no_grad():
            expected = wrapped(torch.from_numpy(x[:batch])).numpy()
        assert got.shape == (batch, 1000)
        assert np.max(np.abs(got - expected)) <= 1e-4
    import onnx

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["probs"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic (dynamic) batch axis


def test_metadata_round_trip(tmp_path):
    info = load_model_info("lenet5")
    (tmp_path / "lenet5").mkdir()
    (tmp_path / "lenet5" / "nercc.json").write_text(json.dumps(info.to_json()))
    again = load_model_info("lenet5", repository=tmp_path)
    assert again.to_json() == info.to_json() and again.dir == tmp_path / "lenet5"


def test_reexport_leaves_the_tracked_metadata_alone(tmp_path):
    """`make test` re-runs `nercc export efficientnet_lite0`; a run that differs only in its measurement noise
    (ort_max_abs_diff) must not rewrite the committed nercc.json (git status stays clean); a real change must."""
    from nercc.export import common

    committed = model_dir("efficientnet_lite0") / "nercc.json"
    folder = tmp_path / "efficientnet_lite0"
    folder.mkdir()
    target = folder / "nercc.json"
    shutil.copy(committed, target)
    before = target.read_bytes()
    meta = json.loads(before)
    noisy = dict(meta, ort_max_abs_diff=meta["ort_max_abs_diff"] * 1.5 + 1e-7)
    assert common.write_metadata("efficientnet_lite0", noisy, tmp_path) == target
    assert target.read_bytes() == before
    changed = dict(noisy, onnx_bytes=meta["onnx_bytes"] + 1)
    common.write_metadata("efficientnet_lite0", changed, tmp_path)
    assert json.loads(target.read_text()) == changed  # a model property changed: written, measurements included
    target.unlink()
    common.write_metadata("efficientnet_lite0", noisy, tmp_path)
    assert json.loads(target.read_text()) == noisy
