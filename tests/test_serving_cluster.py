"""The Triton server side against real tritonserver processes: encoder, ensemble, workers, errors,
straggler injection, failed starts and clean shutdown.

One cluster (master + 3 workers, LeNet5, no stragglers) is shared by the module; the straggler,
dead-worker and failure scenarios start their own small clusters.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
import tritonclient.grpc as grpcclient  # noqa: E402
from conftest import assert_cluster_gone, require_tritonserver_and_model  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from nercc.coding import BACC, NeRCC  # noqa: E402
from nercc.models import OnnxModel, load_model_info  # noqa: E402
from nercc.preprocessing import preprocess  # noqa: E402
from nercc.profiles import lookup  # noqa: E402
from nercc.serving import ClusterError, LocalCluster, PortInUseError, ServerStartError  # noqa: E402
from nercc.serving.cluster import leftover_shm, running_processes  # noqa: E402

MODEL = "lenet5"
LIMIT = 2**20  # max_request_bytes of the shared cluster: small, so the byte-limit check is cheap to hit

require_tritonserver_and_model(MODEL)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(MODEL, n_workers=3, max_request_bytes=LIMIT, http=True) as c:
        yield c
    assert_cluster_gone(c)


@pytest.fixture(scope="module")
def master(cluster):
    client = grpcclient.InferenceServerClient(cluster.master_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def mnist_raw():
    from nercc.data import load_mnist

    raw, _ = load_mnist("test")
    return np.ascontiguousarray(raw[:8])


@pytest.fixture(scope="module")
def info():
    return load_model_info(MODEL)


def _infer(client, model, name, array, output, parameters=None, **kw):
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8", np.dtype(np.float64): "FP64",
             np.dtype(np.int32): "INT32"}[array.dtype]
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor], parameters=parameters, **kw).as_numpy(output)


def _floats(k, seed=0):
    return np.random.default_rng(seed).normal(size=(k, 1, 28, 28)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ encoder


@pytest.mark.parametrize("scheme, k, n, lam", [("nercc", 4, 12, 1e-4), ("nercc", 3, 7, 0.0), ("bacc", 4, 12, None),
                                                ("bacc", 2, 5, None)])
def test_encoder_equals_local_encode(master, scheme, k, n, lam):
    x = _floats(k, seed=k + n)
    params = {"scheme": scheme, "n_workers": n}
    if lam is not None:
        params["lam_enc"] = lam
    coded = _infer(master, f"{MODEL}_encoder", "INPUT", x, "CODED", params)
    local = NeRCC(n_inputs=k, n_workers=n, lam_enc=lam).encode(x) if scheme == "nercc" else \
        BACC(n_inputs=k, n_workers=n).encode(x)
    assert coded.shape == (n, 1, 28, 28) and coded.dtype == np.float32
    # float32 matrix product of K terms on both sides: a few ulps of the largest |value|
    np.testing.assert_allclose(coded, local, rtol=0, atol=1e-5 * np.abs(x).max())


def test_encoder_default_lam_comes_from_the_tuning_profile(master, info):
    x = _floats(4, seed=1)
    coded = _infer(master, f"{MODEL}_encoder", "INPUT", x, "CODED", {"n_workers": 12, "n_stragglers": 2})
    lam_enc, _ = lookup(info.dir, 4, 12, 2)
    local = NeRCC(n_inputs=4, n_workers=12, lam_enc=lam_enc).encode(x)
    np.testing.assert_allclose(coded, local, rtol=0, atol=1e-5 * np.abs(x).max())


@pytest.mark.parametrize("scheme", ["nercc", "bacc"])
def test_ensemble_raw_uint8_equals_preprocess_then_encode(master, mnist_raw, info, scheme):
    raw = mnist_raw[:4]
    params = {"scheme": scheme, "n_workers": 12, "lam_enc": 1e-3}  # lam_enc reaches the encoder through the ensemble
    coded = _infer(master, f"{MODEL}_encode", "RAW", raw, "CODED", params)
    x = preprocess(info, raw)
    local = (NeRCC(n_inputs=4, n_workers=12, lam_enc=1e-3) if scheme == "nercc" else BACC(4, 12)).encode(x)
    np.testing.assert_allclose(coded, local, rtol=0, atol=1e-5 * np.abs(x).max())
    if scheme == "nercc":  # a different lam_enc must give a different code: the parameter is really used
        other = _infer(master, f"{MODEL}_encode", "RAW", raw, "CODED", {**params, "lam_enc": 1.0})
        assert np.abs(other - coded).max() > 1e-3


def test_preprocess_model_equals_local(master, mnist_raw, info):
    x = _infer(master, f"{MODEL}_preprocess", "RAW", mnist_raw, "INPUT")
    np.testing.assert_array_equal(x, preprocess(info, mnist_raw))


# ------------------------------------------------------------------------------------------------ workers


def test_every_worker_equals_local_onnxruntime(cluster, mnist_raw, info):
    f = OnnxModel(MODEL, threads=1)
    x = preprocess(info, mnist_raw)
    coded = NeRCC(n_inputs=8, n_workers=12, lam_enc=1e-4).encode(x)[:5]  # coded inputs, as workers see them
    for url in cluster.worker_urls:
        client = grpcclient.InferenceServerClient(url)
        try:
            for batch in (x[:1], x, coded):
                probs = _infer(client, MODEL, "input", np.ascontiguousarray(batch), "probs")
                np.testing.assert_allclose(probs, f(batch), rtol=1e-5, atol=1e-6)
        finally:
            client.close()


def test_worker_metadata_is_the_interface(cluster):
    client = grpcclient.InferenceServerClient(cluster.worker_urls[0])
    try:
        meta = client.get_model_metadata(MODEL, as_json=True)
        config = client.get_model_config(MODEL, as_json=True)["config"]
    finally:
        client.close()
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("input", "FP32", ["-1", "1", "28", "28"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [("probs", "FP32", ["-1", "10"])]
    assert int(config["max_batch_size"]) > 0


def test_http_endpoints_when_asked(cluster):
    import urllib.request

    urls = [cluster.master_http_url, *cluster.worker_http_urls]
    assert len(urls) == 4 and len(set(urls) | set(cluster.worker_urls)) == 4 + 3  # no port reused
    for url in urls:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
    with urllib.request.urlopen(f"http://{cluster.master_http_url}/v2/models/{MODEL}_encode", timeout=5) as response:
        assert json.loads(response.read())["platform"] == "python"  # preprocess + encode in one Python model


# ------------------------------------------------------------------------------------------------ errors

_GOOD = {"scheme": "nercc", "n_workers": 12}


@pytest.mark.parametrize(
    "model, name, array, params, needle",
    [
        (f"{MODEL}_encoder", "INPUT", _floats(4).astype(np.float64), _GOOD, "FP64"),
        (f"{MODEL}_encoder", "INPUT", _floats(4).reshape(4, 28, 28), _GOOD, "shape"),
        (f"{MODEL}_encoder", "INPUT", np.where(np.arange(4 * 784).reshape(4, 1, 28, 28) == 5, np.nan, _floats(4)).astype(np.float32), _GOOD, "NaN"),
        (f"{MODEL}_encoder", "INPUT", np.where(np.arange(4 * 784).reshape(4, 1, 28, 28) == 5, np.inf, _floats(4)).astype(np.float32), _GOOD, "infinite"),
        (f"{MODEL}_encoder", "INPUT", _floats(1), _GOOD, "K >= 2"),
        (f"{MODEL}_encoder", "INPUT", _floats(6), {"n_workers": 5}, "N >= K"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"scheme": "lagrange", "n_workers": 12}, "scheme"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"scheme": "nercc"}, "n_workers"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": "12"}, "n_workers"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": 12.0}, "n_workers"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": True}, "n_workers"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": 12, "lam_enc": -1.0}, "lam_enc"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": 12, "lam_enc": "small"}, "lam_enc"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": 12, "n_stragglers": 12}, "n_stragglers"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": 12, "lam": 0.1}, "unknown request parameter"),
        # input over the limit: Triton refuses K > max_batch_size = 1 MiB // 3136 before the stub
        (f"{MODEL}_encoder", "INPUT", _floats(400), {"n_workers": 400}, "batch-size must be <= 334"),
        (f"{MODEL}_encoder", "INPUT", _floats(4), {"n_workers": 400}, "max_request_bytes"),  # coded output over it
        (f"{MODEL}_encode", "RAW", np.zeros((4, 28, 28), np.uint8), {"scheme": "bacc"}, "n_workers"),
        (f"{MODEL}_encode", "RAW", np.zeros((4, 28, 28), np.uint8), {"scheme": "x", "n_workers": 12}, "scheme"),
        (f"{MODEL}_encode", "RAW", np.zeros((4, 28, 28), np.float32), _GOOD, "FP32"),
        (f"{MODEL}_encode", "RAW", np.zeros((4, 32, 32), np.uint8), _GOOD, "shape"),
        (f"{MODEL}_encode", "RAW", np.zeros((1, 28, 28), np.uint8), _GOOD, "K >= 2"),
        (f"{MODEL}_preprocess", "RAW", np.zeros((1400, 28, 28), np.uint8), None, "batch-size must be <= 334"),
    ],
    ids=["fp64", "shape", "nan", "inf", "k1", "n<k", "scheme", "no-n", "n-str", "n-float", "n-bool", "lam-neg",
         "lam-str", "s>=n", "unknown-param", "input-bytes", "coded-bytes", "ens-no-n", "ens-scheme", "ens-dtype",
         "ens-shape", "ens-k1", "pre-bytes"],
)
def test_invalid_request_gets_its_error_and_server_keeps_serving(master, model, name, array, params, needle):
    with pytest.raises(InferenceServerException) as err:
        _infer(master, model, name, np.ascontiguousarray(array), "CODED" if "enc" in model else "INPUT", params)
    assert needle.lower() in err.value.message().lower(), err.value.message()
    coded = _infer(master, f"{MODEL}_encoder", "INPUT", _floats(4), "CODED", _GOOD)
    assert coded.shape == (12, 1, 28, 28) and np.isfinite(coded).all()


def test_worker_rejects_wrong_input_and_keeps_serving(cluster):
    client = grpcclient.InferenceServerClient(cluster.worker_urls[0])
    try:
        with pytest.raises(InferenceServerException, match="(?i)shape|dims"):
            _infer(client, MODEL, "input", np.zeros((1, 3, 28, 28), np.float32), "probs")
        with pytest.raises(InferenceServerException, match="(?i)batch"):
            _infer(client, MODEL, "input", np.zeros((65, 1, 28, 28), np.float32), "probs")
        assert _infer(client, MODEL, "input", _floats(2), "probs").shape == (2, 10)
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------ stragglers


def _latencies_ms(url, n):
    client = grpcclient.InferenceServerClient(url)
    x = _floats(1)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            _infer(client, MODEL, "input", x, "probs")
            out.append(1e3 * (time.perf_counter() - t0))
    finally:
        client.close()
    return np.array(out)


def test_no_straggler_worker_is_fast(cluster):
    latencies = _latencies_ms(cluster.worker_urls[1], 20)
    # LeNet5 on one thread is ~0.3 ms; 50 ms leaves room for a loaded 2-core machine and is 4x below 200
    assert np.median(latencies) < 50, latencies


def test_straggler_injection_dead_worker_and_clean_shutdown():
    with LocalCluster(MODEL, n_workers=2, straggler="bimodal:p=1,slow_ms=200", master=False) as slow:
        assert slow.master_url is None and len(slow.worker_urls) == 2
        latencies = _latencies_ms(slow.worker_urls[0], 3)
        assert latencies.min() >= 200, latencies
        # a request its client gave up on stops holding the worker: the next one waits only for itself
        client = grpcclient.InferenceServerClient(slow.worker_urls[0])
        try:
            with pytest.raises(InferenceServerException, match="(?i)deadline"):
                _infer(client, MODEL, "input", _floats(1), "probs", client_timeout=0.05)
        finally:
            client.close()
        after_cancel = _latencies_ms(slow.worker_urls[0], 1)[0]
        assert 200 <= after_cancel < 340, after_cancel  # 350+ if it had queued behind the cancelled one
        pids = slow.pids()
        group = running_processes(pids)
        assert len(group) > len(pids), "expected each server's Python stub in its process group"
        slow.kill_worker(1)
        assert slow.check() == []  # a worker killed on purpose is not a failure
        client = grpcclient.InferenceServerClient(slow.worker_urls[1])
        try:
            with pytest.raises(InferenceServerException):
                client.infer(MODEL, [], client_timeout=2.0)
        finally:
            client.close()
        assert _latencies_ms(slow.worker_urls[0], 1)[0] >= 200  # the other worker still serves
    assert running_processes(group) == []
    assert leftover_shm(slow.shm_prefix) == []


# ------------------------------------------------------------------------------------------------ failures


def test_bad_tritonserver_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-tritonserver"
    with pytest.raises(ClusterError, match="no-such-tritonserver"):
        LocalCluster(MODEL, n_workers=1, tritonserver=missing).start()


def test_busy_port_is_a_clear_error_and_starts_nothing():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        cluster = LocalCluster(MODEL, n_workers=1, base_port=busy, master=False)
        with pytest.raises(PortInUseError, match=str(busy)):
            cluster.start()
    assert cluster.pids() == []


def test_busy_port_seen_by_the_server_reports_its_log(tmp_path):
    """The port was free when checked but taken by the time the server binds: the log says so."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        cluster = LocalCluster(MODEL, n_workers=1, base_port=busy, master=False, start_timeout_s=60,
                               workdir=tmp_path / "cluster")  # a failed start keeps its logs: here, not in /tmp
        cluster._ports = lambda: [busy]  # skip the pre-check, as a race with another program would
        with pytest.raises(ServerStartError) as err:
            cluster.start()
    assert "worker-0" in str(err.value) and "in use" in str(err.value).lower()
    assert running_processes(cluster.pids()) == []
    assert leftover_shm(cluster.shm_prefix) == []


