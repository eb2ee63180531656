"""The Locust load test against a real 4-worker Triton cluster: the report, the concurrency, the arguments.

One module-scoped LocalCluster (master + 4 LeNet5 workers, no injected delay) serves every test here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from loadtest import report, run
from nercc.paths import REPO_ROOT

N_WORKERS = 4
K = 2


@pytest.fixture(scope="module")
def cluster():
    from nercc.serving import LocalCluster

    with LocalCluster("lenet5", n_workers=N_WORKERS) as c:
        yield c


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    run.configure(parser)
    return parser.parse_args(list(argv))


def test_short_headless_run_reports_every_scheme(cluster, tmp_path):
    """`nercc loadtest` on given URLs: summary.json with all four schemes, no failures, plots and report.md."""
    args = parse(
        "--profile", "none", "--workers", str(N_WORKERS), "--inputs", str(K), "--users", "4",
        "--duration", "4", "--rounds", "2", "--deadline-ms", "2000", "--hard-timeout-ms", "4000",  # CI boxes are slow
        "--master-url", cluster.master_url, "--worker-urls", ",".join(cluster.worker_urls), "--out", str(tmp_path),
    )
    assert run.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    schemes = summary["profiles"]["none"]["schemes"]
    assert list(schemes) == ["uncoded", "replication", "bacc", "nercc"]
    for name, s in schemes.items():
        assert s["requests"] >= 10, name
        assert s["failures"] == 0, (name, s["failure_reasons"])
        ps = [s[f"{report.pkey(p)}_ms"] for p in report.PERCENTILES]
        assert all(0 < a <= b for a, b in zip(ps, ps[1:])), (name, ps)
        # Locust counted the same requests as our log, except the (at most one per user and round) still in
        # flight when a run's time ended: they finish during the stop and reach our log after Locust's final stats
        assert 0 <= s["requests"] - s["locust"]["requests"] <= 4 * 2 and s["locust"]["failures"] == 0, name
        assert s["n_inputs_checked"] == K * s["requests"], name
    # the baselines return f itself; the coded schemes approximate it (no straggler: every answer is used)
    for name in ("uncoded", "replication"):
        assert schemes[name]["mse"] < 1e-10 and schemes[name]["rel_acc"] == 1.0, name
    for name in ("bacc", "nercc"):
        assert schemes[name]["rel_acc"] >= 0.9, name
    assert schemes["uncoded"]["compute_per_input"] == 1
    assert schemes["replication"]["compute_per_input"] == N_WORKERS // K
    assert schemes["nercc"]["compute_per_input"] == N_WORKERS / K
    assert schemes["nercc"]["measured_compute_per_input"] == pytest.approx(N_WORKERS / K)
    assert schemes["uncoded"]["measured_compute_per_input"] == pytest.approx(1.0)
    for plot in ("latency_cdf_none.png", "p99_by_profile.png"):
        assert (tmp_path / plot).stat().st_size > 10_000, plot
    text = (tmp_path / "report.md").read_text()
    assert "| none | NeRCC |" in text and "p99.9" in text


def test_together_runs_every_scheme_in_one_locust_process(cluster, tmp_path):
    """--together: one Locust run with the four user classes, the users split evenly, one log split by scheme."""
    args = parse(
        "--profile", "none", "--workers", str(N_WORKERS), "--inputs", str(K), "--users", "8", "--together",
        "--duration", "4", "--rounds", "1", "--deadline-ms", "2000", "--hard-timeout-ms", "4000",
        "--master-url", cluster.master_url, "--worker-urls", ",".join(cluster.worker_urls), "--out", str(tmp_path),
    )
    assert run.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["users_per_scheme"] == 2
    block = summary["profiles"]["none"]
    assert {run_["requests_log"] for runs in block["runs"].values() for run_ in runs} == {
        "raw/requests_none_r1_together.jsonl"}
    for name, s in block["schemes"].items():
        assert s["requests"] >= 5 and s["failures"] == 0, (name, s)
        assert s["locust"]["requests"] <= s["requests"], name
    assert sum(s["requests"] for s in block["schemes"].values()) == len(
        report.read_requests(tmp_path / "raw" / "requests_none_r1_together.jsonl")[0])


def _locust(cluster, tmp_path, users: int, user_class: str, seconds: int = 4):
    log = tmp_path / f"requests_{users}.jsonl"
    command = [
        sys.executable, "-m", "locust", "-f", str(run.LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--loglevel", "WARNING",
        "--master-url", cluster.master_url, "--worker-urls", ",".join(cluster.worker_urls),
        "--n-inputs", str(K), "--deadline-ms", "5000", "--hard-timeout-ms", "10000",
        "--requests-log", str(log), user_class,
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, env=run._locust_env(), capture_output=True, text=True,
                          timeout=seconds + 120)
    assert log.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    requests, events = report.read_requests(log)
    return requests, events, done


def _max_overlap(requests) -> int:
    """Most requests whose [start, end] intervals (greenlet wall clock) overlap at one instant."""
    edges = []
    for r in requests:
        end = r["t"]
        edges += [(end - r["wall_ms"] / 1e3, 1), (end, -1)]
    depth = best = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        depth += step
        best = max(best, depth)
    return best


def test_sixteen_users_keep_sixteen_batches_in_flight(cluster, tmp_path):
    """One Locust process, 16 users: 16 CodedClient.infer calls really run at once in the asyncio loop."""
    requests, events, done = _locust(cluster, tmp_path, 16, "NerccUser")
    assert requests, done.stdout[-2000:]
    assert all(r["ok"] for r in requests), {r["error"] for r in requests if not r["ok"]}
    [stop] = [e for e in events if e["event"] == "test_stop"]
    # counted inside the event loop, where the gRPC calls are made; a blocked hub would give 1
    assert stop["max_in_flight"] == 16
    # and seen independently from the users' side: their request intervals overlap 16 deep
    assert _max_overlap(requests) >= 14
    one_requests, one_events, _ = _locust(cluster, tmp_path, 1, "NerccUser")
    assert [e["max_in_flight"] for e in one_events if e["event"] == "test_stop"] == [1]
    assert _max_overlap(one_requests) == 1


def test_web_ui_runs_the_users(cluster, tmp_path):
    """Locust's web UI (its HTTP API, as the browser uses it): start a swarm, see nercc requests, stop."""
    import time
    import urllib.parse
    import urllib.request

    from nercc.serving.cluster import free_ports

    [port] = free_ports(1)
    command = [
        sys.executable, "-m", "locust", "-f", str(run.LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port),
        "--loglevel", "WARNING", "--master-url", cluster.master_url, "--worker-urls", ",".join(cluster.worker_urls),
        "--n-inputs", str(K), "--deadline-ms", "2000", "NerccUser",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=run._locust_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/", timeout=1).read()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()[-2000:]
                time.sleep(0.1)
        # the form posts the custom parameters too; an empty lam field must mean "from the profile"
        form = urllib.parse.urlencode({"user_count": 4, "spawn_rate": 4, "host": "", "lam_enc": "", "lam_dec": ""})
        answer = json.loads(urllib.request.urlopen(base + "/swarm", data=form.encode(), timeout=10).read())
        assert answer["success"], answer
        stats = {}
        for _ in range(150):
            time.sleep(0.2)
            stats = json.loads(urllib.request.urlopen(base + "/stats/requests", timeout=10).read())
            rows = {row["name"]: row for row in stats["stats"]}
            if rows.get("nercc", {}).get("num_requests", 0) >= 20:
                break
        assert rows["nercc"]["num_requests"] >= 20, stats
        assert rows["nercc"]["num_failures"] == 0, stats.get("errors")
        assert stats["user_count"] == 4
        urllib.request.urlopen(urllib.request.Request(base + "/stop", method="POST"), timeout=10).read()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_locust_reports_a_dead_cluster_as_failures(tmp_path):
    """No server behind the URLs: the users' requests fail with a reason, nothing hangs or crashes."""
    from nercc.serving.cluster import free_ports

    ports = free_ports(N_WORKERS + 1)
    log = tmp_path / "dead.jsonl"
    command = [
        sys.executable, "-m", "locust", "-f", str(run.LOCUSTFILE), "--headless", "--only-summary",
        "-u", "2", "-r", "2", "-t", "3s", "--loglevel", "WARNING",
        "--master-url", f"127.0.0.1:{ports[0]}", "--worker-urls", ",".join(f"127.0.0.1:{p}" for p in ports[1:]),
        "--n-inputs", str(K), "--requests-log", str(log), "UncodedUser",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, env=run._locust_env(), capture_output=True, text=True, timeout=120)
    requests, _ = report.read_requests(log)
    assert requests and not any(r["ok"] for r in requests), done.stdout[-2000:]
    assert all("NotEnoughAnswersError" in r["error"] for r in requests), requests[0]["error"]
    assert done.returncode == 1  # Locust's exit code for a run with failures


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "1"], "--workers"),
        (["--inputs", "13"], "--inputs"),
        (["--users", "0"], "--users"),
        (["--duration", "0"], "--duration"),
        (["--schemes", "uncoded,magic"], "magic"),
        (["--kill-worker", "12"], "--kill-worker"),
        (["--master-url", "127.0.0.1:1"], "--worker-urls"),
        (["--together", "--users", "10"], "evenly"),
        (["--rounds", "0"], "--rounds"),
        (["--rate-per-user", "-1"], "--rate-per-user"),
    ],
)
def test_bad_arguments_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        run._check_args(parse(*argv))


