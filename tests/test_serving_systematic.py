"""Systematic coded serving (nercc-sys, bacc-sys) against real tritonserver processes, both transports.

A systematic batch sends the K inputs themselves to their own workers at once (no master round trip on their
path) and the N - K parity rows, which the master computes (``<model>_encoder`` returns only those), as soon as
they exist. With every own answer in, the predictions are the workers' answers as they came: identical to the
uncoded scheme's. With an own worker slow or dead, ``exact:M@T`` recovers that input from the arrived answers
after T and says so (``result.exact``, ``result.n_recovered``).

One module-scoped cluster (master + N_WORKERS workers, gRPC and HTTP, no stragglers) and one always-slow worker
(bimodal p=1) that the tests put in the place of a systematic worker.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.aio")

from conftest import free_port, mse  # noqa: E402

from nercc.client import CodedClient, GeventCodedClient  # noqa: E402
from nercc.coding import make_scheme  # noqa: E402
from nercc.coding.registry import BACC_SYS_NAME, NERCC_SYS_NAME  # noqa: E402

MODEL = "lenet5"
N_WORKERS = 6
K = 2
SLOW_MS = 300.0
SYSTEMATIC = (NERCC_SYS_NAME, BACC_SYS_NAME)
#: exact:M@T for these tests: M = 4 of 6; T = 60 ms, far above a no-straggler round trip on a busy 2-core box,
#: far below SLOW_MS
POLICY = "exact:4@60"
#: one input of two recovered from 5 of 6 answers (own answer of the other input included): measured 2e-3..2e-2
#: on these images; a wrong worker order or parity row gives 0.3-1
RECOVERED_MSE_BOUND = 0.1


@pytest.fixture(scope="module")
def cluster():
    from nercc.serving import LocalCluster

    with LocalCluster(MODEL, n_workers=N_WORKERS, straggler="none", seed=0, http=True) as c:
        yield c


@pytest.fixture(scope="module")
def slow_cluster():
    from nercc.serving import LocalCluster

    with LocalCluster(MODEL, n_workers=1, straggler=f"bimodal:p=1,slow_ms={SLOW_MS:g}", seed=0, master=False,
                      http=True) as c:
        yield c


@pytest.fixture(scope="module")
def mnist():
    from nercc.data import load_mnist
    from nercc.models import OnnxModel, load_model_info
    from nercc.preprocessing import preprocess

    raw, _ = load_mnist("test")
    raw = np.ascontiguousarray(raw[:24])
    x = preprocess(load_model_info(MODEL), raw)
    return raw, x, OnnxModel(MODEL, threads=1)(x)


def run(coro):
    return asyncio.run(coro)


async def infer_all(client, batches):
    async with client:
        await client.warmup(1)
        return [await client.infer(b) for b in batches]


def own_worker(scheme: str, k: int = 0) -> int:
    return make_scheme(scheme, K, N_WORKERS).systematic_workers[k]


@pytest.fixture(scope="module")
def uncoded(cluster, mnist):
    """The uncoded scheme's predictions of every batch: f(x_k) from one worker each, as served."""
    raw, _, _ = mnist
    client = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="uncoded", deadline_ms=2000,
                         n_inputs=K)
    return np.concatenate([r.predictions for r in run(infer_all(client, [raw[i:i + K] for i in range(0, 24, K)]))])


