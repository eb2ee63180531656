"""CodedClient against real tritonserver processes (LocalCluster): accuracy, stragglers, dead workers, policies.

One module-scoped cluster (master + N_WORKERS workers, no stragglers) serves most tests; one small second cluster
supplies a worker that is always slow (bimodal p=1), which the client mixes into its worker list. The test
that kills a worker comes after every other test of the shared cluster because it leaves it with a dead
worker; the last test runs the main job (`nercc demo`) small, on its own cluster.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.aio")

from conftest import free_port, mse  # noqa: E402

from nercc.client import (  # noqa: E402
    CodedClient,
    MasterError,
    NotEnoughAnswersError,
    SyncCodedClient,
    parse_policy,
)
from nercc.models import OnnxModel  # noqa: E402

MODEL = "lenet5"
N_WORKERS = 6
K = 2  # N / K = 3: the redundancy DESIGN.md recommends for accuracy
SLOW_MS = 250.0


@pytest.fixture(scope="module")
def cluster():
    from nercc.serving import LocalCluster

    with LocalCluster(MODEL, n_workers=N_WORKERS, straggler="none", seed=0) as c:
        yield c


@pytest.fixture(scope="module")
def slow_cluster():
    """One worker that straggles on every request (its own tritonserver)."""
    from nercc.serving import LocalCluster

    with LocalCluster(MODEL, n_workers=1, straggler=f"bimodal:p=1,slow_ms={SLOW_MS:g}", seed=0, master=False) as c:
        yield c


@pytest.fixture(scope="module")
def mnist():
    from nercc.data import load_mnist
    from nercc.models import load_model_info
    from nercc.preprocessing import preprocess

    raw, labels = load_mnist("test")
    info = load_model_info(MODEL)
    f = OnnxModel(MODEL, threads=1)
    raw = np.ascontiguousarray(raw[:64])
    x = preprocess(info, raw)
    return raw, x, f(x)


def run(coro):
    return asyncio.run(coro)


async def infer_all(client: CodedClient, batches):
    async with client:
        return [await client.infer(b) for b in batches]


# ------------------------------------------------------------------------------------------------ accuracy
# Measured with this cluster (N=6, K=2, all 6 workers answering, MNIST test images 0..31, lams from the
# committed tuning profile): NeRCC MSE = 1.4e-3, BACC MSE = 2.2e-2 (BACC has no tunable smoothing: its
# value is fixed by the inputs), top-1 agreement with f 1.000 for both. For scale: a prediction of the wrong
# class differs from f by >= 0.5, two random probability vectors by ~1. Bounds: ~7x the NeRCC value and
# ~2x the BACC value, loose enough for a re-tuned profile, tight enough to catch an encoder/decoder mismatch
# (other lams or points) or a wrong worker order, which give 0.1-1. With one worker missing (5 of 6 answers)
# the straggler tests use the looser CODED_MSE_BOUND.
FULL_MSE_BOUND = {"nercc": 0.01, "bacc": 0.05}
CODED_MSE_BOUND = 0.05


@pytest.mark.parametrize("scheme", ["nercc", "bacc"])
def test_coded_predictions_match_local_model(cluster, mnist, scheme):
    raw, _, ref = mnist
    batches = [raw[i:i + K] for i in range(0, 32, K)]
    client = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme=scheme,
                         deadline_ms=2000, policy="all", n_inputs=K)
    results = run(infer_all(client, batches))
    pred = np.concatenate([r.predictions for r in results])
    assert pred.shape == (32, 10) and pred.dtype == np.float32
    assert all(r.arrived == tuple(range(N_WORKERS)) and not r.errors for r in results)
    # the whole pipeline equals the same scheme run locally: master encoder + workers + client decoder agree
    from nercc.coding import BACC, NeRCC

    _, x, _ = mnist
    f = OnnxModel(MODEL, threads=1)
    for i, r in enumerate(results):
        local = (NeRCC(n_inputs=K, n_workers=N_WORKERS, lam_enc=r.lam_enc, lam_dec=r.lam_dec) if scheme == "nercc"
                 else BACC(n_inputs=K, n_workers=N_WORKERS))
        coded = local.encode(x[K * i:K * (i + 1)]).astype(np.float32)
        np.testing.assert_allclose(r.predictions, local.decode(f(coded), list(r.arrived)), atol=2e-5)
    err = mse(pred, ref[:32])
    print(f"{scheme}: MSE vs local f = {err:.3e}, top-1 agreement {(pred.argmax(1) == ref[:32].argmax(1)).mean():.3f}")
    assert err < FULL_MSE_BOUND[scheme]
    assert (pred.argmax(1) == ref[:32].argmax(1)).mean() >= 0.95


def test_float_input_goes_through_encoder_and_agrees_with_raw(cluster, mnist):
    raw, x, _ = mnist
    client = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc",
                         deadline_ms=2000, policy="all", n_inputs=K)
    from_raw, from_float = run(infer_all(client, [raw[:K], x[:K]]))
    np.testing.assert_allclose(from_float.predictions, from_raw.predictions, atol=1e-4)


@pytest.mark.parametrize("scheme", ["uncoded", "replication"])
def test_baselines_equal_local_model(cluster, mnist, scheme):
    raw, _, ref = mnist
    batches = [raw[i:i + K] for i in range(0, 16, K)]
    client = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme=scheme,
                         deadline_ms=2000, n_inputs=K)
    results = run(infer_all(client, batches))
    np.testing.assert_allclose(np.concatenate([r.predictions for r in results]), ref[:16], rtol=1e-5, atol=1e-6)
    expected_requests = K if scheme == "uncoded" else (N_WORKERS // K) * K
    assert all(r.n_requests == expected_requests for r in results)
    # uncoded rotates its K workers over the N from batch to batch
    if scheme == "uncoded":
        assert len({w for r in results for w in r.arrived}) == N_WORKERS


# ------------------------------------------------------------------------------------------------ policies
def test_first_m_decodes_early_and_all_waits_for_everyone(cluster, mnist, slow_cluster):
    raw, _, ref = mnist
    urls = cluster.worker_urls[: N_WORKERS - 1] + slow_cluster.worker_urls  # worker N-1 always slow
    first = CodedClient(cluster.master_url, urls, model=MODEL, scheme="nercc", deadline_ms=1500,
                        policy=f"first:{N_WORKERS - 2}", n_inputs=K)
    everyone = CodedClient(cluster.master_url, urls, model=MODEL, scheme="nercc", deadline_ms=100,
                           policy="all", n_inputs=K, hard_timeout_ms=3000)
    (r_first,) = run(infer_all(first, [raw[:K]]))
    (r_all,) = run(infer_all(everyone, [raw[:K]]))
    # first:M stops as soon as M answers are in: long before the slow worker, far from the 1.5 s deadline
    assert len(r_first.arrived) >= N_WORKERS - 2 and N_WORKERS - 1 not in r_first.arrived
    assert r_first.total_ms < SLOW_MS and not r_first.late and r_first.deadline_met
    # `all` waits for the slow worker too (past its 100 ms deadline), so it is late but uses every answer
    assert r_all.arrived == tuple(range(N_WORKERS))
    assert r_all.worker_latency_ms[N_WORKERS - 1] >= SLOW_MS
    assert r_all.late and not r_all.deadline_met
    assert mse(r_all.predictions, ref[:K]) < CODED_MSE_BOUND


@pytest.mark.parametrize("scheme", ["nercc", "bacc"])
def test_straggler_is_left_out_and_result_is_back_by_the_deadline(cluster, mnist, slow_cluster, scheme):
    raw, _, ref = mnist
    deadline_ms, slack_ms = 120.0, 60.0
    urls = [slow_cluster.worker_urls[0]] + cluster.worker_urls[1:]  # worker 0 always slow
    client = CodedClient(cluster.master_url, urls, model=MODEL, scheme=scheme, deadline_ms=deadline_ms,
                         policy="deadline", n_inputs=K)
    results = run(infer_all(client, [raw[i:i + K] for i in range(0, 6, K)]))
    for r in results:
        assert 0 not in r.arrived and 0 not in r.worker_latency_ms
        assert r.arrived == tuple(range(1, N_WORKERS))
        assert r.total_ms < deadline_ms + slack_ms, r.total_ms
        assert r.total_ms >= deadline_ms * 0.95  # `deadline` waits for the straggler until the deadline
        assert not r.late
    pred = np.concatenate([r.predictions for r in results])
    assert mse(pred, ref[:6]) < CODED_MSE_BOUND


def test_replication_first_copy_wins_over_a_straggler(cluster, mnist, slow_cluster):
    raw, _, ref = mnist
    urls = [slow_cluster.worker_urls[0]] + cluster.worker_urls[1:]
    client = CodedClient(cluster.master_url, urls, model=MODEL, scheme="replication", deadline_ms=150,
                         n_inputs=K)
    (r,) = run(infer_all(client, [raw[:K]]))
    assert 0 not in r.arrived and r.total_ms < SLOW_MS and not r.late
    np.testing.assert_allclose(r.predictions, ref[:K], rtol=1e-5, atol=1e-6)


def test_hedged_sends_a_second_copy_around_a_straggler(cluster, mnist, slow_cluster):
    raw, _, ref = mnist
    urls = [slow_cluster.worker_urls[0]] + cluster.worker_urls[1:]  # worker 0 always slow
    client = CodedClient(None, urls, model=MODEL, scheme="hedged", deadline_ms=1000, n_inputs=K, hedge_ms=30)
    (r,) = run(infer_all(client, [raw[:K]]))  # rotation 0: inputs on workers 0 and 1, backups on 2 and 3
    assert r.scheme == "hedged" and r.hedge_ms == 30
    assert 0 not in r.arrived and 2 in r.arrived  # input 0's second copy, on worker 2, answered first
    assert r.n_hedges >= 1 and r.n_requests == K + r.n_hedges and r.assignment[2] == 0
    assert r.worker_latency_ms[2] >= 30 and r.total_ms < SLOW_MS and not r.late
    np.testing.assert_allclose(r.predictions, ref[:K], rtol=1e-5, atol=1e-6)


def test_hedged_measures_its_hedge_delay_at_warmup(cluster, mnist):
    raw, _, ref = mnist

    async def scenario():
        async with CodedClient(None, cluster.worker_urls, model=MODEL, scheme="hedged", deadline_ms=1000,
                               n_inputs=K) as client:
            assert client.hedge_delay.value_ms() == 500.0  # deadline / 2 before any round trip was measured
            await client.warmup(1)
            measured = client.hedge_delay.value_ms()
            return client.hedge_delay.n_samples, measured, await client.infer(raw[:K])

    n_samples, measured, r = run(scenario())
    # the p95 of >= 20 warm round trips (a few ms here; far below the 250 ms cold first runs it leaves out)
    assert n_samples >= 20 and 0 < measured < 200
    assert r.hedge_ms is not None and r.hedge_ms > 0
    np.testing.assert_allclose(r.predictions, ref[:K], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["raw", "float"])
@pytest.mark.parametrize("scheme", ["nercc", "bacc"])
def test_local_encoding_equals_the_masters(cluster, mnist, scheme, kind):
    """encode='local' applies the master's float32 encoding matrix in the client: same coded inputs (raw uint8
    preprocessed locally, or float32 as given), same predictions, no master round trip."""
    import tritonclient.grpc as grpcclient

    raw, x, _ = mnist
    k = 4
    batch = raw[:k] if kind == "raw" else x[:k]
    local = CodedClient(None, cluster.worker_urls, model=MODEL, scheme=scheme, deadline_ms=2000, policy="all",
                        n_inputs=k, encode="local")
    coded_here = local._local_payloads(batch, kind == "raw")
    master = grpcclient.InferenceServerClient(cluster.master_url)
    try:
        name, dtype = ("RAW", "UINT8") if kind == "raw" else ("INPUT", "FP32")
        tensor = grpcclient.InferInput(name, list(batch.shape), dtype)
        tensor.set_data_from_numpy(batch)
        params = {"scheme": scheme, "n_workers": N_WORKERS, "n_stragglers": 0}
        if scheme == "nercc":
            params["lam_enc"] = local.smoothing_params(k)[0]
        model = f"{MODEL}_encode" if kind == "raw" else f"{MODEL}_encoder"
        coded_there = master.infer(model, [tensor], parameters=params).as_numpy("CODED")
    finally:
        master.close()
    assert coded_here.dtype == np.float32 and coded_here.shape == coded_there.shape == (N_WORKERS, 1, 28, 28)
    scale = float(np.abs(coded_there).max())
    np.testing.assert_allclose(coded_here, coded_there, rtol=1e-6, atol=2e-7 * scale)  # float32 precision

    server = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme=scheme, deadline_ms=2000,
                         policy="all", n_inputs=k)
    (r_local,) = run(infer_all(local, [batch]))
    (r_server,) = run(infer_all(server, [batch]))
    assert r_local.encode == "local" and r_server.encode == "server" and r_local.lam_enc == r_server.lam_enc
    np.testing.assert_allclose(r_local.predictions, r_server.predictions, atol=1e-5)


def test_encode_argument_errors(cluster):
    with pytest.raises(ValueError, match="encode must be one of server, local"):
        CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, encode="client")
    with pytest.raises(ValueError, match="needs master_url .* or encode='local'"):
        CodedClient(None, cluster.worker_urls, model=MODEL, scheme="nercc", encode="server")


def test_too_few_answers_by_the_deadline_is_late_then_an_error(cluster, mnist, slow_cluster):
    raw, x, _ = mnist
    slow = slow_cluster.worker_urls[0]
    # both "workers" are the always-slow server: the 2 answers a coded decode needs come after the deadline
    late_client = CodedClient(cluster.master_url, [slow, slow], model=MODEL, scheme="bacc", deadline_ms=50,
                              hard_timeout_ms=5000, n_inputs=K)
    (r,) = run(infer_all(late_client, [raw[:K]]))
    assert r.late and not r.deadline_met and r.arrived == (0, 1)
    assert r.total_ms >= SLOW_MS
    # N = K = 2 has no redundancy (MSE vs f ~0.04), so check the decode itself: the same BACC computed locally
    from nercc.coding import BACC

    local = BACC(n_inputs=K, n_workers=2)
    expected = local.decode(OnnxModel(MODEL, threads=1)(local.encode(x[:K]).astype(np.float32)), [0, 1])
    np.testing.assert_allclose(r.predictions, expected, atol=1e-5)

    hopeless = CodedClient(cluster.master_url, [slow, slow], model=MODEL, scheme="bacc", deadline_ms=50,
                           hard_timeout_ms=120, n_inputs=K)
    t0 = time.perf_counter()
    with pytest.raises(NotEnoughAnswersError, match=r"0 of 2 requests answered; gave up at the hard timeout .* needs at least 2") as info:
        run(infer_all(hopeless, [raw[:K]]))
    assert (time.perf_counter() - t0) * 1e3 < SLOW_MS + 200
    assert info.value.n_arrived == 0 and info.value.n_needed == 2

    uncoded = CodedClient(cluster.master_url, [slow] + cluster.worker_urls[1:], model=MODEL, scheme="uncoded",
                          deadline_ms=50, hard_timeout_ms=100, n_inputs=N_WORKERS)
    with pytest.raises(NotEnoughAnswersError, match=rf"all {N_WORKERS} inputs need an answer"):
        run(infer_all(uncoded, [raw[:N_WORKERS]]))


def test_patient_policy_decodes_from_everyone_or_settles_at_t(cluster, mnist, slow_cluster):
    raw, _, ref = mnist
    m = N_WORKERS - 1
    client = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc", deadline_ms=500,
                         n_inputs=K, policy=f"first:{m}@300")
    (r,) = run(infer_all(client, [raw[:K]]))
    assert r.arrived == tuple(range(N_WORKERS)) and not r.late and r.total_ms < 300  # all in before T
    urls = [slow_cluster.worker_urls[0]] + cluster.worker_urls[1:]  # worker 0 always slow
    client = CodedClient(cluster.master_url, urls, model=MODEL, scheme="nercc", deadline_ms=SLOW_MS,
                         n_inputs=K, policy=f"first:{m}@{SLOW_MS / 4:g}")
    (r,) = run(infer_all(client, [raw[:K]]))
    assert r.arrived == tuple(range(1, N_WORKERS)) and not r.late
    assert SLOW_MS / 4 <= r.total_ms < SLOW_MS  # settled at T with the N - 1 that came
    with pytest.raises(ValueError, match="T must be below deadline_ms=40"):
        CodedClient(cluster.master_url, urls, model=MODEL, policy="first:3@40", deadline_ms=40)


def test_min_answers_waits_past_the_deadline_for_accuracy(cluster, mnist, slow_cluster):
    raw, _, ref = mnist
    urls = [slow_cluster.worker_urls[0]] + cluster.worker_urls[1:]  # worker 0 always slow
    client = CodedClient(cluster.master_url, urls, model=MODEL, scheme="nercc", deadline_ms=50,
                         n_inputs=K, min_answers=N_WORKERS)
    (r,) = run(infer_all(client, [raw[:K]]))
    assert r.arrived == tuple(range(N_WORKERS)) and r.late and r.total_ms >= SLOW_MS
    with pytest.raises(ValueError, match="decodes before min_answers=4"):
        CodedClient(cluster.master_url, urls, model=MODEL, policy="first:3", min_answers=4)
    with pytest.raises(ValueError, match="min_answers must be an int in"):
        CodedClient(cluster.master_url, urls, model=MODEL, min_answers=1)


def test_unreachable_worker_counts_as_straggler(cluster, mnist):
    raw, _, ref = mnist
    urls = cluster.worker_urls[:-1] + [f"127.0.0.1:{free_port()}"]  # nothing listens there
    client = CodedClient(cluster.master_url, urls, model=MODEL, scheme="nercc", deadline_ms=1000,
                         policy="deadline", n_inputs=K)
    results = run(infer_all(client, [raw[:K], raw[K:2 * K]]))
    for r in results:
        assert N_WORKERS - 1 not in r.arrived and len(r.arrived) == N_WORKERS - 1
        assert N_WORKERS - 1 in r.errors and "connect" in r.errors[N_WORKERS - 1]
        assert not r.late  # every live worker answered and the dead one failed fast: no need to wait
    pred = np.concatenate([r.predictions for r in results])
    assert mse(pred, ref[: 2 * K]) < CODED_MSE_BOUND


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_arguments_and_inputs_raise_clear_errors(cluster, mnist):
    raw, x, _ = mnist
    master, workers = cluster.master_url, cluster.worker_urls
    with pytest.raises(ValueError, match="unknown scheme 'lt'"):
        CodedClient(master, workers, model=MODEL, scheme="lt")
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        CodedClient(master, workers, model=MODEL, policy="fastest")
    with pytest.raises(ValueError, match="M must be between 2 and n_workers=6"):
        CodedClient(master, workers, model=MODEL, policy="first:7")
    with pytest.raises(ValueError, match="K <= n_workers"):
        CodedClient(master, workers, model=MODEL, n_inputs=7)
    with pytest.raises(ValueError, match="hard_timeout_ms"):
        CodedClient(master, workers, model=MODEL, deadline_ms=100, hard_timeout_ms=50)
    with pytest.raises(ValueError, match="needs master_url"):
        CodedClient(None, workers, model=MODEL, scheme="bacc", encode="server")
    assert CodedClient(None, workers, model=MODEL, scheme="bacc").encode == "auto"  # encodes here: nercc.json
    with pytest.raises(ValueError, match="hard_timeout_ms must be a finite number"):
        CodedClient(master, workers, model=MODEL, hard_timeout_ms=float("inf"))

    async def bad_batches():
        async with CodedClient(master, workers, model=MODEL, n_inputs=K, deadline_ms=1000) as client:
            with pytest.raises(ValueError, match="dtype must be uint8 .* or float32"):
                await client.infer(x[:K].astype(np.float64))
            with pytest.raises(ValueError, match=r"must have shape \(K, 28, 28\), got \(2, 28, 27\)"):
                await client.infer(raw[:K, :, :27])
            with pytest.raises(ValueError, match="batch has 3 inputs but the client was built with n_inputs=2"):
                await client.infer(raw[:3])
            nan = x[:K].copy()
            nan[0, 0, 0, 0] = np.nan
            with pytest.raises(ValueError, match="NaN or inf"):
                await client.infer(nan)
            with pytest.raises(ValueError, match="numpy array"):
                await client.infer(raw[:K].tolist())
            # the cluster keeps serving after all that
            result = await client.infer(raw[:K])
            assert result.predictions.shape == (K, 10)

    run(bad_batches())

    other_loop = CodedClient(master, workers, model=MODEL, n_inputs=K, deadline_ms=1000)
    run(other_loop.connect())
    with pytest.raises(RuntimeError, match="belong to the event loop it connected in"):
        run(other_loop.infer(raw[:K]))

    async def unknown_model():
        async with CodedClient(master, workers, model="no_such_model", scheme="uncoded") as client:
            await client.infer(x[:K])

    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        run(unknown_model())

    async def dead_master(encode):
        async with CodedClient([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], workers, model=MODEL,
                               n_inputs=K, encode=encode) as client:
            return await client.infer(raw[:K])

    with pytest.raises(MasterError, match=r"encoding failed on every master \(lenet5_encode\): 127\.0\.0\.1:\d+"):
        run(dead_master("server"))
    # encode="auto" (the default): no master answers, so the client encodes with the same matrix itself
    fallback = run(dead_master("auto"))
    assert fallback.encode == "local-fallback" and "failed to connect" in fallback.master
    assert fallback.predictions.shape == (K, 10) and np.isfinite(fallback.predictions).all()


def test_remote_deployment_without_local_metadata(cluster, mnist, tmp_path):
    """No nercc.json or tuning.json here: shapes come from the servers, and raw input for the baselines goes
    through the master's preprocess model. The master encodes with the lam_enc the client sends."""
    raw, x, ref = mnist
    lam_enc, lam_dec = 0.1, 1e-4  # far from the master's profile (~1e-8): a master ignoring it is caught below
    coded = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc", deadline_ms=2000,
                        policy="all", n_inputs=3, lam_enc=lam_enc, lam_dec=lam_dec, model_dir=str(tmp_path))
    uncoded = CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="uncoded",
                          deadline_ms=2000, n_inputs=K, model_dir=str(tmp_path))
    assert coded.spec is None
    (r_coded,) = run(infer_all(coded, [raw[:3]]))
    (r_uncoded,) = run(infer_all(uncoded, [raw[:K]]))
    assert coded.spec.input_shape == (1, 28, 28) and coded.spec.raw_shape == (28, 28) and coded.spec.n_classes == 10
    assert uncoded.spec.info is None  # preprocessing happened on the master
    np.testing.assert_allclose(r_uncoded.predictions, ref[:K], rtol=1e-5, atol=1e-6)

    from nercc.coding import NeRCC

    f = OnnxModel(MODEL, threads=1)
    assert (r_coded.lam_enc, r_coded.lam_dec) == (lam_enc, lam_dec)
    local = NeRCC(n_inputs=3, n_workers=N_WORKERS, lam_enc=lam_enc, lam_dec=lam_dec)
    expected = local.decode(f(local.encode(x[:3]).astype(np.float32)), list(range(N_WORKERS)))
    # encoding with lam_enc = 1e-8 instead would move these predictions by ~0.03 (measured)
    np.testing.assert_allclose(r_coded.predictions, expected, atol=2e-5)