def test_dead_worker_needs_a_local_cluster(tmp_path):
    args = parse("--profile", "dead-worker", "--worker-urls", "127.0.0.1:1,127.0.0.1:2", "--workers", "2",
                 "--inputs", "2", "--out", str(tmp_path))
    with pytest.raises(ValueError, match="dead-worker"):
        run.main(args)


def test_quick_caps_duration_and_users():
    args = parse("--quick", "--duration", "600", "--users", "64")
    run._check_args(args)
    assert args.duration == run.QUICK["duration"] and args.users == run.QUICK["users"]


def test_accuracy_against_the_local_model():
    """MSE / RelAcc are measured against f on the same MNIST images and the true labels."""
    reference = report.Reference("lenet5", K)
    exact = [{"batch": b, "predictions": reference.f_of(b).tolist()} for b in range(20)]
    result = report.accuracy_of(exact, reference)
    assert result["mse"] < 1e-12 and result["rel_acc"] == 1.0 and result["n_inputs_checked"] == 20 * K
    uniform = [{"batch": b, "predictions": np.full((K, 10), 0.1).tolist()} for b in range(20)]
    worse = report.accuracy_of(uniform, reference)
    assert worse["mse"] > 0.5 and worse["rel_acc"] < 0.5


def test_percentiles_are_exact():
    values = list(range(1, 1001))
    p = report.latency_percentiles(values)
    assert p["p50"] == pytest.approx(500.5) and p["p99.9"] == pytest.approx(999.001)
    assert report.latency_percentiles([])["p99"] is None


def test_unanswered_batches_count_as_never_answered():
    """A batch the client gave up on has no latency: percentiles reaching into those are None ('never')."""
    records = [{"ms": float(v), "n_arrived": 8} for v in range(1, 96)] + [{"ms": 3.0} for _ in range(5)]
    latencies = [report.latency_or_inf(r) for r in records]
    p = report.latency_percentiles(latencies)
    assert p["p50"] == pytest.approx(50.5) and p["p90"] is not None
    assert p["p99"] is None and p["p99.9"] is None


@pytest.mark.slow
def test_dead_worker_quick_profile(tmp_path):
    """`nercc loadtest --profile dead-worker --quick`: the coded schemes and replication survive a killed worker;
    uncoded loses the batches that needed it."""
    args = parse("--profile", "dead-worker", "--quick", "--deadline-ms", "1000", "--out", str(tmp_path))
    assert run.main(args) == 0
    schemes = json.loads((tmp_path / "summary.json").read_text())["profiles"]["dead-worker"]["schemes"]
    assert schemes["uncoded"]["unanswered"] > 0
    for name in ("replication", "bacc", "nercc"):
        assert schemes[name]["unanswered"] == 0, name
        assert schemes[name]["failures"] == 0, (name, schemes[name]["failure_reasons"])
