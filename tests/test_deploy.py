"""`nercc deploy k8s`: every generated manifest validates against the Kubernetes schemas (offline, the
`kubernetes-validate` package's bundled schemas), hangs together (selectors, the headless Service, DNS names
in urls.json, probes, GPU limits, TLS), and the Containerfile's commands exist in the package and run.

Nothing here talks to a cluster or builds an image: that is stated in docs/deploy.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from nercc.cli import COMMANDS, command_parser, main  # noqa: E402
from nercc.paths import REPO_ROOT  # noqa: E402
from nercc.serving.urls import parse_urls  # noqa: E402

MODEL = "lenet5"
#: The oldest version that has the pod-index label the workers read (1.28) and the newest bundled one.
K8S_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


def _deploy(tmp_path, *extra):
    out = tmp_path / "k8s"
    assert main(["deploy", "k8s", "--model", MODEL, "--out", str(out), *extra]) == 0
    docs = {}
    for path in sorted(out.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out, docs


def _objects(docs):
    return {(d["kind"], d["metadata"]["name"]): d for ds in docs.values() for d in ds}


@pytest.fixture
def tls_files(tmp_path):
    pytest.importorskip("cryptography")
    from tlsca import make_ca

    return make_ca(tmp_path / "tls", hosts=["nercc-master", "localhost"])


@pytest.mark.parametrize("flags", [["--workers", "3"],
                                   ["--workers", "12", "--gpus-per-worker", "1", "--namespace", "serving"],
                                   ["--workers", "4", "--straggler", "bimodal:p=0.1,slow_ms=40", "--masters", "3"]])
def test_every_manifest_validates_against_the_kubernetes_schemas(tmp_path, flags):
    _, docs = _deploy(tmp_path, *flags)
    assert set(docs) == {"config.yaml", "workers.yaml", "masters.yaml"}
    for version in K8S_VERSIONS:
        for objects in docs.values():
            for obj in objects:
                kubernetes_validate.validate(obj, version, strict=True)  # raises with the field on any error


def test_schema_check_catches_a_broken_manifest(tmp_path):
    _, docs = _deploy(tmp_path, "--workers", "2")
    statefulset = _objects(docs)["StatefulSet", "nercc-worker"]
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSIONS[-1], strict=True)


def test_workers_masters_services_and_urls_hang_together(tmp_path):
    _, docs = _deploy(tmp_path, "--workers", "5", "--gpus-per-worker", "2")
    objs = _objects(docs)
    sts, headless = objs["StatefulSet", "nercc-worker"], objs["Service", "nercc-workers"]
    assert sts["spec"]["replicas"] == 5 and sts["spec"]["serviceName"] == "nercc-workers"
    assert headless["spec"]["clusterIP"] == "None"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"] == pod_labels
    assert all(pod_labels[k] == v for k, v in headless["spec"]["selector"].items())
    dep, svc = objs["Deployment", "nercc-master"], objs["Service", "nercc-master"]
    assert dep["spec"]["replicas"] == 2
    assert all(dep["spec"]["template"]["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())
    assert not set(svc["spec"]["selector"].items()) <= set(pod_labels.items()), "master Service would pick workers"
    for pod in (sts, dep):
        container = pod["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert pod["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"
        assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in str(dep)
    urls = parse_urls(yaml.safe_load(objs["ConfigMap", "nercc-config"]["data"]["urls.json"]))
    assert urls.worker_urls == [f"nercc-worker-{i}.nercc-workers:8001" for i in range(5)]
    assert urls.master_urls == ["nercc-master:8001"]
    tuning = yaml.safe_load(objs["ConfigMap", "nercc-config"]["data"]["tuning.json"])
    assert tuning == yaml.safe_load((REPO_ROOT / "model_repository" / MODEL / "tuning.json").read_text())


def test_cpu_workers_have_no_gpu_limit(tmp_path):
    _, docs = _deploy(tmp_path, "--workers", "2")
    assert "nvidia.com/gpu" not in str(docs)


def test_tls_secret_from_files_and_mounted_where_the_servers_read_it(tmp_path, tls_files):
    _, docs = _deploy(tmp_path, "--workers", "2", "--tls-cert", str(tls_files["server"]),
                      "--tls-key", str(tls_files["server-key"]), "--tls-ca", str(tls_files["ca"]))
    for version in K8S_VERSIONS:
        for obj in docs["tls-secret.yaml"]:
            kubernetes_validate.validate(obj, version, strict=True)
    objs = _objects(docs)
    secret = objs["Secret", "nercc-tls"]
    assert secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["ca.crt"]) == tls_files["ca"].read_bytes()
    assert base64.b64decode(secret["data"]["tls.key"]) == tls_files["server-key"].read_bytes()
    for kind, name in (("StatefulSet", "nercc-worker"), ("Deployment", "nercc-master")):
        spec = objs[kind, name]["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls")["mountPath"]
        for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--tls-ca", "ca.crt")):
            assert args[args.index(flag) + 1] == f"{mount}/{key}"
        assert any(v.get("secret", {}).get("secretName") == "nercc-tls" for v in spec["volumes"])


def test_pod_command_lines_parse_with_nercc_own_parsers(tmp_path):
    _, docs = _deploy(tmp_path, "--workers", "3", "--straggler", "bimodal:p=0.1,slow_ms=40", "--tls-secret", "x",
                      "--tls-mutual")
    objs = _objects(docs)
    for kind, name, role in (("StatefulSet", "nercc-worker", "worker"), ("Deployment", "nercc-master", "master")):
        container = objs[kind, name]["spec"]["template"]["spec"]["containers"][0]
        argv = container["args"]
        assert argv[:2] == ["nercc", role]
        # Kubernetes expands $(VAR) from the container's env before the command runs
        env = {e["name"] for e in container.get("env", [])}
        for var in re.findall(r"\$\((\w+)\)", " ".join(argv)):
            assert var in env, f"{var} is used in the command line but not defined in env"
        argv = [re.sub(r"\$\(\w+\)", "2", a) for a in argv]
        _, parser = command_parser(role)
        args = parser.parse_args(argv[2:])
        assert args.host == "0.0.0.0" and args.port == 8001 and args.metrics_port == 8002
        assert args.tls_ca is not None and args.repository == Path("/models")
        if role == "worker":
            assert args.index == 2 and args.straggler == "bimodal:p=0.1,slow_ms=40"
        else:
            assert args.workers == 3


def _containerfile_instructions(text):
    """(instruction, argument) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [tuple(line.split(None, 1)) for line in joined.splitlines() if line.strip()]


