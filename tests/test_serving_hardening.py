"""Hardening of the servers against hostile or careless clients, on real tritonserver processes:
restricted protocols (shared memory, model repository, trace, logging behind the launcher's key) and the
master's size limits.
"""

import os

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from conftest import assert_cluster_gone, require_tritonserver_and_model  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from nercc.models import load_model_info  # noqa: E402
from nercc.serving import LocalCluster  # noqa: E402
from nercc.serving.cluster import admin_headers  # noqa: E402

MODEL = "lenet5"
LIMIT = 2**20  # the master's max_request_bytes here: small, so the float32-growth check is cheap to reach

require_tritonserver_and_model(MODEL)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(MODEL, n_workers=6, http=True, n_masters=2, faults={1: "nan", 3: "large"},
                      max_request_bytes=LIMIT) as c:
        yield c
    assert_cluster_gone(c)


def _stub_region(cluster, index):
    """Name (without /dev/shm/) of worker ``index``'s own Python-stub region: the attack target."""
    regions = cluster.workers[index].shm_regions()
    assert regions, "the worker's Python backend has a shared-memory region"
    return regions[0].rsplit("/", 1)[1]


def test_unkeyed_grpc_client_cannot_register_shared_memory(cluster):
    region = _stub_region(cluster, 0)
    client = grpcclient.InferenceServerClient(cluster.worker_urls[0])
    try:
        with pytest.raises(InferenceServerException, match="(?i)restricted|permission|unavailable|header"):
            client.register_system_shared_memory("steal", "/" + region, 4096)
        with pytest.raises(InferenceServerException):
            client.get_system_shared_memory_status()
        with pytest.raises(InferenceServerException):
            client.unload_model(MODEL)
        with pytest.raises(InferenceServerException):
            client.update_log_settings({"log_verbose_level": 1})
        # the operator with the key can (then cleans up)
        admin = admin_headers(cluster.admin_key, "grpc")
        client.register_system_shared_memory("probe", "/" + region, 4096, headers=admin)
        client.unregister_system_shared_memory("probe", headers=admin)
        # what a client needs stays open
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        assert client.get_model_metadata(MODEL).name == MODEL
    finally:
        client.close()


def test_unkeyed_http_client_cannot_register_shared_memory(cluster):
    region = _stub_region(cluster, 1)
    client = httpclient.InferenceServerClient(cluster.worker_http_urls[1])
    try:
        with pytest.raises(InferenceServerException):
            client.register_system_shared_memory("steal", "/" + region, 4096)
        with pytest.raises(InferenceServerException):
            client.load_model(MODEL)
        admin = admin_headers(cluster.admin_key, "http")
        client.register_system_shared_memory("probe", "/" + region, 4096, headers=admin)
        client.unregister_system_shared_memory("probe", headers=admin)
        assert client.is_server_ready()
    finally:
        client.close()


def test_the_coded_path_works_without_the_key(cluster):
    """Encode on the master and infer on a worker with plain, unkeyed clients."""
    meta = load_model_info(MODEL)
    raw = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    master = grpcclient.InferenceServerClient(cluster.master_url)
    worker = grpcclient.InferenceServerClient(cluster.worker_urls[0])
    try:
        inp = grpcclient.InferInput("RAW", list(raw.shape), "UINT8")
        inp.set_data_from_numpy(raw)
        coded = master.infer(f"{MODEL}_encode", [inp], parameters={"n_workers": 6}).as_numpy("CODED")
        assert coded.shape == (6, *meta.input_shape)
        x = grpcclient.InferInput("input", list(coded[:1].shape), "FP32")
        x.set_data_from_numpy(coded[:1])
        probs = worker.infer(MODEL, [x]).as_numpy("probs")
        assert probs.shape == (1, meta.n_classes) and np.isfinite(probs).all()
    finally:
        master.close()
        worker.close()


def _infer(url, x, model=MODEL):
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp]).as_numpy("probs")
    finally:
        client.close()


def _encode(url, raw, n_workers=6):
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("RAW", list(raw.shape), "UINT8")
        inp.set_data_from_numpy(raw)
        return client.infer(f"{MODEL}_encode", [inp], parameters={"n_workers": n_workers}).as_numpy("CODED")
    finally:
        client.close()


def test_master_limits_hold_before_preprocessing(cluster):
    """K > N and the float32 growth are refused before any preprocessing; an overflow is an error, not inf."""
    url = cluster.master_urls[0]
    with pytest.raises(InferenceServerException, match="smaller than the number of inputs K = 20"):
        _encode(url, np.zeros((20, 28, 28), np.uint8), n_workers=12)
    # 400 images: 313,600 bytes raw (under the 1 MiB limit) but 1,254,400 as float32: Triton itself refuses
    # K > 334 (max_batch_size = 1 MiB // 3136 bytes) before the request is copied into the stub's shared memory
    regions = cluster.masters[0].shm_regions()
    assert regions, "the master's Python stubs have shared-memory regions"
    sizes = {path: os.stat(path).st_blocks for path in regions}
    with pytest.raises(InferenceServerException, match="batch-size must be <= 334"):
        _encode(url, np.zeros((400, 28, 28), np.uint8), n_workers=400)
    with pytest.raises(InferenceServerException, match="batch-size must be <= 334"):
        _encode(url, np.zeros((20_000, 28, 28), np.uint8), n_workers=400)  # 15 MiB
    assert {path: os.stat(path).st_blocks for path in regions} == sizes  # the stub's pool did not grow
    # the coded output (N x item) is checked by the stub, before encoding
    with pytest.raises(InferenceServerException, match=r"coded output .* 1254400 bytes, over the limit"):
        _encode(url, np.zeros((4, 28, 28), np.uint8), n_workers=400)
    client = grpcclient.InferenceServerClient(url)
    try:
        x = np.full((4, 1, 28, 28), 3e38, np.float32)  # finite, but its coded mixtures overflow float32
        inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="non-finite value"):
            client.infer(f"{MODEL}_encoder", [inp], parameters={"n_workers": 12, "lam_enc": 0.0})
        with pytest.raises(InferenceServerException, match="lam_enc = 1e.308 is too large"):
            client.infer(f"{MODEL}_encoder", [inp], parameters={"n_workers": 12, "lam_enc": 1e308})
    finally:
        client.close()
    assert np.isfinite(_encode(url, np.zeros((4, 28, 28), np.uint8))).all()  # and it keeps serving


