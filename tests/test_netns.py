"""Multi-host on one machine, for real: each worker in its own network namespace with its own IP.

Four `nercc worker` processes, each inside a Linux network namespace (veth pair on a bridge, its own
address, all on the same port 8001 as separate machines would be), the master and the client in the root
namespace, every connection over mutual TLS (a throwaway CA). Then the network misbehaves: a token-bucket
rate limit (`tc qdisc tbf`) on the link to one worker, a blackholed route to another; the coded client
still answers within its deadline from the workers it can reach. Skips, with the reason, where namespaces
are not allowed (not root, no iproute2, a sandbox). Everything it made is removed at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from netlab import NetLab, unavailable

_why = unavailable()
if _why:
    pytest.skip(f"network namespaces unavailable: {_why}", allow_module_level=True)
tritonclient = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("cryptography")
from tritonclient.utils import InferenceServerException  # noqa: E402

from nercc.serving.cluster import ClusterError, find_tritonserver, running_processes  # noqa: E402

try:
    find_tritonserver()
except ClusterError as exc:  # pragma: no cover - a machine without the serve extra
    pytest.skip(str(exc), allow_module_level=True)

MODEL = "lenet5"
N_WORKERS = 4
PORT = 8001  # the same port on every host: each namespace has its own
RATE_LIMITED, BLACKHOLED = 1, 3


def _wait_file(path: Path, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path.stem} not ready (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tlsca import make_ca

    folder = tmp_path_factory.mktemp("netns")
    net = NetLab(N_WORKERS)
    procs = []
    try:
        tls = make_ca(folder / "tls", hosts=["127.0.0.1", *net.addresses])
        tls_args = ["--tls-cert", str(tls["server"]), "--tls-key", str(tls["server-key"]), "--tls-ca", str(tls["ca"])]
        launches = [(["master", "--workers", str(N_WORKERS), "--port", "auto"], "master", [])]
        for i, address in enumerate(net.addresses):
            launches.append((["worker", "--index", str(i), "--host", address, "--port", str(PORT)], f"worker-{i}",
                             net.exec_prefix(i)))
        for argv, role, prefix in launches:
            log = folder / f"{role}.out"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    prefix + [sys.executable, "-m", "nercc", *argv, "--model", MODEL, "--http-port", "off",
                              "--metrics-port", "off", *tls_args, "--urls-file", str(folder / f"{role}.json")],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append((role, proc, log))
        for role, proc, log in procs:
            _wait_file(folder / f"{role}.json", proc, log)
        import json

        master_url = json.loads((folder / "master.json").read_text())["url"]
        yield {"net": net, "tls": tls, "master_url": master_url,
               "worker_urls": [f"{a}:{PORT}" for a in net.addresses], "procs": procs}
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for _, proc, _ in procs:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes.append(proc.wait())
        net.close()
    assert running_processes([p.pid for _, p, _ in procs]) == [], "servers left after stop"
    assert net.leftovers() == [], f"namespaces or links left: {net.leftovers()}"
    assert codes == [0] * len(procs), f"servers did not stop cleanly: {codes}"


def _client(url, tls):
    return tritonclient.InferenceServerClient(url, ssl=True, root_certificates=str(tls["ca"]),
                                              private_key=str(tls["client-key"]),
                                              certificate_chain=str(tls["client"]))


def _timed_infer(url, tls, x, timeout_s=5.0):
    client = _client(url, tls)
    try:
        tensor = tritonclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        t0 = time.perf_counter()
        probs = client.infer(MODEL, [tensor], client_timeout=timeout_s).as_numpy("probs")
        return probs, 1e3 * (time.perf_counter() - t0)
    finally:
        client.close()


def test_workers_live_in_their_own_namespaces(lab):
    net = lab["net"]
    for i, (role, proc, _) in enumerate(lab["procs"][1:]):
        # the worker's network namespace is not ours: it is the one `ip netns` made for host i
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"), role
        inside = subprocess.run(net.exec_prefix(i) + ["ip", "-o", "-4", "addr", "show", "eth0"],
                                capture_output=True, text=True, timeout=10).stdout
        assert net.addresses[i] in inside
    x = np.random.default_rng(0).normal(size=(1, 1, 28, 28)).astype(np.float32)
    answers = [_timed_infer(url, lab["tls"], x)[0] for url in lab["worker_urls"]]
    for probs in answers[1:]:
        np.testing.assert_allclose(probs, answers[0], rtol=1e-5, atol=1e-7)


def test_rate_limited_link_is_slow_and_the_others_are_not(lab):
    net, tls = lab["net"], lab["tls"]
    x = np.random.default_rng(1).normal(size=(64, 1, 28, 28)).astype(np.float32)  # 200 KB on the wire
    _timed_infer(lab["worker_urls"][RATE_LIMITED], tls, x)  # connection and warm-up outside the measure
    net.rate_limit(RATE_LIMITED, rate="4mbit")
    try:
        slow = min(_timed_infer(lab["worker_urls"][RATE_LIMITED], tls, x)[1] for _ in range(2))
        fast = min(_timed_infer(lab["worker_urls"][0], tls, x)[1] for _ in range(2))
    finally:
        net.clear_rate_limit(RATE_LIMITED)
    # 200 KB at 4 Mbit/s is ~400 ms on the wire; unlimited it is a few ms
    assert slow > 300.0 and fast < slow / 3, (slow, fast)


def test_blackholed_worker_is_silent_while_the_others_answer(lab):
    net, tls = lab["net"], lab["tls"]
    x = np.zeros((1, 1, 28, 28), np.float32)
    net.blackhole(BLACKHOLED)
    try:
        with pytest.raises(InferenceServerException, match="(?i)deadline|unavailable"):
            _timed_infer(lab["worker_urls"][BLACKHOLED], tls, x, timeout_s=1.0)
        for i in range(N_WORKERS):
            if i != BLACKHOLED:
                assert _timed_infer(lab["worker_urls"][i], tls, x, timeout_s=5.0)[1] < 1000.0
    finally:
        net.restore(BLACKHOLED)
    assert _timed_infer(lab["worker_urls"][BLACKHOLED], tls, x, timeout_s=10.0)[0].shape == (1, 10)


def test_coded_client_over_tls_survives_a_slow_link_and_a_blackholed_worker(lab):
    """The real CodedClient (mutual TLS, metrics on) decodes from the workers it can reach, within its deadline."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from nercc.client import CodedClient
    from nercc.client.metrics import ClientMetrics
    from nercc.client.tls import ClientTLS
    from nercc.data import load_mnist
    from nercc.models import OnnxModel, load_model_info
    from nercc.preprocessing import preprocess

    net, tls = lab["net"], lab["tls"]
    raw = np.ascontiguousarray(load_mnist("test")[0][:40])
    info = load_model_info(MODEL)
    expected = OnnxModel(MODEL, threads=1)(preprocess(info, raw)).argmax(axis=1)
    metrics = ClientMetrics(registry=CollectorRegistry())
    client_tls = ClientTLS(ca=tls["ca"], cert=tls["client"], key=tls["client-key"])
    deadline_ms = 150.0

    async def serve():
        async with CodedClient(lab["master_url"], lab["worker_urls"], model=MODEL, scheme="nercc", n_inputs=2,
                               deadline_ms=deadline_ms, policy="first:2", hard_timeout_ms=3000.0,
                               tls=client_tls, metrics=metrics) as client:
            await client.warmup()
            net.rate_limit(RATE_LIMITED, rate="128kbit", burst="4kb")  # one coded input (3 KB) takes ~0.2 s
            net.blackhole(BLACKHOLED)
            try:
                return [await client.infer(raw[i:i + 2]) for i in range(0, len(raw), 2)]
            finally:
                net.clear_rate_limit(RATE_LIMITED)
                net.restore(BLACKHOLED)

    results = asyncio.run(serve())
    assert all(BLACKHOLED not in r.arrived for r in results)
    assert all(r.deadline_met for r in results), [round(r.total_ms, 1) for r in results]
    assert sum(RATE_LIMITED in r.arrived for r in results) <= len(results) // 4  # the slow link rarely wins
    predicted = np.concatenate([r.predictions.argmax(axis=1) for r in results])
    totals = [r.total_ms for r in results]
    print(f"netns coded client: {len(results)} batches, total p50 {np.percentile(totals, 50):.1f} ms, max "
          f"{max(totals):.1f} ms (deadline {deadline_ms:.0f}), top-1 agreement {(predicted == expected).mean():.2f}")
    assert (predicted == expected).mean() >= 0.6, (predicted == expected).mean()
    text = metrics.text()
    assert f'nercc_client_batches_total{{outcome="ok",scheme="nercc"}} {float(len(results))}' in text
    assert 'nercc_client_answers_used_total{scheme="nercc"} 40.0' in text  # first:2, 20 batches
