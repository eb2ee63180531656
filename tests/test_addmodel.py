"""`nercc add-model`, `nercc export timm:ARCH` / export_module, and model identity, on real models and servers.

The model none of the team wrote: a small MLP trained here in numpy on synthetic 3-class "images" and written
with onnx.helper. Its input is named ``pixels`` with an NHWC layout [batch, 8, 8, 1] and its output is
``logits`` [batch, 3] (the built-in models: ``input`` NCHW, softmax ``probs``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nercc.addmodel import AddModelError, add_model, options  # noqa: E402
from nercc.models import file_sha256, read_model_info  # noqa: E402

N_CLASSES = 3


# ------------------------------------------------------------------------------------------------ a user's model
def make_data(n: int, seed: int):
    """Synthetic 8x8 gray "images": class c is a bright bar in row band c, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = rng.normal(0.0, 0.6, (n, 8, 8, 1)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 * c + 1: 2 * c + 3, :, 0] += 1.5
    return x, y.astype(np.int64)


def train_mlp(x, y, hidden=16, steps=300, lr=0.5, seed=0):
    """A one-hidden-layer MLP trained by full-batch gradient descent on softmax cross-entropy (numpy)."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    w1 = rng.normal(0, 0.2, (flat.shape[1], hidden)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = rng.normal(0, 0.2, (hidden, N_CLASSES)).astype(np.float32)
    b2 = np.zeros(N_CLASSES, np.float32)
    onehot = np.eye(N_CLASSES, dtype=np.float32)[y]
    for _ in range(steps):
        h = np.maximum(flat @ w1 + b1, 0)
        z = h @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        gh = (g @ w2.T) * (h > 0)
        w2 -= lr * h.T @ g
        b2 -= lr * g.sum(0)
        w1 -= lr * flat.T @ gh
        b1 -= lr * gh.sum(0)
    return w1, b1, w2, b2


def mlp_onnx(path: Path, weights, input_name="pixels", batch="n", input_dtype=TensorProto.FLOAT,
             extra_input=False, output_rank3=False) -> Path:
    """The MLP as ONNX (Reshape -> MatMul/Add/Relu -> MatMul/Add); variants for the bad-file tests."""
    w1, b1, w2, b2 = weights
    nodes = []
    src = input_name
    if input_dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT))
        src = "as_float"
    nodes += [helper.make_node("Reshape", [src, "flat_shape"], ["flat"]),
              helper.make_node("MatMul", ["flat", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
              helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["z0"])]
    out_shape = [batch, N_CLASSES]
    if output_rank3:
        nodes += [helper.make_node("Add", ["z0", "b2"], ["z1"]),
                  helper.make_node("Unsqueeze", ["z1", "axis1"], ["logits"])]
        out_shape = [batch, 1, N_CLASSES]
    else:
        nodes.append(helper.make_node("Add", ["z0", "b2"], ["logits"]))
    inputs = [helper.make_tensor_value_info(input_name, input_dtype, [batch, 8, 8, 1])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1]))
    inits = [numpy_helper.from_array(np.asarray([-1, 64], np.int64), "flat_shape"),
             numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2"),
             numpy_helper.from_array(np.asarray([1], np.int64), "axis1")]
    graph = helper.make_graph(nodes, "user_mlp", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """(folder with mlp.onnx, calibration.npz, a second version mlp_v2.onnx; the trained weights)."""
    folder = tmp_path_factory.mktemp("user_model")
    x, y = make_data(600, seed=1)
    weights = train_mlp(x, y)
    mlp_onnx(folder / "mlp.onnx", weights)
    mlp_onnx(folder / "mlp_v2.onnx", train_mlp(x, y, steps=50, seed=5))  # "another version" of the model
    calib_x, calib_y = make_data(96, seed=2)
    np.savez(folder / "calibration.npz", x=calib_x, y=calib_y)
    return folder, weights


def _env(repository: Path) -> dict:
    env = dict(os.environ)
    env["NERCC_MODEL_REPOSITORY"] = str(repository)
    return env


def nercc(*argv, repository: Path, timeout=600):
    return subprocess.run([sys.executable, "-m", "nercc", *map(str, argv)], capture_output=True, text=True,
                          env=_env(repository), timeout=timeout)


def _leftovers(repository: Path):
    return sorted(p.name for p in repository.iterdir())


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def added(user_model, tmp_path_factory):
    """`nercc add-model` of the user's MLP into a fresh model repository (tuned for N = 4, K = 2)."""
    folder, _ = user_model
    repository = tmp_path_factory.mktemp("repository")
    run = nercc("add-model", folder / "mlp.onnx", "--name", "user_mlp", "--output-kind", "logits",
                "--calibration", folder / "calibration.npz", "--workers", 4, "--inputs", 2, "--stragglers", "0,1",
                "--trials", 8, "--straggler-sets", 8, "--quiet", repository=repository)
    assert run.returncode == 0, run.stderr + run.stdout
    return repository, run.stdout


