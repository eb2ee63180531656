"""GeventCodedClient (tritonclient.http under gevent) against real tritonserver processes: the same predictions
as CodedClient (grpc.aio) for every scheme, stragglers, a dead worker, and Locust's monkey-patched world.

One module-scoped cluster (master + N_WORKERS workers, gRPC and HTTP endpoints, no stragglers) and one single
always-slow worker (bimodal p=1). The test that kills a worker runs last on the shared cluster.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("gevent")
pytest.importorskip("tritonclient.http")

from conftest import free_port, mse  # noqa: E402

from nercc.client import CodedClient, GeventCodedClient, NotEnoughAnswersError  # noqa: E402
from nercc.paths import REPO_ROOT  # noqa: E402

MODEL = "lenet5"
N_WORKERS = 6
K = 2
SLOW_MS = 250.0
SCHEMES = ("uncoded", "replication", "hedged", "bacc", "nercc")


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
    raw = np.ascontiguousarray(raw[:32])
    x = preprocess(load_model_info(MODEL), raw)
    return raw, x, OnnxModel(MODEL, threads=1)(x)


def gevent_client(cluster, urls=None, **kw) -> GeventCodedClient:
    kw.setdefault("model", MODEL)
    kw.setdefault("n_inputs", K)
    return GeventCodedClient(cluster.master_http_url, urls or cluster.worker_http_urls, **kw)


@pytest.mark.parametrize("scheme,encode", [(s, "server") for s in SCHEMES] + [("bacc", "local"), ("nercc", "local")])
def test_same_predictions_as_the_asyncio_client(cluster, mnist, scheme, encode):
    raw, _, ref = mnist
    batches = [raw[i:i + K] for i in range(0, 4 * K, K)]
    kw = dict(model=MODEL, scheme=scheme, deadline_ms=2000, n_inputs=K, encode=encode,
              policy="all" if scheme in ("nercc", "bacc") else "deadline")
    if scheme == "hedged":
        kw["hedge_ms"] = 1000.0  # no second copies: the same requests as uncoded on both transports

    async def with_aio():
        async with CodedClient(cluster.master_url, cluster.worker_urls, **kw) as client:
            return [await client.infer(b) for b in batches]

    aio = asyncio.run(with_aio())
    with GeventCodedClient(cluster.master_http_url, cluster.worker_http_urls, **kw) as client:
        client.warmup(1)
        got = [client.infer(b) for b in batches]
    for a, g in zip(aio, got):
        assert g.scheme == scheme and g.predictions.shape == (K, 10) and g.predictions.dtype == np.float32
        assert len(g.arrived) == len(a.arrived) and not g.errors and not g.late  # which copy wins is a race
        if scheme in ("nercc", "bacc"):
            assert g.arrived == a.arrived == tuple(range(N_WORKERS))
        assert g.n_requests == a.n_requests and g.lam_enc == a.lam_enc and g.lam_dec == a.lam_dec
        assert g.encode == (encode if scheme in ("nercc", "bacc") else None)
        np.testing.assert_allclose(g.predictions, a.predictions, rtol=1e-5, atol=1e-6)
        assert set(g.worker_latency_ms) >= set(g.arrived) and all(v > 0 for v in g.worker_latency_ms.values())
    if scheme in ("uncoded", "replication", "hedged"):
        np.testing.assert_allclose(np.concatenate([g.predictions for g in got]), ref[:4 * K], rtol=1e-5,
                                   atol=1e-6)


def test_float_input_any_k_and_metrics(cluster, mnist):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from nercc.client.metrics import ClientMetrics

    raw, x, _ = mnist
    registry = CollectorRegistry()
    with gevent_client(cluster, scheme="nercc", policy="all", n_inputs=None, deadline_ms=2000,
                       metrics=ClientMetrics(registry=registry)) as client:
        r_raw = client.infer(raw[:3])
        r_float = client.infer(x[:3])
    np.testing.assert_allclose(r_raw.predictions, r_float.predictions, atol=1e-5)
    assert r_raw.predictions.shape == (3, 10)
    text = generate_latest(registry).decode()
    assert 'nercc_client_batches_total{outcome="ok",scheme="nercc"} 2.0' in text


@pytest.mark.parametrize("scheme", ["nercc", "bacc"])
def test_straggler_is_left_out_by_the_deadline(cluster, mnist, slow_cluster, scheme):
    raw, _, ref = mnist
    deadline_ms, slack_ms = 120.0, 60.0
    urls = slow_cluster.worker_http_urls + cluster.worker_http_urls[1:]  # worker 0 always slow
    with gevent_client(cluster, urls, scheme=scheme, deadline_ms=deadline_ms, policy="deadline") as client:
        results = [client.infer(raw[i:i + K]) for i in range(0, 3 * K, K)]
        assert client.drain(timeout_s=5.0) == 0  # the slow worker's answers came back in the background
    for r in results:
        assert r.arrived == tuple(range(1, N_WORKERS)) and 0 not in r.worker_latency_ms
        assert deadline_ms * 0.95 <= r.total_ms < deadline_ms + slack_ms, r.total_ms  # woken by the deadline
        assert not r.late  # decoded at the deadline (so just past it: deadline_met is False) from 5 answers
    assert mse(np.concatenate([r.predictions for r in results]), ref[:3 * K]) < 0.05


def test_first_m_and_hedged_around_a_straggler(cluster, mnist, slow_cluster):
    raw, _, ref = mnist
    urls = slow_cluster.worker_http_urls + cluster.worker_http_urls[1:]
    with gevent_client(cluster, urls, scheme="nercc", deadline_ms=1500, policy=f"first:{N_WORKERS - 2}") as c:
        r = c.infer(raw[:K])
    assert 0 not in r.arrived and len(r.arrived) >= N_WORKERS - 2 and r.total_ms < SLOW_MS
    with gevent_client(cluster, urls, scheme="hedged", deadline_ms=1000, hedge_ms=30) as c:
        r = c.infer(raw[:K])  # rotation 0: inputs on workers 0 and 1, second copies on 2 and 3
    assert 0 not in r.arrived and 2 in r.arrived and r.n_hedges >= 1 and r.assignment[2] == 0
    assert r.worker_latency_ms[2] >= 30 and r.total_ms < SLOW_MS and r.hedge_ms == 30
    np.testing.assert_allclose(r.predictions, ref[:K], rtol=1e-5, atol=1e-6)


def test_hedged_measures_its_hedge_delay_at_warmup(cluster, mnist):
    raw, _, _ = mnist
    with gevent_client(cluster, scheme="hedged", deadline_ms=1000) as client:
        client.warmup(1)
        assert client.hedge_delay.n_samples >= 20 and 0 < client.hedge_delay.value_ms() < 200
        expected = client.hedge_delay.value_ms()
        assert client.infer(raw[:K]).hedge_ms == expected  # the delay this batch was given


def test_unreachable_worker_and_too_few_answers(cluster, mnist):
    raw, _, ref = mnist
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with gevent_client(cluster, cluster.worker_http_urls[:-1] + [dead], scheme="nercc", deadline_ms=1000) as c:
        r = c.infer(raw[:K])
    assert r.arrived == tuple(range(N_WORKERS - 1)) and N_WORKERS - 1 in r.errors and not r.late
    assert mse(r.predictions, ref[:K]) < 0.05
    with gevent_client(cluster, [dead, dead], scheme="uncoded", deadline_ms=50, hard_timeout_ms=200) as c:
        with pytest.raises(NotEnoughAnswersError):
            c.infer(raw[:K])


def test_under_locust_monkey_patching(cluster, mnist):
    """As in a Locust process: gevent.monkey.patch_all() first, two users (greenlets) calling infer at once."""
    raw, _, _ = mnist
    script = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import json, sys
        import gevent
        import numpy as np
        from nercc.client import GeventCodedClient
        from nercc.data import load_mnist

        master, workers, k = json.loads(sys.argv[1])
        raw = np.ascontiguousarray(load_mnist("test")[0][:32])
        client = GeventCodedClient(master, workers, model="lenet5", scheme="nercc", deadline_ms=1000,
                                   policy="all", n_inputs=k)
        client.warmup(1)

        def user(offset):
            return [client.infer(raw[i:i + k]) for i in range(offset, offset + 4 * k, k)]

        users = [gevent.spawn(user, 0), gevent.spawn(user, 4 * k)]
        gevent.joinall(users, raise_error=True)
        client.close()
        out = [r.predictions.tolist() for u in users for r in u.value]
        print(json.dumps({"predictions": out, "arrived": [list(r.arrived) for u in users for r in u.value]}))
    """)
    arg = json.dumps([cluster.master_http_url, cluster.worker_http_urls, K])
    proc = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(a == list(range(N_WORKERS)) for a in got["arrived"])
    pred = np.array(got["predictions"], dtype=np.float32).reshape(-1, 10)

    async def with_aio():
        async with CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc",
                               deadline_ms=2000, policy="all", n_inputs=K) as client:
            return [await client.infer(raw[i:i + K]) for i in range(0, 8 * K, K)]

    ref = np.concatenate([r.predictions for r in asyncio.run(with_aio())])
    np.testing.assert_allclose(pred, ref, rtol=1e-5, atol=1e-6)


