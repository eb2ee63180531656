"""The master's coded endpoint ``<model>_coded`` and its ensembles against real tritonserver processes.

One cluster (master + 5 LeNet5 workers, HTTP on, no stragglers) is shared by the module. Checked: the endpoint
over gRPC, HTTP and curl (KServe v2 JSON) gives the client-side decode's predictions for the same scheme and
arrived set; every scheme of the registry; bad input gets an error naming the problem and the server keeps
serving; the ensembles ``<model>_pipeline`` and ``<model>_coded_pipeline`` match the fused models; a killed
worker is decoded around (last: it changes the cluster).
"""

import asyncio
import json
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from conftest import require_tritonserver_and_model  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from nercc.client import SyncCodedClient  # noqa: E402
from nercc.coding import CODED_SCHEMES, SCHEME_ORDER  # noqa: E402
from nercc.coding.registry import SYSTEMATIC_SCHEMES  # noqa: E402
from nercc.serving.coded_endpoint import CodedEndpoint, RequestError, parse_worker_urls  # noqa: E402

MODEL = "lenet5"
N_WORKERS = 5
K = 4
# generous: the shared 2-core machine must not turn a cold worker into a straggler in a correctness test
SLOW_OK = {"deadline_ms": 1500.0, "policy": "all"}

require_tritonserver_and_model(MODEL)


@pytest.fixture(scope="module")
def cluster():
    from nercc.serving import LocalCluster

    with LocalCluster(MODEL, n_workers=N_WORKERS, http=True, coded_instances=2) as c:
        yield c


@pytest.fixture(scope="module")
def master(cluster):
    client = grpcclient.InferenceServerClient(cluster.master_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def raw():
    from nercc.data import load_mnist

    images, _ = load_mnist("test")
    return np.ascontiguousarray(images[:K])


def _coded(master, raw, params, model=f"{MODEL}_coded", name="RAW"):
    tensor = grpcclient.InferInput(name, list(raw.shape), "UINT8" if raw.dtype == np.uint8 else "FP32")
    tensor.set_data_from_numpy(raw)
    response = master.infer(model, [tensor], parameters=params, client_timeout=30)
    return {o: response.as_numpy(o) for o in ("PREDICTIONS", "EXACT", "ANSWERS_USED", "ARRIVED", "LATE")}


@pytest.fixture(scope="module")
def warm(master, raw):
    for _ in range(3):  # first runs of every worker's onnxruntime and of both endpoint instances
        _coded(master, raw, SLOW_OK)
    return True


@pytest.mark.parametrize("scheme", SCHEME_ORDER)
def test_every_scheme_matches_the_client_side_decode(cluster, master, raw, warm, scheme):
    out = _coded(master, raw, {"scheme": scheme, **SLOW_OK})
    assert out["PREDICTIONS"].shape == (K, 10) and out["PREDICTIONS"].dtype == np.float32
    assert out["LATE"].tolist() == [False]
    # every worker answered: exact for the baselines and the systematic codes, recovered for the plain codes
    exact = scheme not in CODED_SCHEMES or scheme in SYSTEMATIC_SCHEMES
    assert out["EXACT"].dtype == bool and out["EXACT"].tolist() == [exact] * K
    assert int(out["ANSWERS_USED"][0]) == len(out["ARRIVED"])
    with SyncCodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme=scheme,
                         hard_timeout_ms=SLOW_OK["deadline_ms"], **SLOW_OK) as client:
        result = client.infer(raw)
    if scheme in CODED_SCHEMES:  # the baselines rotate their workers from batch to batch
        assert tuple(out["ARRIVED"].tolist()) == result.arrived
    np.testing.assert_allclose(out["PREDICTIONS"], result.predictions, rtol=0, atol=1e-5)