def test_policy_parser():
    assert parse_policy("deadline", 12) == ("deadline", None, None)
    assert parse_policy("first:8", 12) == ("first", 8, None)
    assert parse_policy("ALL", 12) == ("all", None, None)
    assert parse_policy("first:8@18", 12) == ("first", 8, 18.0)
    assert parse_policy("first:8@12.5ms", 12).patience_ms == 12.5
    for bad, match in (("first:8@", "must be a number"), ("first:8@x", "must be a number"),
                       ("first:8@-1", ">= 0"), ("first:8@inf", "finite")):
        with pytest.raises(ValueError, match=match):
            parse_policy(bad, 12)
    with pytest.raises(ValueError, match="integer"):
        parse_policy("first:x", 12)


def test_sync_client_and_any_k(cluster, mnist):
    raw, _, ref = mnist
    with SyncCodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc",
                         deadline_ms=2000, policy="all") as client:  # n_inputs=None: any 2 <= K <= N per call
        client.warmup(1)
        assert client.drain() == 0
        for k in (2, 3):
            r = client.infer(raw[:k])
            assert r.predictions.shape == (k, 10)
            assert mse(r.predictions, ref[:k]) < CODED_MSE_BOUND
        assert client.scheme == "nercc"


# --------------------------------------------------------------------- dead worker (last: it kills one)
def test_worker_killed_mid_run(cluster, mnist):
    raw, _, ref = mnist
    victim = 2

    async def scenario():
        async with CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc",
                               deadline_ms=500, policy="deadline", n_inputs=K) as client:
            before = [await client.infer(raw[i:i + K]) for i in range(0, 4 * K, K)]
            in_flight = asyncio.ensure_future(client.infer(raw[4 * K:5 * K]))
            await asyncio.sleep(0)  # the request is on its way: encode / fan-out under way
            cluster.kill_worker(victim)
            during = await in_flight
            after = [await client.infer(raw[i:i + K]) for i in range(5 * K, 12 * K, K)]
            return before, during, after

    # nothing in this module crashed a server so far (straggler requests are abandoned, not cancelled:
    # cancellations crash Triton 2.51, see CodedClient's cancel_stragglers)
    assert cluster.check() == []
    before, during, after = run(scenario())
    assert all(r.arrived == tuple(range(N_WORKERS)) for r in before)
    assert during.predictions.shape == (K, 10)
    for r in after:
        assert r.arrived == tuple(w for w in range(N_WORKERS) if w != victim), r.arrived
        # refused connections fail fast: no wait for the deadline; after max_failures (3) in a row the worker is
        # marked down and gets no more requests (until a probe finds it ready)
        assert (victim in r.errors or r.n_requests == N_WORKERS - 1) and not r.late
        assert r.total_ms < 500
    assert after[-1].n_requests == N_WORKERS - 1 and victim not in after[-1].errors
    pred = np.concatenate([r.predictions for r in after])
    assert mse(pred, ref[5 * K:12 * K]) < CODED_MSE_BOUND


