"""Triton model configs: generated configs parse as Triton ModelConfig protobufs, carry the interface's names
and shapes, and the configs committed in model_repository/ are what the generator writes today."""

from pathlib import Path

import pytest

from nercc.models import list_models
from nercc.paths import MODEL_NAMES, MODEL_REPOSITORY, PYTHON_BACKENDS
from nercc.serving.repository import (
    master_configs,
    master_model_names,
    read_model_meta,
    worker_config,
    write_master_models,
    write_repository,
    write_worker_model,
)

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def _parse(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def meta():
    return read_model_meta("lenet5")


def test_python_worker_config(meta):
    config = _parse(worker_config(meta, straggler="bimodal:p=0.1,slow_ms=40", seed=3, worker_index=7))
    assert config.name == "lenet5" and config.backend == "python" and config.max_batch_size > 0
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [1, 28, 28])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("probs", [10])]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"intra_op_threads": "1", "straggler": "bimodal:p=0.1,slow_ms=40", "seed": "3",
                      "worker_index": "7", "output_kind": "probabilities", "onnx_sha256": meta.onnx_sha256}
    # the model identity the clients check workers against is the ONNX file's own hash
    from nercc.models import file_sha256

    assert meta.onnx_sha256 == file_sha256(meta.onnx_path)


def test_native_onnxruntime_config(meta):
    config = _parse(worker_config(meta, native_onnxruntime=True))
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [1, 28, 28])]
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    with pytest.raises(ValueError, match="straggler"):
        worker_config(meta, native_onnxruntime=True, straggler="bimodal:p=0.1,slow_ms=40")


def test_master_configs(meta):
    configs = {name: _parse(text) for name, text in master_configs(meta, nercc_model_dir="../lenet5").items()}
    assert set(configs) == {"lenet5_preprocess", "lenet5_encoder", "lenet5_encode", "lenet5_coded",
                            "lenet5_coded_input", "lenet5_pipeline", "lenet5_coded_pipeline"}
    pre, enc, encode = configs["lenet5_preprocess"], configs["lenet5_encoder"], configs["lenet5_encode"]
    # K travels in Triton's batch axis, bounded so that Triton refuses an oversize request before the stub's copy
    assert pre.max_batch_size == enc.max_batch_size == encode.max_batch_size == 4096  # MAX_WORKERS (K <= N)
    assert pre.input[0].data_type == model_config_pb2.TYPE_UINT8 and list(pre.input[0].dims) == [28, 28]
    assert list(enc.input[0].dims) == [1, 28, 28] and list(enc.output[0].dims) == [1, 28, 28]
    # raw -> coded in one Python model (one stub hop), not an ensemble of two
    assert encode.backend == "python" and not encode.platform
    assert (encode.input[0].name, encode.output[0].name) == ("RAW", "CODED")
    assert encode.input[0].data_type == model_config_pb2.TYPE_UINT8 and list(encode.input[0].dims) == [28, 28]
    assert list(encode.output[0].dims) == [1, 28, 28]
    # a smaller byte limit lowers the bound: K * 3136 bytes (float32) <= max_request_bytes
    small = _parse(master_configs(meta, nercc_model_dir="../lenet5", max_request_bytes=3136 * 100)["lenet5_encode"])
    assert small.max_batch_size == 100


# the built-in models (a model added here with `nercc add-model` carries its worker config only)
@pytest.mark.parametrize("model", [m for m in list_models() if (MODEL_REPOSITORY / m / "config.pbtxt").exists()
                                   and m in MODEL_NAMES])