def test_fault_injection_only_on_the_named_worker(cluster):
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    assert np.isfinite(_infer(cluster.worker_urls[0], x)).all()
    assert np.isnan(_infer(cluster.worker_urls[1], x)).all()
    assert "FAULT INJECTED: nan" in cluster.workers[1].log_path.read_text()


def test_paused_worker_does_not_answer_then_resumes(cluster):
    x = np.zeros((1, 1, 28, 28), np.float32)
    cluster.pause_worker(0)
    try:
        client = grpcclient.InferenceServerClient(cluster.worker_urls[0])
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="(?i)deadline"):
            client.infer(MODEL, [inp], client_timeout=0.3)
        client.close()
    finally:
        cluster.pause_worker(0, paused=False)
    assert np.isfinite(_infer(cluster.worker_urls[0], x)).all()


def _mnist(n):
    from nercc.data import load_mnist
    from nercc.models import OnnxModel
    from nercc.preprocessing import preprocess

    raw, _ = load_mnist("test")
    raw = np.ascontiguousarray(raw[:n])
    return raw, OnnxModel(MODEL, threads=1)(preprocess(load_model_info(MODEL), raw))


@pytest.mark.parametrize("scheme", ["nercc", "bacc", "uncoded", "replication", "hedged"])
def test_bad_answers_count_as_stragglers_and_never_reach_the_predictions(cluster, scheme):
    """Worker 1 answers NaN, worker 3 answers 1e30: coded batches decode without them; the baselines take
    another copy or, with none, fail with the reason until the bad worker is marked down and avoided."""
    import asyncio

    from nercc.client import CodedClient, NotEnoughAnswersError

    raw, ref = _mnist(16)

    async def go():
        results, failures = [], []
        async with CodedClient(cluster.master_urls, cluster.worker_urls, model=MODEL, scheme=scheme,
                               deadline_ms=3000, hard_timeout_ms=5000, n_inputs=2, max_failures=2) as client:
            for i in range(8):
                try:
                    results.append((i, await client.infer(raw[2 * i:2 * i + 2])))
                except NotEnoughAnswersError as exc:
                    failures.append(str(exc))
            return results, failures, client.health

    results, failures, health = asyncio.run(go())
    for i, r in results:
        assert np.isfinite(r.predictions).all()
        assert r.predictions.argmax(-1).tolist() == ref[2 * i:2 * i + 2].argmax(-1).tolist() or scheme in ("nercc", "bacc")
        for w, text in r.errors.items():
            assert w in (1, 3) and "bad answer" in text
    if scheme in ("nercc", "bacc"):
        assert len(results) == 8 and not failures
        first = results[0][1]
        assert "non-finite" in first.errors[1] and "outside [0, 1]" in first.errors[3]
        assert 1 not in first.arrived and 3 not in first.arrived and first.encode == "server"
        assert first.master == cluster.master_urls[0]
        later = results[-1][1]
        assert later.n_requests == 4  # workers 1 and 3 marked down: no more requests to them
    for text in failures:
        assert "bad answer" in text and "before the hard timeout" in text
    assert health.is_down(1) and health.is_down(3)
    assert len(results) >= 4  # once marked down, their inputs go to healthy workers


def test_two_masters_encode_alike_and_survive_one_killed(cluster):
    raw = np.random.default_rng(2).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    assert len(cluster.master_urls) == 2 and cluster.description()["master_urls"] == cluster.master_urls
    first, second = (_encode(url, raw) for url in cluster.master_urls)
    np.testing.assert_array_equal(first, second)
    cluster.kill_master(0)
    with pytest.raises(InferenceServerException):
        _encode(cluster.master_urls[0], raw)
    np.testing.assert_array_equal(_encode(cluster.master_urls[1], raw), first)
    assert cluster.check() == []  # killed on purpose is not a crash

    # the client fails over to the second master, batch after batch, and says so
    import asyncio

    from nercc.client import CodedClient

    mnist, _ = _mnist(4)

    async def go():
        async with CodedClient(cluster.master_urls, cluster.worker_urls, model=MODEL, scheme="nercc",
                               deadline_ms=3000, hard_timeout_ms=5000, n_inputs=2, master_cooldown_s=60) as client:
            return [await client.infer(mnist[:2]) for _ in range(3)]

    for result in asyncio.run(go()):
        assert result.encode == "server" and result.master == cluster.master_urls[1]
        assert np.isfinite(result.predictions).all()


def test_log_does_not_show_the_key(cluster):
    assert cluster.admin_key not in cluster.workers[0].log_path.read_text()


def test_bad_admin_key_is_refused_before_start():
    with pytest.raises(ValueError, match="admin_key"):
        LocalCluster(MODEL, n_workers=1, admin_key="a,b")