def test_free_port_taken_meanwhile_is_retried_on_another_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        cluster = LocalCluster(MODEL, n_workers=1, master=False, start_timeout_s=60)
        cluster._ports = lambda: [busy]  # as if another program took our free port before the server bound it
        with cluster:
            assert cluster.workers[0].port_retries == 1 and cluster.worker_urls[0] != f"127.0.0.1:{busy}"
            assert _latencies_ms(cluster.worker_urls[0], 1).size == 1
    assert running_processes(cluster.pids()) == []


def test_model_that_fails_to_load_raises_with_log_tail_and_leaks_nothing(tmp_path, info):
    repo = tmp_path / "repo"
    (repo / MODEL / "1").mkdir(parents=True)
    shutil.copy(info.dir / "nercc.json", repo / MODEL / "nercc.json")
    (repo / MODEL / "1" / "model.onnx").write_bytes(b"this is not an onnx graph")
    cluster = LocalCluster(MODEL, n_workers=2, model_repository=repo, master=False, start_timeout_s=60,
                           workdir=tmp_path / "cluster")
    with pytest.raises(ServerStartError) as err:
        cluster.start()
    message = str(err.value)
    assert "exited" in message and "tritonserver.log" in message
    assert "onnx" in message.lower() or "protobuf" in message.lower(), message
    assert running_processes(cluster.pids()) == []
    assert leftover_shm(cluster.shm_prefix) == []