def test_add_model_writes_the_model_folder(added, user_model):
    repository, out = added
    folder = repository / "user_mlp"
    assert _leftovers(repository) == ["user_mlp"]  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ["1", "accuracy_user_mlp_N4_K2.csv",
                                                         "accuracy_user_mlp_N4_K2.json", "calibration.npz",
                                                         "config.pbtxt", "nercc.json", "tuning.json"]
    info = read_model_info(folder)
    assert (info.input_name, info.input_shape, info.output_name, info.n_classes) == ("pixels", (8, 8, 1), "logits", 3)
    assert info.output_kind == "logits" and info.raw_dtype == "float32" and info.preprocess is None
    assert info.onnx_sha256 == file_sha256(user_model[0] / "mlp.onnx") == file_sha256(info.onnx_path)
    assert info.accuracy["top1"] > 0.9  # the trained MLP, on labelled calibration inputs
    tuning = json.loads((folder / "tuning.json").read_text())
    assert [(e["n_inputs"], e["n_workers"], e["n_stragglers"]) for e in tuning["entries"]] == [(2, 4, 0), (2, 4, 1)]
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "pixels"' in config and info.onnx_sha256 in config
    # the accuracy table: MSE for BACC, NeRCC-0 and NeRCC at both S, RelAcc for this classifier
    assert re.search(r"^1\s+\S+±\S+\s+\S+±\S+\s+\S+±\S+\s+\d\.\d{4}", out, re.M), out


def test_demo_on_the_added_model(added, tmp_path):
    """`nercc demo --model X` runs every scheme on a real cluster serving the user's model: a table."""
    repository, _ = added
    saved = tmp_path / "demo.json"
    run = nercc("demo", "--model", "user_mlp", "--workers", 4, "--inputs", 2, "--batches", 12, "--warmup", 2,
                "--straggler", "none", "--deadline-ms", 500, "--schemes", "uncoded,nercc,bacc", "--save", saved,
                repository=repository)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-2000:]
    assert "user_mlp: N=4 workers, K=2" in run.stdout  # the printed table's title
    rows = {row["scheme"]: row for row in json.loads(saved.read_text())["table"]}  # the same table, saved
    assert set(rows) == {"uncoded", "nercc", "bacc"}, run.stdout
    assert float(rows["uncoded"]["MSE"]) == 0.0  # uncoded answers are f itself
    for scheme in ("nercc", "bacc"):
        mse, rel_acc, failed = float(rows[scheme]["MSE"]), float(rows[scheme]["RelAcc"]), int(rows[scheme]["failed"])
        assert np.isfinite(mse) and 0 < rel_acc <= 1.5 and failed == 0, rows[scheme]
    # logits are not probabilities: no answer was refused by the (0, 1) range check
    assert "outside [0, 1]" not in run.stdout + run.stderr