def test_containerfile_commands_exist_and_run(tmp_path):
    out, _ = _deploy(tmp_path, "--workers", "2", "--gpus-per-worker", "1")
    steps = _containerfile_instructions((out / "Containerfile").read_text())
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvcr.io/nvidia/tritonserver:")
    for instruction, argument in steps:
        if instruction == "COPY":
            *sources, _ = argument.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the checkout"
        if instruction == "RUN" and "pip install" in argument:
            for extra in re.findall(r"\[(\w+)\]\"", argument.split("-e", 1)[1].split()[0]):
                assert f"\n{extra} = [" in (REPO_ROOT / "pyproject.toml").read_text(), f"no extra {extra!r}"
    nercc_runs = [shlex.split(a) for i, a in steps if i == "RUN" and a.startswith("nercc ")]
    cmd = [json_arg for i, a in steps if i == "CMD" for json_arg in json.loads(a)]
    assert len(nercc_runs) == 2 and cmd[0] == "nercc"
    for argv in nercc_runs + [cmd]:
        assert argv[1] in COMMANDS
        command_parser(argv[1])[1].parse_args(argv[2:])
    # the build steps themselves, run here into a temporary folder in place of /models and /models-gpu
    for argv in nercc_runs:
        argv = [str(tmp_path / a.lstrip("/")) if a in ("/models", "/models-gpu") else a for a in argv]
        done = subprocess.run([sys.executable, "-m", "nercc", *argv[1:]], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / f"{MODEL}_encoder" / "tuning.json").is_file()  # where the ConfigMap is mounted
    assert "KIND_GPU" in (tmp_path / "models-gpu" / MODEL / "config.pbtxt").read_text()
    assert not [p for p in (tmp_path / "models").rglob("*") if p.is_symlink()]


@pytest.mark.parametrize("flags, needle", [
    (["--workers", "0"], "--workers must be >= 1"),
    (["--workers", "2", "--gpus-per-worker", "1", "--straggler", "bimodal:p=0.1,slow_ms=40"], "straggler"),
    (["--workers", "2", "--tls-cert", "/nonexistent.pem", "--tls-key", "/x.pem"], "nonexistent"),
    (["--workers", "2", "--model", "nosuchmodel"], "nosuchmodel"),
])
def test_bad_deploy_options_are_clear_errors(tmp_path, capsys, flags, needle):
    assert main(["deploy", "k8s", "--out", str(tmp_path / "o"), *flags]) == 2
    assert needle in capsys.readouterr().err


def test_gpu_bench_runs_its_whole_path_on_a_cpu(tmp_path):
    """bench/device/gpu_bench.py (what bench/device/run.sh runs on a GPU) end to end, tiny, on the CPU."""
    pytest.importorskip("torch")
    from nercc.models import load_model_info

    if not load_model_info("efficientnet_lite0").onnx_path.exists():
        pytest.skip("efficientnet_lite0 not exported (make test exports it)")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "device" / "gpu_bench.py"), "--device", "cpu",
                           "--quick", "--models", "efficientnet_lite0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                             "NERCC_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_bench.json").read_text())["reports"][0]
    assert report["export"]["ort_vs_torch_max_abs"] < 1e-4
    assert set(report["accuracy"]["results"]) == {"0", "2"}
    assert [s["n_workers"] for s in report["sharing"]] == [1, 6]
    assert "| S | BACC MSE" in (tmp_path / "summary.md").read_text()


def test_gpu_extra_is_onnxruntime_gpu_and_kept_out_of_all():
    """onnxruntime-gpu and onnxruntime install the same module: the gpu extra must never come with `all`."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    gpu = re.search(r"^gpu = \[(.*?)\]", text, re.S | re.M)
    assert gpu and "onnxruntime-gpu" in gpu.group(1)
    everything = re.search(r'^all = \["nercc\[(.*?)\]"\]', text, re.M)
    assert everything and "gpu" not in everything.group(1).split(",")
    deploy = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert "pip uninstall -y onnxruntime && pip install -e '.[serve,gpu]'" in deploy