# ------------------------------------------------------------------------------------------------ CLI


def test_nercc_serve_prints_urls_and_stops_cleanly_on_ctrl_c(tmp_path):
    urls_file = tmp_path / "urls.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nercc", "serve", "--model", MODEL, "--workers", "2", "--urls-file", str(urls_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a test suite started as a background job inherits SIGINT ignored (POSIX shells do that), and Python
        # then never turns Ctrl-C into KeyboardInterrupt: give the child the default a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not urls_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert urls_file.exists(), proc.stdout.read() if proc.poll() is not None else "no URLs file"
        urls = json.loads(urls_file.read_text())
        assert len(urls["worker_urls"]) == 2
        client = grpcclient.InferenceServerClient(urls["master_url"])
        try:
            assert client.is_model_ready(f"{MODEL}_encode")
        finally:
            client.close()
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(children) == 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "master" in out and "worker 1" in out and "stopped" in out
    assert running_processes(children) == []
    assert leftover_shm(f"nercc{proc.pid}_") == []
    assert not os.path.exists(f"/proc/{proc.pid}")


def test_servers_die_with_a_killed_parent(tmp_path):
    """A client killed with SIGKILL runs no cleanup: its servers get SIGTERM from the kernel and exit."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import json, time\n"
        "from nercc.serving import LocalCluster\n"
        f"c = LocalCluster({MODEL!r}, n_workers=1, master=False, workdir={str(tmp_path / 'cluster')!r}).start()\n"
        "print(json.dumps({'pids': c.pids(), 'prefix': c.shm_prefix}), flush=True)\n"
        "time.sleep(300)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(owner.stdout.readline())
        group = running_processes(started["pids"])
        assert len(group) >= 2  # tritonserver + its Python stub
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 30
        while running_processes(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running_processes(group) == []
        assert leftover_shm(started["prefix"]) == []  # Triton's own shutdown removed the regions
    finally:
        if owner.poll() is None:
            owner.kill()


def test_resizing_model_takes_raw_images_of_any_size():
    """ImageNet models resize in preprocess: RAW has free height/width, and the ensemble equals local code."""
    name = "efficientnet_lite0"
    try:
        resizing = load_model_info(name)
    except (FileNotFoundError, ValueError):
        pytest.skip(f"{name} not exported")
    if not resizing.onnx_path.exists():
        pytest.skip(f"{name} ONNX not exported")
    with LocalCluster(name, n_workers=1) as small:
        client = grpcclient.InferenceServerClient(small.master_url)
        try:
            for shape in [(2, *resizing.raw_shape), (2, 300, 400, 3)]:
                raw = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
                coded = _infer(client, f"{name}_encode", "RAW", raw, "CODED", {"scheme": "bacc", "n_workers": 3})
                local = BACC(n_inputs=2, n_workers=3).encode(preprocess(resizing, raw))
                np.testing.assert_allclose(coded, local, rtol=0, atol=1e-5 * np.abs(local).max())
        finally:
            client.close()