def test_committed_configs_are_generated_ones(model, tmp_path):
    """model_repository/ holds the native-ORT worker config + master models; regenerate and compare."""
    meta = read_model_meta(model)
    if meta.onnx_path.exists():
        write_repository(tmp_path, [model], role="all", native_onnxruntime=True)
    else:
        # ImageNet models' ONNX is made at setup, not committed: compare the config texts alone
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.pbtxt").write_text(worker_config(meta, native_onnxruntime=True))
        for name, text in master_configs(meta, nercc_model_dir=str(meta.dir)).items():
            (tmp_path / name).mkdir()
            (tmp_path / name / "config.pbtxt").write_text(text)
    for folder in (model, *master_model_names(model)):
        committed = MODEL_REPOSITORY / folder / "config.pbtxt"
        assert committed.exists(), f"{committed} missing: run `nercc serve --write-repository model_repository " \
                                   f"--model {model} --native-onnxruntime`"
        generated = tmp_path / folder / "config.pbtxt"
        ours, fresh = _parse(committed.read_text()), _parse(generated.read_text())
        # path parameters differ (relative in the checkout, absolute elsewhere); everything else must match
        paths = ("nercc_model_dir", "nercc_repo_root", "onnx_path")
        ours_params = {k: v.string_value for k, v in ours.parameters.items() if k not in paths}
        fresh_params = {k: v.string_value for k, v in fresh.parameters.items() if k not in paths}
        assert ours_params == fresh_params, folder
        ours.ClearField("parameters")
        fresh.ClearField("parameters")
        assert ours == fresh, folder
    for backend, folder in (("preprocess", f"{model}_preprocess"), ("encoder", f"{model}_encoder"),
                            ("encoder", f"{model}_encode"), ("coded", f"{model}_coded"),
                            ("coded", f"{model}_coded_input")):
        link = MODEL_REPOSITORY / folder / "1" / "model.py"
        assert link.is_symlink() and link.resolve() == (PYTHON_BACKENDS / backend / "model.py").resolve()


def test_runtime_folders_use_absolute_links(meta, tmp_path):
    folder = write_worker_model(tmp_path, meta, absolute_paths=True, straggler="none")
    assert Path(str((folder / "1" / "model.onnx").readlink())).is_absolute()
    assert (folder / "1" / "model.py").resolve() == (PYTHON_BACKENDS / "onnx_worker" / "model.py").resolve()
    folders = write_master_models(tmp_path, meta, absolute_paths=True)
    encoder = _parse((folders[1] / "config.pbtxt").read_text())
    assert Path(encoder.parameters["nercc_model_dir"].string_value) == meta.dir


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nercc export"):
        read_model_meta("no_such_model", tmp_path)
    with pytest.raises(ValueError, match="role"):
        write_repository(tmp_path, ["lenet5"], role="both")