# ---------------------------------------------------------------------------- the main job, small and fast
def test_demo_runs_every_scheme_and_stops_its_cluster(tmp_path, capsys):
    import json

    from nercc.cli import main as nercc_main

    out = tmp_path / "demo.json"
    code = nercc_main(["demo", "--workers", "4", "--inputs", "2", "--batches", "6", "--warmup", "1",
                       "--straggler", "none", "--deadline-ms", "500", "--policy", "all", "--save", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "all servers stopped" in printed and "p99 ms" in printed
    record = json.loads(out.read_text())
    rows = {row["scheme"]: row for row in record["table"]}
    # the default rows: every scheme but bacc-sys (--schemes adds it)
    assert list(rows) == ["uncoded", "replication", "hedged", "bacc", "nercc", "nercc-sys", "nercc-local"]
    # no straggler: every systematic answer arrives, so systematic NeRCC (exact:M@T) is the uncoded model exactly
    assert all(float(rows[s]["MSE"]) == 0.0 for s in ("uncoded", "replication", "hedged", "nercc-sys"))
    from nercc.demo import DEMO_EXACT_PATIENCE_MS

    assert rows["nercc-sys"]["policy"] == f"exact:3@{DEMO_EXACT_PATIENCE_MS:g}"  # the deadline here is far above T
    assert rows["nercc-sys"]["exact %"] == "100.0"
    assert rows["nercc-sys"]["RelAcc"] == "1.000" and float(rows["nercc-sys"]["compute/input"]) <= 2.0
    assert rows["nercc"]["exact %"] == "0.0" and rows["uncoded"]["exact %"] == "-"
    assert record["systematic"]["nercc-sys"]["exact batches"]["batches_or_inputs"] == 6
    assert "recovering batches" not in record["systematic"]["nercc-sys"]
    assert rows["replication"]["compute/input"] == "2.00" and rows["nercc"]["compute/input"] == "2.00"
    assert rows["nercc-local"]["compute/input"] == "2.00" and 1.0 <= float(rows["hedged"]["compute/input"]) <= 2.0
    # the same coded inputs (local encoding = the master's) and, under `all`, the same answers: the same accuracy
    assert abs(float(rows["nercc-local"]["MSE"]) - float(rows["nercc"]["MSE"])) < 1e-6
    assert all(row["failed"] == "0" for row in rows.values()) and record["crashed_servers"] == []


def test_warmup_prebuilds_the_decoders_of_first_m(cluster, mnist):
    """first:M meets C(N, M) arrived sets: warm-up builds their decoding matrices and leave-one-out operators,
    so no batch pays for spline fits on its critical path."""
    raw, _, ref = mnist
    m = N_WORKERS - 2

    async def scenario():
        async with CodedClient(cluster.master_url, cluster.worker_urls, model=MODEL, scheme="nercc",
                               deadline_ms=1000, policy=f"first:{m}", n_inputs=K) as client:
            await client.warmup(1)
            coding = client.coding_scheme(K, client.smoothing_params(K, m)[1])
            built = coding.cache_info()["entries"]
            misses = coding.cache_misses
            result = await client.infer(raw[:K])
            return built, misses, coding.cache_misses, result

    built, misses_before, misses_after, r = run(scenario())
    assert built >= 2 * math.comb(N_WORKERS, m)  # a decoding matrix and an L per set
    if len(r.arrived) == m:  # a set of exactly M answers was built at warm-up: no miss now
        assert misses_after == misses_before
    # one batch of K = 2 decoded from M = 4 of 6 answers (0.055 seen once): a loose bound, for gross breakage (~1)
    assert r.predictions.shape == (K, 10) and mse(r.predictions, ref[:K]) < 0.2
