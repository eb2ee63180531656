"""Servers on hosts of their own: `nercc worker` / `nercc master`, portable repositories, urls.json, TLS.

Real tritonserver processes started through the real command line; one portable repository
(`nercc serve --write-repository DIR --copy`) serves a master and two workers, each with its own index and
straggler profile from its command line, over mutual TLS with a throwaway CA (`cryptography`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nercc.serving.urls import describe, parse_urls, read_urls, write_urls

MODEL = "lenet5"


# ---------------------------------------------------------------------------------------------------------
# urls.json (no servers)


def test_urls_file_round_trip_and_old_single_master_form(tmp_path):
    path = write_urls(tmp_path / "urls.json", describe(MODEL, ["10.0.0.1:8001", "10.0.0.9:8001"],
                                                        ["10.0.0.2:8001", "10.0.0.3:8001"], tls=True, seed=3))
    cluster = read_urls(path)
    assert cluster.master_urls == ["10.0.0.1:8001", "10.0.0.9:8001"] and cluster.master_url == "10.0.0.1:8001"
    assert cluster.worker_urls == ["10.0.0.2:8001", "10.0.0.3:8001"] and cluster.tls and cluster.extra == {"seed": 3}
    old = parse_urls({"model": MODEL, "master_url": "127.0.0.1:9000", "worker_urls": ["127.0.0.1:9001"]})
    assert old.master_urls == ["127.0.0.1:9000"] and not old.tls


@pytest.mark.parametrize("data, needle", [
    ({"master_url": "h:1"}, "worker_urls"),
    ({"worker_urls": []}, "worker_urls"),
    ({"worker_urls": ["h:1", "h:1"]}, "more than once"),
    ({"worker_urls": ["nohost"]}, "worker_urls[0]"),
    ({"worker_urls": ["h:70000"]}, "1..65535"),
    ({"worker_urls": ["h:1"], "master_urls": "h:2"}, "master_urls"),
])
def test_bad_urls_file_names_the_field(data, needle):
    with pytest.raises(ValueError, match=None) as info:
        parse_urls(data, "urls.json")
    assert needle in str(info.value) and "urls.json" in str(info.value)


def test_missing_urls_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--urls-file"):
        read_urls(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------------------
# portable repository (no servers)


def test_portable_repository_has_real_files_and_no_host_paths(tmp_path):
    from nercc.cli import main

    dest = tmp_path / "repo"
    assert main(["serve", "--write-repository", str(dest), "--copy", "--model", MODEL]) == 0
    files = [p for p in dest.rglob("*") if p.is_file() or p.is_symlink()]
    assert not [p for p in files if p.is_symlink()], "a portable repository holds no links"
    for path in files:
        if path.suffix in (".pbtxt", ".json", ".py"):
            text = path.read_text()
            assert str(Path.home()) not in text and "/work/" not in text and str(tmp_path) not in text, path
    for model in (MODEL, f"{MODEL}_preprocess", f"{MODEL}_encoder"):
        assert (dest / model / "nercc.json").is_file() and (dest / model / "1" / "model.py").is_file()
    assert (dest / MODEL / "1" / "model.onnx").stat().st_size > 1000
    # moved elsewhere it is still whole (nothing points back at where it was written)
    moved = tmp_path / "elsewhere"
    dest.rename(moved)
    from nercc.serving.repository import repository_model_meta

    assert repository_model_meta(moved, MODEL).input_shape == (1, 28, 28)


def test_gpu_configs_need_the_native_backend(tmp_path, capsys):
    from nercc.cli import main

    assert main(["serve", "--write-repository", str(tmp_path / "r"), "--gpu", "--model", MODEL]) == 2
    assert "native_onnxruntime" in capsys.readouterr().err
    assert main(["serve", "--write-repository", str(tmp_path / "r"), "--gpu", "--native-onnxruntime",
                 "--role", "worker", "--model", MODEL]) == 0
    text = (tmp_path / "r" / MODEL / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in text and "dynamic_batching" in text and 'platform: "onnxruntime_onnx"' in text


def test_worker_device_choice_follows_the_installed_onnxruntime():
    from nercc.serving.backend_utils import onnxruntime_providers, worker_setting

    cpu_only, with_cuda = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers("auto", cpu_only) == ["CPUExecutionProvider"]
    assert onnxruntime_providers("auto", with_cuda) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers("cpu", with_cuda) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="gpu extra"):
        onnxruntime_providers("cuda", cpu_only)
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        onnxruntime_providers("tpu", cpu_only)
    config = {"parameters": {"straggler": {"string_value": "none"}, "worker_index": {"string_value": "0"}}}
    env = {"NERCC_STRAGGLER": "bimodal:p=1,slow_ms=5", "NERCC_WORKER_INDEX": ""}
    assert worker_setting(config, "straggler", environ=env) == "bimodal:p=1,slow_ms=5"  # environment wins
    assert worker_setting(config, "worker_index", environ=env) == "0"  # empty means unset
    assert worker_setting(config, "device", "auto", environ={}) == "auto"


def test_node_options_are_checked_before_anything_starts(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "nercc", *argv], capture_output=True, text=True, timeout=60)

    out = run("worker", "--port", "99999")
    assert out.returncode == 2 and "1..65535" in out.stderr
    out = run("worker", "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "k.pem"))
    assert out.returncode == 2 and "missing.pem does not exist" in out.stderr
    out = run("worker", "--tls-ca", str(tmp_path / "ca.pem"))
    assert out.returncode == 2 and "--tls-ca needs --tls-cert" in out.stderr
    out = run("master", "--workers", "0")
    assert out.returncode == 2 and "--workers must be >= 1" in out.stderr
    (tmp_path / "bad.key").write_text("a,b\n")
    out = run("worker", "--admin-key-file", str(tmp_path / "bad.key"))
    assert out.returncode == 2 and "bad.key: the key must be one non-empty word" in out.stderr


def test_admin_key_file_is_made_once_and_shared(tmp_path):
    from nercc.serving.node import admin_key_from_file

    path = tmp_path / "keys" / "admin.key"
    key = admin_key_from_file(path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == 32
    assert admin_key_from_file(path) == key  # the next node reads the same key


# ---------------------------------------------------------------------------------------------------------
# real servers: one portable repository, a master and two workers, mutual TLS

tritonclient = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("cryptography")
from tritonclient.utils import InferenceServerException  # noqa: E402

from nercc.serving.cluster import ClusterError, find_tritonserver, leftover_shm, running_processes  # noqa: E402


def _tritonserver_or_skip():
    try:
        find_tritonserver()
    except ClusterError as exc:  # pragma: no cover - a machine without the serve extra
        pytest.skip(str(exc))


class Node:
    """`nercc worker|master ...` as a subprocess; its urls file tells where it listens once ready."""

    def __init__(self, role, argv, folder: Path, env=None):
        self.urls_file = folder / f"{role}.json"
        self.log = open(folder / f"{role}.out", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "nercc", role.split("-")[0], *argv,
                                      "--urls-file", str(self.urls_file)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout_s=120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while not self.urls_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise AssertionError(f"node not ready (exit {self.proc.poll()}):\n{self.log.read()[-3000:]}")
            time.sleep(0.1)
        time.sleep(0.05)
        return json.loads(self.urls_file.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory):
    _tritonserver_or_skip()
    from tlsca import make_ca

    from nercc.cli import main

    folder = tmp_path_factory.mktemp("multihost")
    tls = make_ca(folder / "tls", hosts=["127.0.0.1", "localhost"])
    repository = folder / "repo"
    assert main(["serve", "--write-repository", str(repository), "--copy", "--model", MODEL]) == 0
    common = ["--repository", str(repository), "--model", MODEL, "--port", "auto", "--http-port", "auto",
              "--metrics-port", "auto", "--tls-cert", str(tls["server"]), "--tls-key", str(tls["server-key"]),
              "--tls-ca", str(tls["ca"])]
    key_file = folder / "admin.key"  # master and worker 0 share a key file; worker 1 makes and prints its own key
    nodes = {
        "master": Node("master", common + ["--workers", "2", "--admin-key-file", str(key_file)], folder),
        "worker-0": Node("worker-0", common + ["--index", "0", "--admin-key-file", str(key_file)], folder),
        # worker 1 straggles on every request: its delay comes from its own command line, not the repository
        "worker-1": Node("worker-1", common + ["--index", "1", "--straggler", "bimodal:p=1,slow_ms=60"], folder),
    }
    try:
        info = {role: node.wait_ready() for role, node in nodes.items()}
        yield {"nodes": nodes, "info": info, "tls": tls, "folder": folder, "key_file": key_file}
    finally:
        codes = {role: node.stop() for role, node in nodes.items()}
    assert codes == {role: 0 for role in nodes}, f"nodes did not stop cleanly on SIGTERM: {codes}"


def _client(url, tls, cert="client"):
    kw = {"ssl": True, "root_certificates": str(tls["ca"])}
    if cert:
        kw.update(private_key=str(tls[f"{cert}-key"]), certificate_chain=str(tls[cert]))
    return tritonclient.InferenceServerClient(url, **kw)


def _infer(client, model, name, array, output, **kw):
    tensor = tritonclient.InferInput(name, list(array.shape), {np.float32: "FP32", np.uint8: "UINT8"}[array.dtype.type])
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor], **kw).as_numpy(output)


def test_nodes_write_what_the_clients_need(secure_cluster):
    info = secure_cluster["info"]
    assert info["worker-1"]["index"] == 1 and info["master"]["role"] == "master"
    assert all(node["tls"] for node in info.values())
    urls = describe(MODEL, [info["master"]["url"]], [info["worker-0"]["url"], info["worker-1"]["url"]], tls=True)
    assert read_urls(write_urls(secure_cluster["folder"] / "urls.json", urls)).worker_urls[1] == info["worker-1"]["url"]


def test_nodes_print_the_admin_key_or_its_file(secure_cluster):
    from nercc.serving.cluster import admin_headers

    nodes, key_file = secure_cluster["nodes"], secure_cluster["key_file"]
    key = key_file.read_text().strip()
    outputs = {}
    for role in ("master", "worker-0", "worker-1"):
        nodes[role].log.seek(0)
        outputs[role] = nodes[role].log.read()
    assert f"nercc-admin-key: the key in {key_file}" in outputs["master"] and key not in outputs["master"]
    printed = re.search(r"nercc-admin-key: ([0-9a-f]{32})", outputs["worker-1"])
    assert printed and printed.group(1) != key
    tls = secure_cluster["tls"]
    for role, admin_key in (("master", key), ("worker-0", key), ("worker-1", printed.group(1))):
        client = _client(secure_cluster["info"][role]["url"], tls)
        with pytest.raises(InferenceServerException, match="(?i)restricted"):
            client.get_system_shared_memory_status()
        assert client.get_system_shared_memory_status(headers=admin_headers(admin_key, "grpc")) is not None
        client.close()


def test_coded_round_trip_over_mutual_tls_from_one_repository(secure_cluster):
    from nercc.coding import NeRCC
    from nercc.models import OnnxModel

    info, tls = secure_cluster["info"], secure_cluster["tls"]
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    master = _client(info["master"]["url"], tls)
    coded = _infer(master, f"{MODEL}_encoder", "INPUT", x, "CODED",
                   parameters={"scheme": "nercc", "n_workers": 2, "lam_enc": 0.0})
    master.close()
    expected = NeRCC(n_inputs=2, n_workers=2, lam_enc=0.0, lam_dec=0.0).encode(x.astype(np.float64))
    np.testing.assert_allclose(coded, expected, rtol=1e-5, atol=1e-5)
    local = OnnxModel(MODEL, threads=1)
    latencies = []
    for i in range(2):
        worker = _client(info[f"worker-{i}"]["url"], tls)
        _infer(worker, MODEL, "input", coded[i:i + 1], "probs")  # connection, handshake, first run: not timed
        t0 = time.perf_counter()
        probs = _infer(worker, MODEL, "input", coded[i:i + 1], "probs")
        latencies.append(1e3 * (time.perf_counter() - t0))
        worker.close()
        np.testing.assert_allclose(probs, local(coded[i:i + 1]), rtol=1e-4, atol=1e-6)
    # the same repository, different per-worker settings: only worker 1 injects its 60 ms delay
    assert latencies[1] >= 55.0 and latencies[0] < 55.0, latencies


def test_master_reads_the_tuning_profile_copied_into_the_repository(secure_cluster):
    from nercc.coding import NeRCC
    from nercc.models import load_model_info
    from nercc.profiles import lookup

    x = np.random.default_rng(1).normal(size=(4, 1, 28, 28)).astype(np.float32)
    master = _client(secure_cluster["info"]["master"]["url"], secure_cluster["tls"])
    coded = _infer(master, f"{MODEL}_encoder", "INPUT", x, "CODED", parameters={"n_workers": 12, "n_stragglers": 2})
    master.close()
    lam_enc, _ = lookup(load_model_info(MODEL).dir, 4, 12, 2)
    local = NeRCC(n_inputs=4, n_workers=12, lam_enc=lam_enc).encode(x)
    np.testing.assert_allclose(coded, local, rtol=0, atol=1e-5 * np.abs(x).max())


@pytest.mark.parametrize("cert, ca, what", [(None, "ca", "no client certificate"),
                                            ("stray", "ca", "client certificate from another CA"),
                                            ("client", "other-ca", "server not trusted by the client")])
def test_tls_refuses_the_wrong_party(secure_cluster, cert, ca, what):
    info, tls = secure_cluster["info"], dict(secure_cluster["tls"])
    tls["ca"] = tls[ca]
    client = _client(info["worker-0"]["url"], tls, cert=cert)
    with pytest.raises(InferenceServerException):
        _infer(client, MODEL, "input", np.zeros((1, 1, 28, 28), np.float32), "probs", client_timeout=5.0)
    client.close()


def test_plaintext_client_is_refused(secure_cluster):
    client = tritonclient.InferenceServerClient(secure_cluster["info"]["worker-0"]["url"])
    with pytest.raises(InferenceServerException):
        client.is_server_ready(client_timeout=5.0)
    client.close()


def test_metrics_are_on_by_default_and_count_requests(secure_cluster):
    import urllib.request

    url = secure_cluster["info"]["worker-0"]["metrics_url"]
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    lines = [line for line in text.splitlines()
             if line.startswith("nv_inference_request_success{") and f'model="{MODEL}"' in line]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 1, lines
    health = secure_cluster["info"]["worker-0"]["http_url"]
    assert urllib.request.urlopen(f"http://{health}/v2/health/ready", timeout=5).status == 200


def test_stopped_nodes_leave_no_process_or_shared_memory(tmp_path):
    _tritonserver_or_skip()
    node = Node("worker-0", ["--model", MODEL, "--port", "auto", "--http-port", "off", "--metrics-port", "off",
                             "--index", "4", "--log-dir", str(tmp_path / "logs")], tmp_path)
    info = node.wait_ready()
    assert info["http_url"] is None and info["metrics_url"] is None and info["index"] == 4
    assert node.stop() == 0
    log = (tmp_path / "logs" / "worker-4" / "tritonserver.log").read_text()
    assert "--allow-metrics=false" in log.splitlines()[0] and "worker=4" in log
    assert running_processes([node.proc.pid]) == []
    prefixes = {line.split("shm-region-prefix-name=")[1].split()[0] for line in log.splitlines()[:1]}
    assert all(leftover_shm(p) == [] for p in prefixes)


def test_coded_client_from_urls_file_over_mutual_tls_with_metrics(secure_cluster):
    import asyncio
    import urllib.request

    from prometheus_client import CollectorRegistry

    from nercc.client import CodedClient, MasterError
    from nercc.client.metrics import ClientMetrics
    from nercc.client.tls import ClientTLS
    from nercc.data import load_mnist

    info, tls = secure_cluster["info"], secure_cluster["tls"]
    path = write_urls(secure_cluster["folder"] / "client-urls.json",
                      describe(MODEL, [info["master"]["url"]], [info["worker-0"]["url"], info["worker-1"]["url"]],
                               tls=True))
    raw = np.ascontiguousarray(load_mnist("test")[0][:2])
    metrics = ClientMetrics(registry=CollectorRegistry())
    client_tls = ClientTLS(ca=tls["ca"], cert=tls["client"], key=tls["client-key"])

    async def run(**kw):
        async with CodedClient.from_urls_file(path, scheme="nercc", n_inputs=2, deadline_ms=1000.0, policy="all",
                                              metrics=metrics, **kw) as client:
            return await client.infer(raw)

    result = asyncio.run(run(tls=client_tls))
    assert result.arrived == (0, 1) and result.predictions.shape == (2, 10)
    with pytest.raises(MasterError):
        asyncio.run(run(encode="server"))  # plaintext against TLS servers: the master is unreachable
    server = metrics.serve(0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'nercc_client_batches_total{outcome="ok",scheme="nercc"} 1.0' in text
    assert 'nercc_client_batches_total{outcome="failed",scheme="nercc"} 1.0' in text
    assert 'nercc_client_answers_used_total{scheme="nercc"} 2.0' in text


def test_client_metrics_health_hook_and_bad_tls_options(tmp_path):
    from prometheus_client import CollectorRegistry

    from nercc.client.metrics import ClientMetrics
    from nercc.client.tls import ClientTLS

    metrics = ClientMetrics(registry=CollectorRegistry())
    metrics.worker_marked_down(3)
    metrics.worker_marked_down(5)
    metrics.worker_back_up(3)
    text = metrics.text()
    assert 'nercc_client_workers_marked_down_total{worker="3"} 1.0' in text and "nercc_client_workers_down 1.0" in text
    with pytest.raises(ValueError, match="needs its key"):
        ClientTLS(cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="does not exist"):
        ClientTLS(ca=tmp_path / "missing.pem")
    assert ClientTLS.from_options(None, None, None) is None


def test_demo_serves_a_given_cluster_over_tls_and_exposes_client_metrics(secure_cluster):
    info, tls = secure_cluster["info"], secure_cluster["tls"]
    path = write_urls(secure_cluster["folder"] / "demo-urls.json",
                      describe(MODEL, [info["master"]["url"]], [info["worker-0"]["url"], info["worker-1"]["url"]],
                               tls=True))
    done = subprocess.run(
        [sys.executable, "-m", "nercc", "demo", "--urls-file", str(path), "--inputs", "2", "--batches", "4",
         "--warmup", "1", "--schemes", "nercc,uncoded", "--deadline-ms", "500", "--policy", "all",
         "--tls-ca", str(tls["ca"]), "--tls-cert", str(tls["client"]), "--tls-key", str(tls["client-key"]),
         "--metrics-port", "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "using the cluster in" in done.stdout and "client metrics on http://127.0.0.1:" in done.stdout
    table = [line for line in done.stdout.splitlines() if line.lstrip().startswith(("nercc ", "uncoded "))]
    assert len(table) == 2, done.stdout[-2000:]
    # the given servers are still up afterwards
    assert all(node.proc.poll() is None for node in secure_cluster["nodes"].values())


def test_loadtest_engine_reads_urls_file_and_speaks_tls(secure_cluster):
    """The asyncio load-test engine (same options as the Locust one) against the TLS cluster from urls.json."""
    info, tls = secure_cluster["info"], secure_cluster["tls"]
    folder = secure_cluster["folder"]
    path = write_urls(folder / "load-urls.json",
                      describe(MODEL, [info["master"]["url"]], [info["worker-0"]["url"], info["worker-1"]["url"]],
                               tls=True))
    log = folder / "requests.jsonl"
    from nercc.paths import REPO_ROOT

    done = subprocess.run(
        [sys.executable, "-m", "nercc.loadtest.openloop", "--scheme", "nercc", "--duration", "2", "--rate", "5",
         "--urls-file", str(path), "--n-inputs", "2", "--deadline-ms", "500", "--policy", "all",
         "--requests-log", str(log), "--client-tls-ca", str(tls["ca"]), "--client-tls-cert", str(tls["client"]),
         "--client-tls-key", str(tls["client-key"]), "--warmup-batches", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    requests = [r for r in records if "ok" in r]
    assert requests and all(r["ok"] for r in requests), requests[:3]