def test_bad_arguments(cluster):
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        gevent_client(cluster, scheme="nercc", concurrency=0)
    with pytest.raises(ValueError, match="unknown scheme"):
        gevent_client(cluster, scheme="lt")
    with gevent_client(cluster, scheme="nercc") as client:
        with pytest.raises(ValueError, match="n_inputs"):
            client.infer(np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(RuntimeError, match="closed"):
        client.infer(np.zeros((K, 28, 28), dtype=np.uint8))


def test_worker_killed_mid_run(cluster, mnist):
    """Runs last: leaves the shared cluster with a dead worker."""
    import gevent

    raw, _, ref = mnist
    victim = 2
    assert cluster.check() == []
    with gevent_client(cluster, scheme="nercc", deadline_ms=500, policy="deadline") as client:
        before = [client.infer(raw[i:i + K]) for i in range(0, 2 * K, K)]
        in_flight = gevent.spawn(client.infer, raw[2 * K:3 * K])
        gevent.sleep(0)  # its requests are on their way
        cluster.kill_worker(victim)
        during = in_flight.get(timeout=10)
        after = [client.infer(raw[i:i + K]) for i in range(3 * K, 8 * K, K)]
    assert all(r.arrived == tuple(range(N_WORKERS)) for r in before)
    assert during.predictions.shape == (K, 10)
    for r in after:
        assert r.arrived == tuple(w for w in range(N_WORKERS) if w != victim), r.arrived
        # refused connections fail fast; after max_failures in a row the worker is marked down, not asked
        assert (victim in r.errors or r.n_requests == N_WORKERS - 1) and not r.late and r.total_ms < 500
    assert after[-1].n_requests == N_WORKERS - 1 and victim not in after[-1].errors
    assert mse(np.concatenate([r.predictions for r in after]), ref[3 * K:8 * K]) < 0.05