def test_http_and_curl_give_the_grpc_predictions(cluster, master, raw, warm):
    params = {"scheme": "bacc", **SLOW_OK}
    expected = _coded(master, raw, params)["PREDICTIONS"]
    client = httpclient.InferenceServerClient(cluster.master_http_url)
    tensor = httpclient.InferInput("RAW", list(raw.shape), "UINT8")
    tensor.set_data_from_numpy(raw, binary_data=False)
    response = client.infer(f"{MODEL}_coded", [tensor], parameters=params)
    np.testing.assert_array_equal(response.as_numpy("PREDICTIONS"), expected)
    client.close()

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl on PATH")
    body = {"inputs": [{"name": "RAW", "shape": list(raw.shape), "datatype": "UINT8",
                        "data": raw.ravel().tolist()}], "parameters": params}
    done = subprocess.run([curl, "-s", "-X", "POST", f"http://{cluster.master_http_url}/v2/models/{MODEL}_coded/infer",
                           "-H", "Content-Type: application/json", "-d", json.dumps(body)],
                          capture_output=True, text=True, timeout=30, check=True)
    answer = json.loads(done.stdout)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["PREDICTIONS"]["datatype"] == "FP32" and outputs["PREDICTIONS"]["shape"] == [K, 10]
    np.testing.assert_allclose(np.array(outputs["PREDICTIONS"]["data"]).reshape(K, 10), expected, atol=1e-6)
    assert outputs["EXACT"]["datatype"] == "BOOL" and outputs["EXACT"]["data"] == [False] * K
    assert outputs["ARRIVED"]["data"] == list(range(N_WORKERS)) and outputs["LATE"]["data"] == [False]


@pytest.mark.parametrize("tensor, params, words", [
    (np.zeros((K, 32, 32), np.uint8), {}, "shape"),
    (np.zeros((1, 28, 28), np.uint8), {}, "n_inputs K >= 2"),
    (np.zeros((N_WORKERS + 1, 28, 28), np.uint8), {}, f"K <= n_workers={N_WORKERS}"),
    (np.zeros((K, 28, 28), np.uint8), {"scheme": "turbo"}, "scheme"),
    (np.zeros((K, 28, 28), np.uint8), {"policy": "first:9"}, "M must be between"),
    (np.zeros((K, 28, 28), np.uint8), {"deadline_ms": -3}, "deadline_ms"),
    (np.zeros((K, 28, 28), np.uint8), {"n_workers": 3}, "unknown request parameter"),
])
def test_bad_requests_get_an_error_naming_the_problem(master, raw, warm, tensor, params, words):
    with pytest.raises(InferenceServerException, match=words):
        _coded(master, tensor, params)
    assert _coded(master, raw, SLOW_OK)["PREDICTIONS"].shape == (K, 10)  # and the server keeps serving


def test_the_exact_policy_of_systematic_schemes(master, raw, warm):
    """exact:M@T per request: every systematic answer in -> the inputs' own answers, EXACT all true; the policy on
    a plain scheme is refused by name."""
    out = _coded(master, raw, {"scheme": "nercc-sys", "deadline_ms": 1500.0, "policy": "exact:4@1000"})
    uncoded = _coded(master, raw, {"scheme": "uncoded", **SLOW_OK})
    assert out["EXACT"].tolist() == [True] * K and out["LATE"].tolist() == [False]
    np.testing.assert_array_equal(out["PREDICTIONS"], uncoded["PREDICTIONS"])  # bit-exact: f(x_k) itself
    with pytest.raises(InferenceServerException, match="systematic"):
        _coded(master, raw, {"scheme": "nercc", "policy": "exact:4@10"})


def test_a_wrong_dtype_is_refused_by_name(master, raw, warm):
    with pytest.raises(InferenceServerException, match="(?i)FP32.*RAW|RAW.*FP32|datatype"):
        _coded(master, raw.astype(np.float32), {})
    assert _coded(master, raw, SLOW_OK)["LATE"].tolist() == [False]