def test_curl_to_the_added_models_coded_endpoint(added):
    """The same model's `X_coded` endpoint on the master, called with curl over KServe v2 JSON: K raw (float32)
    inputs in, K decoded predictions out, close to the model's own logits."""
    from nercc.models import OnnxModel
    from nercc.serving import LocalCluster

    repository, _ = added
    info = read_model_info(repository / "user_mlp")
    x, _ = make_data(2, seed=4)
    body = {"inputs": [{"name": "RAW", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": {"scheme": "nercc", "deadline_ms": 2000, "policy": "all"}}
    with LocalCluster("user_mlp", n_workers=4, model_repository=repository, http=True) as cluster:
        run = subprocess.run(["curl", "-s", "-X", "POST", f"http://{cluster.master_http_url}/v2/models/user_mlp_coded/"
                              "infer", "-H", "Content-Type: application/json", "-d", json.dumps(body)],
                             capture_output=True, text=True, timeout=60)
    outputs = {o["name"]: o for o in json.loads(run.stdout)["outputs"]}
    assert outputs["PREDICTIONS"]["shape"] == [2, N_CLASSES]
    predictions = np.asarray(outputs["PREDICTIONS"]["data"], dtype=np.float32).reshape(2, N_CLASSES)
    assert outputs["ANSWERS_USED"]["data"] == [4] and outputs["ARRIVED"]["data"] == [0, 1, 2, 3]
    f_x = OnnxModel(info)(x)
    assert np.abs(predictions - f_x).max() < 0.5 * np.abs(f_x).max()  # decoded approximations of the logits
    assert (predictions.argmax(1) == f_x.argmax(1)).all()


def test_plan_reads_the_added_models_accuracy_table(added):
    """`nercc plan --model X` finds the RelAcc table add-model wrote into the model folder."""
    repository, _ = added
    run = nercc("plan", "--model", "user_mlp", "--slo-p99-ms", 50, "--min-relacc", 0.5, "--straggler",
                "bimodal:p=0.1,slow_ms=40", "--workers", 4, "--overheads", 2, "--answer-fractions", "0.75,1.0",
                "--deadlines-ms", "20", "--batches", 200, repository=repository)
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]
    assert "no user_mlp accuracy table" not in run.stdout + run.stderr


# ------------------------------------------------------------------------------------------------ bad input
def _bad_runs(folder: Path, weights, tmp: Path):
    """(what, argv after the model path, model file) of every bad model file or flag, with the expected words."""
    not_onnx = tmp / "notes.onnx"
    not_onnx.write_text("this is not a model")
    return [
        ("not ONNX", not_onnx, [], "not an ONNX model"),
        ("missing file", tmp / "nothing.onnx", [], "no such file"),
        ("no batch axis", mlp_onnx(tmp / "fixed.onnx", weights, batch=4), [], "no dynamic batch axis"),
        ("several inputs", mlp_onnx(tmp / "two.onnx", weights, extra_input=True), [], "2 inputs"),
        ("integer input", mlp_onnx(tmp / "int.onnx", weights, input_dtype=TensorProto.INT64), [],
         "integer int64"),
        ("output rank 3", mlp_onnx(tmp / "rank3.onnx", weights, output_rank3=True), [], "expected [batch, D]"),
        ("probabilities that are logits", folder / "mlp.onnx", ["--output-kind", "probabilities", "--calibration",
                                                               folder / "calibration.npz"], "not probability vectors"),
        ("no output kind, no calibration", folder / "mlp.onnx", [], "--output-kind is needed"),
        ("image spec that does not fit", folder / "mlp.onnx", ["--output-kind", "logits", "--image", "28,28"],
         "does not give the model's input shape"),
        ("mean without image", folder / "mlp.onnx", ["--output-kind", "logits", "--mean", "0.5"], "give --image"),
        ("calibration of another shape", folder / "mlp.onnx",
         ["--output-kind", "logits", "--calibration", _npz(tmp / "wrong.npz", np.zeros((5, 8, 8), np.float32))],
         "expected (n, 8, 8, 1)"),
        ("labels out of range", folder / "mlp.onnx",
         ["--calibration", _npz(tmp / "labels.npz", np.zeros((6, 8, 8, 1), np.float32), y=np.full(6, 7))],
         "labels must lie in [0, D = 3)"),
        ("reserved name", folder / "mlp.onnx", ["--output-kind", "logits", "--name", "x_encode"], "master's own"),
        ("built-in name", folder / "mlp.onnx", ["--output-kind", "logits", "--name", "lenet5"], "built-in model"),
        # fails after the folder was started (tuning needs K odd-indexed inputs): nothing may be left
        ("too few inputs to tune", folder / "mlp.onnx",
         ["--output-kind", "logits", "--inputs", 4, "--calibration",
          _npz(tmp / "few.npz", np.zeros((6, 8, 8, 1), np.float32))], "fewer than K = 4"),
    ]


def _npz(path: Path, x, y=None) -> Path:
    np.savez(path, **({"x": x} if y is None else {"x": x, "y": y}))
    return path


def test_every_bad_model_or_flag_is_named_and_nothing_is_left(user_model, tmp_path):
    folder, weights = user_model
    repository = tmp_path / "repository"
    repository.mkdir()
    for what, model, argv, words in _bad_runs(folder, weights, tmp_path):
        argv = [str(a) for a in argv]
        name = [] if "--name" in argv else ["--name", "user_model"]
        args = options(Path(model), **_parse(name + argv))
        with pytest.raises(AddModelError) as info:
            add_model(args, repository=repository)
        assert words in str(info.value), (what, str(info.value))
        assert _leftovers(repository) == [], what


def _parse(argv):
    import argparse

    from nercc.addmodel import add_options

    parser = argparse.ArgumentParser()
    parser.add_argument("--name")
    add_options(parser)
    settings = vars(parser.parse_args(argv))
    return {"name": settings.pop("name"), **settings}


def test_existing_name_needs_force(added, user_model):
    repository, _ = added
    folder, _ = user_model
    run = nercc("add-model", folder / "mlp.onnx", "--name", "user_mlp", "--output-kind", "logits",
                repository=repository)
    assert run.returncode == 2 and "exists" in run.stderr and "--force" in run.stderr
    assert _leftovers(repository) == ["user_mlp"]


# ------------------------------------------------------------------------------------------------ torch and timm
def test_export_module_and_timm_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from nercc.export import export_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    folder = export_module(net, torch.zeros(1, 3, 4), name="torch_reg", output_kind="regression",
                           repository=tmp_path)
    info = read_model_info(folder)
    assert (info.input_name, info.input_shape, info.output_name, info.output_kind) == ("input", (3, 4), "output",
                                                                                        "regression")
    # timm: a tiny architecture with random weights saved as the user's checkpoint; nothing downloaded
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    images = np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
    calibration = _npz(tmp_path / "imgs.npz", images, y=np.arange(8) % 5)
    run = nercc("export", "timm:test_resnet", "--checkpoint", checkpoint, "--name", "tiny_timm", "--out", tmp_path,
                "--image", "40,40,3", "--resize", 36, "--crop", 32, "--scale", 1 / 255, "--mean", "0.5,0.5,0.5",
                "--std", "0.25,0.25,0.25", "--calibration", calibration, "--no-tune", repository=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    info = read_model_info(tmp_path / "tiny_timm")
    assert info.input_shape == (3, 32, 32) and info.n_classes == 5 and info.output_kind == "logits"
    assert info.raw_shape == (40, 40, 3) and info.preprocess["crop"] == 32
    from nercc.models import OnnxModel
    from nercc.preprocessing import preprocess

    x = preprocess(info, images)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(OnnxModel(info)(x) - expected).max() < 1e-3  # the served ONNX is the checkpoint's network
    bad = nercc("export", "timm:test_resnet", "--name", "x", repository=tmp_path)
    assert bad.returncode == 2 and "--checkpoint" in bad.stderr


# ------------------------------------------------------------------------------------------------ identity
def test_worker_with_another_model_is_marked_down(added, user_model, tmp_path):
    """A cluster of the user's model plus one worker serving another version of it (same name, another ONNX):
    the client marks that worker down at connect, naming both hashes, and never decodes from it."""
    import asyncio

    from nercc.client import CodedClient
    from nercc.serving import LocalCluster

    repository, _ = added
    folder, _ = user_model
    other = tmp_path / "other"
    other.mkdir()
    add_model(options(folder / "mlp_v2.onnx", "user_mlp", output_kind="logits"), repository=other)
    ours, theirs = read_model_info(repository / "user_mlp"), read_model_info(other / "user_mlp")
    assert ours.onnx_sha256 != theirs.onnx_sha256
    x, _ = make_data(2, seed=3)

    async def run(master, workers):
        async with CodedClient(master, workers, model="user_mlp", model_dir=str(repository / "user_mlp"),
                               scheme="nercc", policy="all", n_inputs=2, deadline_ms=2000,
                               hard_timeout_ms=5000) as client:
            results = [await client.infer(x) for _ in range(3)]
            return client, results

    with LocalCluster("user_mlp", n_workers=3, model_repository=repository) as good, \
            LocalCluster("user_mlp", n_workers=1, model_repository=other) as wrong:
        workers = good.worker_urls + wrong.worker_urls
        client, results = asyncio.run(run(good.master_url, workers))
        assert client.expected_sha256 == ours.onnx_sha256
        assert set(client.identity_errors) == {3}
        error = client.identity_errors[3]
        assert ours.onnx_sha256 in error and theirs.onnx_sha256 in error and wrong.worker_urls[0] in error
        assert client.health.is_down(3)
        for result in results:
            assert 3 not in result.arrived and result.arrived == (0, 1, 2)
        # a probe keeps it down: it is reachable and ready, but still serves the other model
        async def probe():
            async with CodedClient(good.master_url, workers, model="user_mlp",
                                   model_dir=str(repository / "user_mlp"), n_inputs=2) as c:
                await c._probe(3)
                return c

        probed = asyncio.run(probe())
        assert probed.health.is_down(3) and "model identity mismatch" in probed.health.unavailable()[3]
        # the same workers without the stranger: nobody is marked down
        clean, _ = asyncio.run(run(good.master_url, good.worker_urls))
        assert clean.identity_errors == {} and not any(clean.health.is_down(i) for i in range(3))