@pytest.mark.parametrize("scheme", SYSTEMATIC)
def test_no_straggler_predictions_equal_the_uncoded_models_exactly(cluster, mnist, uncoded, scheme):
    raw, _, ref = mnist
    client = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme=scheme, deadline_ms=2000,
                         policy=POLICY, n_inputs=K)
    results = run(infer_all(client, [raw[i:i + K] for i in range(0, 24, K)]))
    pred = np.concatenate([r.predictions for r in results])
    assert float(np.abs(pred - uncoded).max()) == 0.0  # bit-exact: the workers' own answers, no arithmetic
    own = tuple(sorted(make_scheme(scheme, K, N_WORKERS).systematic_workers))
    for r in results:
        assert r.exact.tolist() == [True] * K and r.n_recovered == 0 and r.arrived == own
        assert r.encode in ("server", "unused") and not r.late
        # the parity requests go out only when the master's rows came before the own answers
        assert K <= r.n_requests <= N_WORKERS and (r.n_requests == K) == (r.encode == "unused")
    np.testing.assert_allclose(pred, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", SYSTEMATIC)
def test_the_master_returns_only_the_parity_rows(cluster, mnist, scheme):
    import tritonclient.grpc as grpcclient

    _, x, _ = mnist
    coding = make_scheme(scheme, K, N_WORKERS, 1e-6, 1e-6)
    client = grpcclient.InferenceServerClient(cluster.master_url)
    tensor = grpcclient.InferInput("INPUT", [K, *x.shape[1:]], "FP32")
    tensor.set_data_from_numpy(x[:K])
    params = {"scheme": scheme, "n_workers": N_WORKERS}
    if scheme == NERCC_SYS_NAME:
        params["lam_enc"] = 1e-6
    rows = client.infer(f"{MODEL}_encoder", [tensor], parameters=params).as_numpy("CODED")
    assert rows.shape == (N_WORKERS - K, *x.shape[1:]) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, coding.encode_parity(x[:K]), rtol=1e-5, atol=1e-6)
    # the same rows as the full encoding's parity rows, which the client's local encoding makes
    np.testing.assert_allclose(rows, coding.encode(x[:K])[list(coding.parity_workers)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", SYSTEMATIC)
def test_a_slow_own_worker_is_recovered_and_flagged(cluster, slow_cluster, mnist, uncoded, scheme):
    raw, _, ref = mnist
    slow = own_worker(scheme, 0)  # input 0's own worker always straggles
    urls = list(cluster.worker_urls)
    urls[slow] = slow_cluster.worker_urls[0]
    client = CodedClient(cluster.master_url, urls, model=MODEL, scheme=scheme, deadline_ms=250, policy=POLICY,
                         n_inputs=K)
    results = run(infer_all(client, [raw[i:i + K] for i in range(0, 8, K)]))
    for i, r in enumerate(results):
        assert r.exact.tolist() == [False, True] and r.n_recovered == 1
        assert slow not in r.arrived and len(r.arrived) >= 4 and not r.late
        assert 60 <= r.total_ms < SLOW_MS  # recovered at T, long before the slow answer
        assert np.array_equal(r.predictions[1], uncoded[K * i + 1])  # the on-time input: its own answer, exact
    pred = np.concatenate([r.predictions for r in results])
    assert mse(pred, ref[:8]) < RECOVERED_MSE_BOUND


def test_a_dead_own_worker_is_recovered_and_first_m_works_too(cluster, mnist, uncoded):
    raw, _, ref = mnist
    dead = own_worker(NERCC_SYS_NAME, 1)
    urls = list(cluster.worker_urls)
    urls[dead] = f"127.0.0.1:{free_port()}"  # nobody listens: refused at once
    exact = CodedClient(cluster.master_url, urls, model=MODEL, scheme=NERCC_SYS_NAME, deadline_ms=250,
                        policy=POLICY, n_inputs=K)
    first = CodedClient(cluster.master_url, urls, model=MODEL, scheme=NERCC_SYS_NAME, deadline_ms=250,
                        policy="first:5", n_inputs=K)
    for client in (exact, first):
        results = run(infer_all(client, [raw[i:i + K] for i in range(0, 8, K)]))
        for i, r in enumerate(results):
            assert r.exact.tolist() == [True, False] and r.n_recovered == 1 and dead not in r.arrived
            assert np.array_equal(r.predictions[0], uncoded[K * i])
            assert r.total_ms < 250 and not r.late
        assert mse(np.concatenate([r.predictions for r in results]), ref[:8]) < RECOVERED_MSE_BOUND


def test_parity_from_a_lost_master_falls_back_or_serves_the_own_answers(cluster, mnist, uncoded):
    raw, _, _ = mnist
    lost = f"127.0.0.1:{free_port()}"
    auto = CodedClient(lost, cluster.worker_urls, model=MODEL, scheme=NERCC_SYS_NAME, deadline_ms=1000,
                       policy="all", n_inputs=K)
    (r,) = run(infer_all(auto, [raw[:K]]))
    assert r.encode == "local-fallback" and r.n_requests == N_WORKERS and r.exact.all()
    server = CodedClient(lost, cluster.worker_urls, model=MODEL, scheme=NERCC_SYS_NAME, deadline_ms=1000,
                         policy="all", n_inputs=K, encode="server")
    (r,) = run(infer_all(server, [raw[:K]]))
    # no parity rows: the parity requests fail, the own answers still serve the batch, exactly
    assert r.encode == "failed" and r.n_requests == K and r.exact.all()
    assert all("no parity rows" in r.errors[w] for w in make_scheme(NERCC_SYS_NAME, K, N_WORKERS).parity_workers)
    assert np.array_equal(r.predictions, uncoded[:K])


def test_local_encoding_sends_every_row_at_once(cluster, mnist, uncoded):
    raw, _, _ = mnist
    client = CodedClient(None, cluster.worker_urls, model=MODEL, scheme=NERCC_SYS_NAME, deadline_ms=1000,
                         policy="all", n_inputs=K, encode="local")
    results = run(infer_all(client, [raw[i:i + K] for i in range(0, 8, K)]))
    for i, r in enumerate(results):
        assert r.encode == "local" and r.n_requests == N_WORKERS and r.arrived == tuple(sorted(
            make_scheme(NERCC_SYS_NAME, K, N_WORKERS).systematic_workers))
        assert np.array_equal(r.predictions, uncoded[K * i:K * (i + 1)])


def test_gevent_transport_serves_systematic_batches(cluster, slow_cluster, mnist, uncoded):
    pytest.importorskip("gevent")
    raw, _, ref = mnist
    with GeventCodedClient(cluster.master_http_url, cluster.worker_http_urls, model=MODEL, scheme=NERCC_SYS_NAME,
                           deadline_ms=2000, policy=POLICY, n_inputs=K) as client:
        client.warmup(1)
        results = [client.infer(raw[i:i + K]) for i in range(0, 8, K)]
    assert np.array_equal(np.concatenate([r.predictions for r in results]), uncoded[:8])
    assert all(r.exact.all() and r.encode in ("server", "unused") for r in results)
    slow = own_worker(NERCC_SYS_NAME, 0)
    urls = list(cluster.worker_http_urls)
    urls[slow] = slow_cluster.worker_http_urls[0]
    with GeventCodedClient(cluster.master_http_url, urls, model=MODEL, scheme=NERCC_SYS_NAME, deadline_ms=250,
                           policy=POLICY, n_inputs=K) as client:
        client.warmup(1)
        r = client.infer(raw[:K])
    assert r.exact.tolist() == [False, True] and r.n_recovered == 1 and 60 <= r.total_ms < SLOW_MS
    assert np.array_equal(r.predictions[1], uncoded[1]) and mse(r.predictions, ref[:K]) < RECOVERED_MSE_BOUND


def test_exact_policy_needs_a_systematic_scheme(cluster):
    with pytest.raises(ValueError, match="policy 'exact:4@60' needs a systematic scheme.*'nercc' codes every input"):
        CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc", policy=POLICY,
                    deadline_ms=250)
    with pytest.raises(ValueError, match="needs a systematic scheme"):
        CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="replication", policy=POLICY,
                    deadline_ms=250)
    with pytest.raises(ValueError, match="T must be below deadline_ms"):
        CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme=NERCC_SYS_NAME, policy=POLICY,
                    deadline_ms=50)