def test_the_ensembles_match_the_fused_models(master, raw, warm):
    params = {"scheme": "nercc", "n_workers": N_WORKERS}
    tensor = grpcclient.InferInput("RAW", list(raw.shape), "UINT8")
    tensor.set_data_from_numpy(raw)
    fused = master.infer(f"{MODEL}_encode", [tensor], parameters=params).as_numpy("CODED")
    chained = master.infer(f"{MODEL}_pipeline", [tensor], parameters=params).as_numpy("CODED")
    np.testing.assert_array_equal(chained, fused)
    direct = _coded(master, raw, {"scheme": "nercc", **SLOW_OK})
    piped = _coded(master, raw, {"scheme": "nercc", **SLOW_OK}, model=f"{MODEL}_coded_pipeline")
    np.testing.assert_array_equal(piped["PREDICTIONS"], direct["PREDICTIONS"])
    assert piped["ARRIVED"].tolist() == direct["ARRIVED"].tolist()


def test_a_killed_worker_is_decoded_around(cluster, master, raw, warm):
    """Last in the module: worker 2 is SIGKILLed; the endpoint decodes from the others, as the client does."""
    exact = _coded(master, raw, {"scheme": "uncoded", **SLOW_OK})["PREDICTIONS"]
    cluster.kill_worker(2)
    params = {"scheme": "nercc", "deadline_ms": 300.0, "policy": "deadline"}
    with SyncCodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, **params) as client:
        result = client.infer(raw)
    assert result.arrived == (0, 1, 3, 4)
    for _ in range(8):  # both endpoint instances see the failures (3 in a row mark it down)
        out = _coded(master, raw, params)
        assert out["ARRIVED"].tolist() == [0, 1, 3, 4] and out["LATE"].tolist() == [False]
        np.testing.assert_allclose(out["PREDICTIONS"], result.predictions, rtol=0, atol=1e-5)
    out = _coded(master, raw, {"scheme": "uncoded", "deadline_ms": 300.0})  # the baseline moves input 2
    assert out["EXACT"].all() and 2 not in out["ARRIVED"].tolist()
    np.testing.assert_allclose(out["PREDICTIONS"], exact, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- no server
def test_endpoint_settings_and_worker_urls(tmp_path):
    endpoint = CodedEndpoint(MODEL, tmp_path, ["127.0.0.1:1"], scheme="bacc", deadline_ms=20, policy="first:2")
    assert endpoint.settings({}) == ("bacc", 20.0, "first:2")
    assert endpoint.settings({"scheme": "NeRCC", "deadline_ms": "35", "policy": " All "}) == ("nercc", 35.0, "all")
    for params, words in (({"scheme": 3}, "scheme"), ({"deadline_ms": 0}, "deadline_ms"),
                          ({"deadline_ms": "soon"}, "deadline_ms"), ({"policy": 2}, "policy"),
                          ({"lam_enc": 1.0}, "unknown request parameter")):
        with pytest.raises(RequestError, match=words):
            endpoint.settings(params)
    assert parse_worker_urls(" a:1, b:2 ,") == ["a:1", "b:2"] and parse_worker_urls(None) == []
    with pytest.raises(ValueError, match="host:port"):
        parse_worker_urls("a:1,b")


def test_endpoint_without_workers_says_how_to_name_them(tmp_path):
    from nercc.paths import model_dir
    from nercc.serving.coded_endpoint import NoWorkersError

    endpoint = CodedEndpoint(MODEL, model_dir(MODEL), urls_file=tmp_path / "urls.json")
    with pytest.raises(NoWorkersError, match="NERCC_WORKER_URLS.*urls_file"):
        asyncio.run(endpoint.infer(np.zeros((K, 28, 28), np.uint8)))
    (tmp_path / "urls.json").write_text(json.dumps({"model": MODEL, "worker_urls": ["127.0.0.1:9", "127.0.0.1:10"]}))
    assert endpoint._workers() == ["127.0.0.1:9", "127.0.0.1:10"]  # read once the file exists