def test_nercc_serve_write_repository_cli(tmp_path, capsys):
    from nercc.cli import main

    assert main(["serve", "--write-repository", str(tmp_path), "--model", "lenet5", "--role", "worker",
                 "--native-onnxruntime"]) == 0
    assert "wrote 1 model folder(s)" in capsys.readouterr().out
    assert _parse((tmp_path / "lenet5" / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"
    assert (tmp_path / "lenet5" / "1" / "model.onnx").resolve() == read_model_meta("lenet5").onnx_path
    assert not (tmp_path / "lenet5_encoder").exists()
    assert main(["serve", "--write-repository", str(tmp_path), "--model", "lenet5", "--role", "master"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["lenet5", *master_model_names("lenet5")])


def test_nercc_serve_rejects_a_bad_straggler_profile(capsys):
    from nercc.cli import main

    assert main(["serve", "--workers", "1", "--straggler", "bimodal:p=0.1"]) == 2
    assert "slow_ms" in capsys.readouterr().err


def test_master_instances_set_the_instance_count(meta):
    configs = {name: _parse(text)
               for name, text in master_configs(meta, nercc_model_dir="../lenet5", master_instances=3).items()}
    for name in ("lenet5_preprocess", "lenet5_encoder", "lenet5_encode"):
        assert [g.count for g in configs[name].instance_group] == [3], name
    defaults = {name: _parse(text) for name, text in master_configs(meta, nercc_model_dir="../lenet5").items()}
    assert [g.count for g in defaults["lenet5_encoder"].instance_group] == [1]
    with pytest.raises(ValueError, match="master_instances"):
        master_configs(meta, nercc_model_dir="../lenet5", master_instances=0)


ENV_IN_MODEL_DIR = "$$TRITON_MODEL_DIRECTORY/nercc-env.tar.gz"


def test_execution_env_goes_into_every_python_backend_config(tmp_path):
    """--execution-env: EXECUTION_ENV_PATH in the Python-backend configs (worker, preprocess, encoder, encode),
    none in a native onnxruntime config; the configs still parse; without it no config names one."""
    from nercc.cli import main

    assert main(["serve", "--write-repository", str(tmp_path / "py"), "--model", "lenet5", "--copy",
                 "--execution-env", ENV_IN_MODEL_DIR]) == 0
    configs = {p.parent.name: _parse(p.read_text()) for p in (tmp_path / "py").glob("*/config.pbtxt")}
    assert set(configs) == {"lenet5", *master_model_names("lenet5")}
    configs = {name: c for name, c in configs.items() if c.platform != "ensemble"}  # ensembles run no Python
    assert set(configs) == {"lenet5", "lenet5_preprocess", "lenet5_encoder", "lenet5_encode", "lenet5_coded",
                            "lenet5_coded_input"}
    for name, config in configs.items():
        assert config.backend == "python", name
        assert config.parameters["EXECUTION_ENV_PATH"].string_value == ENV_IN_MODEL_DIR, name
    write_repository(tmp_path / "native", ["lenet5"], role="worker", native_onnxruntime=True,
                     execution_env="/opt/nercc/env.tar.gz")
    assert "EXECUTION_ENV_PATH" not in _parse((tmp_path / "native" / "lenet5" / "config.pbtxt").read_text()).parameters
    write_repository(tmp_path / "default", ["lenet5"])
    assert not [p for p in (tmp_path / "default").glob("*/config.pbtxt") if "EXECUTION_ENV_PATH" in p.read_text()]


def test_execution_env_errors_name_the_problem(tmp_path, capsys):
    from nercc.cli import main

    assert main(["serve", "--write-repository", str(tmp_path), "--execution-env", "env.tar.gz"]) == 2
    assert "absolute path or start with $$TRITON_MODEL_DIRECTORY/" in capsys.readouterr().err
    # a runtime cluster runs on this host: an absolute environment must exist here (checked before any start)
    assert main(["serve", "--workers", "1", "--execution-env", str(tmp_path / "missing.tar.gz")]) == 2
    assert "does not exist on this host" in capsys.readouterr().err
    assert main(["master", "--port", "auto", "--execution-env", str(tmp_path / "missing.tar.gz")]) == 2
    assert "does not exist on this host" in capsys.readouterr().err


def test_coded_endpoint_and_ensemble_configs(meta):
    configs = {name: _parse(text) for name, text in master_configs(
        meta, nercc_model_dir="../lenet5", coded_instances=3, worker_urls=["w0:8001", " w1:8001"]).items()}
    coded = configs["lenet5_coded"]
    # no batch axis: the outputs have different first dimensions (K, |F|, 1)
    assert coded.backend == "python" and coded.max_batch_size == 0 and coded.instance_group[0].count == 3
    assert (coded.input[0].name, list(coded.input[0].dims)) == ("RAW", [-1, 28, 28])
    assert [(t.name, list(t.dims)) for t in coded.output] == [
        ("PREDICTIONS", [-1, 10]), ("EXACT", [-1]), ("ANSWERS_USED", [1]), ("ARRIVED", [-1]), ("LATE", [1])]
    assert coded.parameters["worker_urls"].string_value == "w0:8001,w1:8001"
    assert coded.parameters["model_name"].string_value == "lenet5"
    assert configs["lenet5_coded_input"].input[0].data_type == model_config_pb2.TYPE_FP32
    assert configs["lenet5_coded_input"].instance_group[0].count == 1
    pipeline = configs["lenet5_pipeline"]
    assert pipeline.platform == "ensemble" and [s.model_name for s in pipeline.ensemble_scheduling.step] == [
        "lenet5_preprocess", "lenet5_encoder"]
    assert [s.model_name for s in configs["lenet5_coded_pipeline"].ensemble_scheduling.step] == [
        "lenet5_preprocess", "lenet5_coded_input"]
    with pytest.raises(ValueError, match="coded_instances"):
        master_configs(meta, nercc_model_dir="..", coded_instances=0)
    with pytest.raises(ValueError, match="host:port"):
        master_configs(meta, nercc_model_dir="..", worker_urls=["nohost"])
