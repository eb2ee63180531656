"""The load harness: both engines against a real 4-worker Triton cluster, the capacity ramp, the report.

One module-scoped LocalCluster (master + 4 LeNet5 workers, no injected delay) serves the end-to-end tests here;
the report's arithmetic (engine comparison, targets, first:M replay) is checked on hand-made logs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nercc.loadtest import openloop, report, run, workload
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


def _urls(cluster) -> list:
    return ["--master-url", cluster.master_url, "--worker-urls", ",".join(cluster.worker_urls)]


# ------------------------------------------------------------------------------------------------ engines, real cluster
def test_asyncio_engine_is_open_loop_and_logs_cpu(cluster, tmp_path):
    """Poisson arrivals at the asked rate, each batch on time (no waiting for earlier ones), CPU from /proc."""
    log = tmp_path / "ol.jsonl"
    command = [sys.executable, "-m", "nercc.loadtest.openloop", "--scheme", "uncoded", "--rate", "40", "--duration", "2",
               "--n-inputs", str(K), "--deadline-ms", "2000", "--requests-log", str(log),
               "--server-pids", ",".join(map(str, cluster.pids())), *_urls(cluster)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=run._env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    requests, events = report.read_log(log)
    # exactly the seeded schedule: the same offsets the engine drew
    assert len(requests) == len(workload.poisson_offsets(40, 2, 1))
    assert all(r["ok"] for r in requests), {r["error"] for r in requests if not r["ok"]}
    stats = report.run_stats(requests, events, "uncoded", N_WORKERS, K, None)
    assert 25 <= stats["offered_batches_per_s"] <= 60
    assert stats["throughput_share"] >= 0.9
    cpu = stats["cpu_ms_per_batch_parts"]
    assert cpu["servers"] > 0 and cpu["load_generator"] > 0 and cpu["total"] == pytest.approx(
        cpu["servers"] + cpu["load_generator"], abs=0.02)
    assert stats["cpu_ms_per_batch"] == cpu["total"]
    # every batch carries the per-worker round trips a simulator calibrates from
    assert all(len(r["worker_ms"]) == K and r["n_requests"] == K for r in requests)


def test_asyncio_engine_drives_the_coded_endpoint(cluster, tmp_path):
    """--coded-endpoint: one request per batch to <model>_coded, logged as nercc-server, same record shape."""
    log = tmp_path / "endpoint.jsonl"
    command = [sys.executable, "-m", "nercc.loadtest.openloop", "--scheme", "nercc", "--coded-endpoint", "--rate",
               "20", "--duration", "1", "--n-inputs", str(K), "--deadline-ms", "2000", "--policy", "all",
               "--requests-log", str(log), "--server-pids", ",".join(map(str, cluster.pids())), *_urls(cluster)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=run._env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    requests, events = report.read_log(log)
    assert requests and all(r["ok"] and r["scheme"] == "nercc-server" for r in requests)
    assert all(r["arrived"] == list(range(N_WORKERS)) and r["n_requests"] == N_WORKERS for r in requests)
    assert [e["scheme"] for e in events if e.get("event") == "engine"] == ["nercc-server"]


def test_locust_drives_the_coded_endpoint(cluster, tmp_path):
    """The Locust engine's NerccUser with --coded-endpoint: batches go to <model>_coded, logged as nercc-server."""
    log = tmp_path / "locust_endpoint.jsonl"
    command = [
        sys.executable, "-m", "locust", "-f", str(run.LOCUSTFILE), "--headless", "--only-summary",
        "-u", "2", "-r", "2", "-t", "3s", "--loglevel", "WARNING", "--rate", "5", "--coded-endpoint",
        "--deadline-ms", "2000", "--policy", "all", "--n-inputs", str(K), "--requests-log", str(log),
        *_urls(cluster), "NerccUser",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, env=run._env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    requests, _ = report.read_log(log)
    assert requests and all(r["ok"] and r["scheme"] == "nercc-server" for r in requests)
    assert all(r["arrived"] == list(range(N_WORKERS)) for r in requests)


def test_capacity_ramp_finds_a_knee_or_says_it_did_not(cluster, tmp_path):
    log = tmp_path / "ramp.jsonl"
    command = [sys.executable, "-m", "nercc.loadtest.openloop", "--scheme", "nercc", "--ramp", "10,3,90,1",
               "--n-inputs", str(K), "--policy", "first:3", "--deadline-ms", "2000", "--requests-log", str(log),
               "--server-pids", ",".join(map(str, cluster.pids())), *_urls(cluster)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=run._env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ramp = report.ramp_summary(log)
    rates = [s["rate"] for s in ramp["steps"]]
    assert rates == [10, 30, 90][: len(rates)] and rates
    assert all(s["requests"] >= 25 for s in ramp["steps"])  # 40 expected per step (Poisson)
    # the steps passed up to the knee; a step past it ends the ramp
    assert [s["passed"] for s in ramp["steps"]][:-1] == [True] * (len(rates) - 1)
    if ramp["knee_reached"]:
        assert ramp["knee_batches_per_s"] == (rates[-2] if len(rates) > 1 else None)
    else:
        assert ramp["knee_batches_per_s"] == rates[-1] == 90
    assert ramp["p50_ms_light"] > 0 and ramp["cpu_ms_per_batch_light"]["servers"] > 0


def test_both_engines_end_to_end_with_calibration_and_frontier(cluster, tmp_path):
    """`nercc loadtest --engine both` on given URLs: ramp, chosen load and deadline, both engines, the comparison,
    the new per-scheme fields and the first:M frontier."""
    args = parse("--profile", "none", "--engine", "both", "--workers", str(N_WORKERS), "--inputs", str(K),
                 "--schemes", "uncoded,nercc,nercc-sys", "--ramp", "10,2,20,1", "--batches", "40",
                 "--frontier-batches", "30",
                 "--deadline-factor", "8", "--load-fraction", "0.3", "--out", str(tmp_path), *_urls(cluster))
    assert run.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    st = summary["settings"]
    cal = summary["calibration"]["schemes"]
    knees = [c["knee_batches_per_s"] for c in cal.values()]
    assert st["offered_batches_per_s"] == pytest.approx(run._nice(0.3 * min(knees)))
    assert st["deadline_ms"] == pytest.approx(np.ceil(8 * cal["nercc"]["p50_ms_light"]))
    patience = min(np.ceil(run.PATIENCE_FACTOR * cal["nercc"]["p50_ms_light"]), st["deadline_ms"] - 1)
    assert st["coded_policy"] == f"first:{N_WORKERS // 2 + 1}@{patience:g}" and "auto" in st["policy_choice"]
    sys_patience = min(np.ceil(run.PATIENCE_FACTOR * cal["nercc-sys"]["p50_ms_light"]), st["deadline_ms"] - 1)
    assert st["sys_policy"] == f"exact:{N_WORKERS // 2 + 1}@{sys_patience:g}" and "auto" in st["sys_policy_choice"]
    block = summary["profiles"]["none"]
    assert set(block["engines"]) == {"asyncio", "locust"}
    for scheme in ("uncoded", "nercc"):
        s = block["schemes"][scheme]
        assert s["engine"] == "asyncio" and s["requests"] >= 25, s
        for key in ("p50_ms", "p99_ms", "p99.9_ms", "offered_batches_per_s", "throughput_batches_per_s"):
            assert s[key] is not None and s[key] > 0, (scheme, key)
        # given URLs: the servers' pids are unknown, so only the load generator's CPU is measured, and said so
        assert s["cpu_ms_per_batch"] is None and s["cpu_ms_per_batch_parts"]["load_generator"] > 0
        locust = block["engines"]["locust"][scheme]
        assert locust["requests"] >= 25 and locust["cpu_ms_per_batch_parts"]["load_generator"] > 0
        row = block["engine_comparison"][scheme]
        assert row["p50_ms"]["ratio"] == pytest.approx(locust["p50_ms"] / s["p50_ms"], rel=1e-2)
    assert block["schemes"]["uncoded"]["rel_acc"] == 1.0
    # no straggler: systematic NeRCC's predictions are (nearly all) the own answers, the uncoded model's exactly;
    # on a busy 2-core box an own answer can still come after T (1.3 x the calibrated p50) and be recovered
    sys_row = block["schemes"]["nercc-sys"]
    assert sys_row["exact_share"] >= 0.8 and sys_row["rel_acc"] >= 0.95, sys_row
    assert block["schemes"]["nercc-sys"]["floor"]["policy"] == st["sys_policy"]
    assert [p["m"] for p in block["frontier"]["nercc-sys"]] == [2, 3, 4]
    points = block["frontier"]["nercc"]
    assert [p["m"] for p in points] == [2, 3, 4]
    assert all(p["rel_acc"] is not None for p in points)
    assert points[-1]["p50_ms"] >= points[0]["p50_ms"]  # waiting for more answers never makes it faster
    for name in ("latency_cdf_none.png", "frontier_none.png", "capacity_ramp.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    text = (tmp_path / "report.md").read_text()
    assert "Engine cross-check" in text and "| none | NeRCC |" in text


def test_rates_sweep_plots_latency_vs_load(cluster, tmp_path):
    args = parse("--profile", "none", "--engine", "asyncio", "--workers", str(N_WORKERS), "--inputs", str(K),
                 "--schemes", "uncoded", "--no-calibrate", "--rate", "10", "--deadline-ms", "2000", "--batches", "20",
                 "--rates", "10,30", "--no-frontier", "--record-predictions", "0", "--out", str(tmp_path),
                 *_urls(cluster))
    assert run.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    points = summary["sweep"]["points"]
    assert [p["rate"] for p in points] == [10, 30]
    assert points[1]["offered_batches_per_s"] > points[0]["offered_batches_per_s"]
    assert (tmp_path / "latency_vs_load.png").stat().st_size > 10_000


def test_locust_reports_a_dead_cluster_as_failures(tmp_path):
    """No server behind the URLs: the users' requests fail with a reason, nothing hangs or crashes."""
    from nercc.serving.cluster import free_ports

    ports = free_ports(N_WORKERS + 1)
    log = tmp_path / "dead.jsonl"
    command = [
        sys.executable, "-m", "locust", "-f", str(run.LOCUSTFILE), "--headless", "--only-summary",
        "-u", "2", "-r", "2", "-t", "3s", "--loglevel", "WARNING", "--rate", "5",
        "--master-url", f"127.0.0.1:{ports[0]}", "--worker-urls", ",".join(f"127.0.0.1:{p}" for p in ports[1:]),
        "--n-inputs", str(K), "--requests-log", str(log), "UncodedUser",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, env=run._env(), capture_output=True, text=True, timeout=120)
    requests, _ = report.read_log(log)
    assert requests and not any(r["ok"] for r in requests), done.stdout[-2000:]
    assert all("NotEnoughAnswersError" in r["error"] for r in requests), requests[0]["error"]
    assert done.returncode == 1  # Locust's exit code for a run with failures


def test_web_ui_runs_the_users(cluster):
    """Locust's web UI (its HTTP API, as the browser uses it): start a swarm, see nercc requests, stop."""
    import time
    import urllib.parse
    import urllib.request

    from nercc.serving.cluster import free_ports

    [port] = free_ports(1)
    command = [
        sys.executable, "-m", "locust", "-f", str(run.LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port),
        "--loglevel", "WARNING", *_urls(cluster), "--n-inputs", str(K), "--deadline-ms", "2000", "--rate", "20",
        "--policy", "first:3", "NerccUser",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=run._env(), stdout=subprocess.PIPE,
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
        rows = {}
        for _ in range(150):
            time.sleep(0.2)
            stats = json.loads(urllib.request.urlopen(base + "/stats/requests", timeout=10).read())
            rows = {row["name"]: row for row in stats["stats"]}
            if rows.get("nercc", {}).get("num_requests", 0) >= 20:
                break
        assert rows["nercc"]["num_requests"] >= 20, stats
        assert rows["nercc"]["num_failures"] == 0, stats.get("errors")
        urllib.request.urlopen(urllib.request.Request(base + "/stop", method="POST"), timeout=10).read()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "1"], "--workers"),
        (["--inputs", "13"], "--inputs"),
        (["--batches", "3"], "--batches"),
        (["--schemes", "uncoded,magic"], "magic"),
        (["--profile", "bimodal,nope"], "nope"),
        (["--kill-worker", "12"], "--kill-worker"),
        (["--master-url", "127.0.0.1:1"], "--worker-urls"),
        (["--rate", "0"], "--rate"),
        (["--rates", "5,x"], "--rates"),
        (["--no-calibrate", "--rate", "5"], "--deadline-ms"),
        (["--ramp", "1,1,5,1"], "--ramp"),
        (["--load-fraction", "2"], "--load-fraction"),
        (["--min-answers", "few"], "--min-answers"),
        (["--policy", "exact:7@10"], "--sys-policy"),
        (["--sys-policy", "exact:x"], "exact:M"),
    ],
)
def test_bad_arguments_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        run.check_args(parse(*argv))


def test_coded_batches_decode_from_at_least_m_by_default():
    args = parse()
    assert run.coded_min_answers(args, "first:7@19") == 7 and run.coded_min_answers(args, "all") is None
    assert run.coded_min_answers(parse("--min-answers", "0"), "first:7") is None
    assert run.coded_min_answers(parse("--min-answers", "3"), "first:7") == 3
    from nercc.loadtest import workload

    options = argparse.ArgumentParser()
    workload.add_engine_arguments(options)
    opts = options.parse_args(["--worker-urls", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--min-answers", "3",
                               "--policy", "first:3"])
    assert workload.client_kwargs(opts, "nercc")["min_answers"] == 3
    assert "min_answers" not in workload.client_kwargs(opts, "uncoded")


def test_dead_worker_needs_a_local_cluster():
    with pytest.raises(ValueError, match="dead-worker"):
        run.check_args(parse("--profile", "dead-worker", "--worker-urls", "127.0.0.1:1,127.0.0.1:2", "--workers", "2",
                             "--inputs", "2"))


def test_profile_all_is_the_issue_set():
    plan = run.check_args(parse("--profile", "all"))
    assert plan["profiles"] == ["bimodal", "bimodal-0.2", "bimodal-0.3", "slow-workers", "dead-worker"]
    assert plan["engines"] == ["asyncio", "locust"] and plan["policy"] == "first:7" and plan["auto_patience"]


# ------------------------------------------------------------------------------------------------ pure parts
def test_poisson_schedule_is_seeded_and_at_the_rate():
    a = workload.poisson_offsets(50.0, 100.0, seed=3)
    assert np.array_equal(a, workload.poisson_offsets(50.0, 100.0, seed=3))
    assert len(a) == pytest.approx(5000, rel=0.05) and a.max() < 100.0 and np.all(np.diff(a) > 0)
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps: CV 1
    with pytest.raises(ValueError, match="rate"):
        workload.poisson_offsets(0.0, 1.0, 0)


def test_ramp_rates_and_step_stats():
    assert openloop.ramp_rates("10,2,80,1.5") == ([10, 20, 40, 80], 1.5, openloop.RAMP_MIN_BATCHES)
    assert openloop.ramp_rates("0.5,2,1,4,8") == ([0.5, 1.0], 4.0, 8)
    records = [{"t_sched": 100 + i / 10, "t": 100 + i / 10 + 0.005, "ms": 5.0, "n_arrived": 2} for i in range(20)]
    stats = openloop.step_stats(records, 10.0, 2.0)
    assert stats["p50_ms"] == 5.0 and stats["arrivals"] == 10.0 and stats["throughput"] == pytest.approx(10.0)
    numpy_times = [dict(r, t=np.float64(r["t"])) for r in records]  # the client's times can be numpy floats
    assert type(openloop.step_stats(numpy_times, 10.0, 2.0)["throughput"]) is float  # ramp_step goes to JSON
    behind = [dict(r, t=r["t"] + i * 0.05) for i, r in enumerate(records)]  # answers trail further and further
    assert openloop.step_stats(behind, 10.0, 2.0)["throughput"] < 0.95 * 10


def _record(ms, sched, **extra):
    return {"scheme": "nercc", "batch": 0, "t_sched": sched, "t": sched + ms / 1e3, "ms": ms, "ok": True,
            "n_arrived": 3, "n_requests": 4, "lag_ms": 0.1, **extra}


def test_run_stats_offered_throughput_and_cpu():
    records = [_record(5.0 + (i % 10), 1000 + i * 0.1) for i in range(101)]
    events = [{"event": "cpu", "phase": "start", "step": None, "self_cpu_s": 1.0, "servers_cpu_s": 10.0, "wall": 1000},
              {"event": "cpu", "phase": "end", "step": None, "self_cpu_s": 1.303, "servers_cpu_s": 11.01,
               "wall": 1010.02, "max_in_flight": 2}]
    s = report.run_stats(records, events, "nercc", N_WORKERS, K, None)
    assert s["offered_batches_per_s"] == pytest.approx(10.0)
    assert s["throughput_batches_per_s"] == pytest.approx(101 / 10.014, rel=1e-3)
    assert s["cpu_ms_per_batch_parts"]["servers"] == pytest.approx(10.0)
    assert s["cpu_ms_per_batch_parts"]["load_generator"] == pytest.approx(3.0)
    assert s["cpu_ms_per_batch"] == pytest.approx(13.0)
    assert s["max_in_flight"] == 2 and s["compute_per_input"] == N_WORKERS / K


def _stats(p50, p99, p50_ci=None, p99_ci=None):
    return {"p50_ms": p50, "p99_ms": p99, "p50_ms_ci": p50_ci or [p50 * 0.9, p50 * 1.1],
            "p99_ms_ci": p99_ci or [p99 * 0.9, p99 * 1.1], "cpu_ms_per_batch_parts": {"load_generator": 1.0}}


def test_engine_comparison_needs_overlapping_intervals_and_medians_within_20_percent():
    engines = {"asyncio": {"uncoded": _stats(10, 50), "nercc": _stats(10, 20), "bacc": _stats(10, 20, p99_ci=[19, 21])},
               "locust": {"uncoded": _stats(11.9, 41), "nercc": _stats(12.1, 20),
                          "bacc": _stats(10.5, 24, p99_ci=[23, 26])}}
    rows = report.compare_engines(engines)
    assert rows["uncoded"]["agree"] and rows["uncoded"]["p50_ms"]["ratio"] == pytest.approx(1.19)
    assert rows["uncoded"]["p99_ms"]["overlap"]
    assert not rows["nercc"]["agree"] and not rows["nercc"]["medians_within"]  # p50 21% slower under Locust
    assert not rows["bacc"]["agree"] and rows["bacc"]["medians_within"]  # p99 intervals apart
    assert not rows["bacc"]["p99_ms"]["overlap"]
    summary = {"profiles": {"bimodal": {"schemes": {}, "engine_comparison": rows}}}
    [line] = report.target_checks(summary)
    assert "disagree: BACC, NeRCC" in line and "**not met**" in line
    table = report.engine_table(summary)
    assert "| bimodal | NeRCC | 10.0 [9.0, 11.0] | 12.1 [10.9, 13.3] | 1.21 |" in table
    assert "**no** (medians > 20% apart)" in table and "**no** (p99 intervals apart)" in table


def test_targets_verdicts_come_from_intervals():
    rng = np.random.default_rng(0)

    def run_of(scale, n=1000):
        return list(rng.exponential(scale, n) + 5.0)

    lat = {"uncoded": run_of(40.0), "replication": run_of(10.0), "hedged": run_of(9.7), "nercc": run_of(6.0)}

    def s(values, share=1.0, rel_acc=None, rel_acc_ci=None):
        p = report.latency_percentiles(values)
        return {"p99_ms": p["p99"], "p99.9_ms": p["p99.9"], **report.latency_intervals(values),
                "throughput_share": share, "rel_acc": rel_acc, "rel_acc_ci": rel_acc_ci}

    schemes = {"uncoded": s(lat["uncoded"]), "replication": s(lat["replication"]), "hedged": s(lat["hedged"]),
               "nercc": s(lat["nercc"], 0.96, 0.98, [0.965, 0.99])}
    targets = {t["key"]: t for t in report.evaluate_targets(schemes, lat)}
    # p99 ratio ~ 6/40 = 0.15: far below 0.5
    assert targets["nercc_p99_vs_uncoded"]["verdict"] == "met"
    lo, hi = targets["nercc_p99_vs_uncoded"]["interval"]
    assert lo < targets["nercc_p99_vs_uncoded"]["value"] < hi < 0.5
    # p99.9 of 1000 batches rests on one: replication's ~ NeRCC's x 1.6 but the interval is wide
    assert targets["nercc_p99.9_vs_replication"]["verdict"] in ("met", "undecided")
    # RelAcc 0.98 [0.965, 0.99] straddles 0.97: undecided, although the point is above the line
    assert targets["nercc_rel_acc"]["verdict"] == "undecided"
    summary = {"profiles": {"bimodal": {"schemes": schemes, "targets": list(targets.values())}}}
    text = "\n".join(report.target_checks(summary))
    assert "NeRCC RelAcc >= 0.97: 0.980 [0.965, 0.990] — **undecided**" in text
    assert "NeRCC p99 <= 0.5 x uncoded's p99: " in text and "— **met**" in text
    assert "0.95 x offered" in text and "**met** " not in text
    schemes["nercc"]["throughput_share"] = 0.9
    [share] = [t for t in report.evaluate_targets(schemes, lat) if t["key"] == "throughput_share"]
    assert share["verdict"] == "not met" and "lowest: NeRCC" in share["numbers"]
    # the same latencies for both: the ratio interval holds 1, so p99.9 <= replication's is undecided
    same = report.evaluate_targets({"nercc": s(lat["replication"]), "replication": s(lat["replication"])},
                                   {"nercc": lat["replication"], "replication": lat["replication"]})
    assert [t["verdict"] for t in same if t["key"] == "nercc_p99.9_vs_replication"] == ["undecided"]


def test_first_m_replay():
    record = {"n_arrived": 4, "encode_ms": 2.0, "decode_ms": 0.5,
              "worker_ms": {"0": 3.0, "1": 4.0, "2": 45.0, "3": 5.0}}
    assert report.reconstruct_first_m(record, 3, 4, deadline_ms=20.0) == (2.0 + 5.0 + 0.5, (0, 1, 3))
    # M = 4 needs the straggler: stop at the deadline with what is in
    assert report.reconstruct_first_m(record, 4, 4, deadline_ms=20.0) == (2.0 + 18.0 + 0.5, (0, 1, 3))
    # fewer than 2 by the deadline: wait for the second answer (late)
    assert report.reconstruct_first_m(record, 4, 4, deadline_ms=5.5) == (2.0 + 4.0 + 0.5, (0, 1))
    assert report.reconstruct_first_m({"ms": 3.0}, 2, 4, 20.0) == (None, ())
    # first:M@T: all in by T -> every answer; else T with those in when M came by T; else the M-th
    everyone = dict(record, worker_ms={"0": 3.0, "1": 4.0, "2": 6.0, "3": 5.0})
    assert report.reconstruct_first_m(everyone, 2, 4, 20.0, patience_ms=10.0) == (2.0 + 6.0 + 0.5, (0, 1, 2, 3))
    assert report.reconstruct_first_m(record, 2, 4, 20.0, patience_ms=10.0) == (2.0 + 8.0 + 0.5, (0, 1, 3))
    assert report.reconstruct_first_m(record, 3, 4, 20.0, patience_ms=6.0) == (2.0 + 5.0 + 0.5, (0, 1, 3))
    # min_answers = M: fewer than M by the deadline waits for the M-th (late) instead of decoding from those in
    assert report.reconstruct_first_m(record, 4, 4, 20.0, min_answers=4) == (2.0 + 45.0 + 0.5, (0, 1, 2, 3))


def test_exact_replay_follows_the_clients_exact_policy():
    """exact:M@T replayed on an `all` trace of a systematic scheme: exact at the last own answer, else at T from
    the answers in (M at least), else at the M-th."""
    from nercc.coding import make_scheme

    own = make_scheme("nercc-sys", 2, 6).systematic_workers
    parity = [w for w in range(6) if w not in own]
    times = {own[0]: 3.0, own[1]: 4.0, parity[0]: 2.0, parity[1]: 5.0, parity[2]: 6.0, parity[3]: 30.0}
    record = {"n_arrived": 6, "encode_ms": 1.0, "decode_ms": 0.5, "worker_ms": {str(w): t for w, t in times.items()}}
    latency, used = report.reconstruct_first_m(record, 4, 6, 20.0, patience_ms=10.0, scheme="nercc-sys", n_inputs=2)
    assert latency == 1.0 + 4.0 + 0.5 and used == tuple(sorted(sorted(times, key=times.get)[:3]))  # own answers done
    late_own = dict(record, worker_ms={str(w): (40.0 if w == own[1] else t) for w, t in times.items()})
    latency, used = report.reconstruct_first_m(late_own, 4, 6, 20.0, patience_ms=10.0, scheme="nercc-sys",
                                               n_inputs=2)
    assert latency == 10.0 + 0.5 and own[1] not in used and len(used) == 4  # recovered at T from those in
    # frontier: exact batches decode from the own answers only, bit-exactly
    reference = report.Reference("lenet5", 2)
    records = [dict(record, batch=b) for b in range(10)]
    points = report.frontier(records, "nercc-sys", "lenet5", 2, 6, 20.0, 2, reference, [4], patience_ms=10.0)
    assert points[0]["mse"] == 0.0 and points[0]["rel_acc"] == 1.0
    assert points[0]["p50_ms"] == pytest.approx(1.0 + 4.0 + 0.5)


def test_first_m_frontier_accuracy_uses_the_right_workers():
    """Decoding from every worker is (nearly) exact; from fewer it can only lose accuracy on average."""
    reference = report.Reference("lenet5", 4)
    records = [{"batch": b, "n_arrived": 12, "encode_ms": 1.0, "decode_ms": 0.1,
                "worker_ms": {str(w): 1.0 + w for w in range(12)}} for b in range(30)]
    points = report.frontier(records, "nercc", "lenet5", 4, 12, 100.0, 4, reference, [6, 12])
    assert points[0]["p50_ms"] == pytest.approx(1.0 + 6.0 + 0.1) and points[1]["p50_ms"] == pytest.approx(13.1)
    assert points[1]["rel_acc"] >= 0.97 and points[1]["mse"] <= points[0]["mse"]


def test_accuracy_against_the_local_model():
    """MSE / RelAcc are measured against f on the same test inputs and the true labels."""
    reference = report.Reference("lenet5", K)
    exact = [{"batch": b, "predictions": reference.f_of(b).tolist()} for b in range(20)]
    result = report.accuracy_of(exact, reference)
    assert result["mse"] < 1e-12 and result["rel_acc"] == 1.0 and result["n_inputs_checked"] == 20 * K
    uniform = [{"batch": b, "predictions": np.full((K, 10), 0.1).tolist()} for b in range(20)]
    worse = report.accuracy_of(uniform, reference)
    assert worse["mse"] > 0.5 and worse["rel_acc"] < 0.5


def test_batches_come_from_each_models_dataset():
    for model, shape in (("lenet5", (28, 28)), ("repvgg_cifar10", (32, 32, 3))):
        batches = workload.Batches(model, 4)
        index, batch = batches.take()
        assert index == 0 and batch.shape == (4, *shape) and batch.dtype == np.uint8
        assert batches.take()[0] == 1


def test_slow_workers_profile_slows_exactly_the_first_count_workers():
    from nercc.serving.stragglers import StragglerSampler, parse_straggler

    profile = parse_straggler("slow-workers:count=2,slow_ms=40")
    assert str(profile) == "slow-workers:count=2,slow_ms=40" and not profile.is_none
    delays = [[StragglerSampler(profile, 0, w).next_delay_ms() for _ in range(5)] for w in range(4)]
    assert delays == [[40.0] * 5, [40.0] * 5, [0.0] * 5, [0.0] * 5]
    assert profile.mean_delay_ms(worker_index=1) == 40.0 and profile.mean_delay_ms(worker_index=2) == 0.0
    with pytest.raises(ValueError, match="count"):
        parse_straggler("slow-workers:count=1.5,slow_ms=40")


def test_percentiles_are_exact():
    values = list(range(1, 1001))
    p = report.latency_percentiles(values)
    assert p["p50"] == pytest.approx(500.5) and p["p99.9"] == pytest.approx(999.001)
    assert report.latency_percentiles([])["p99"] is None


def test_unanswered_batches_count_as_never_answered():
    records = [{"ms": float(v), "n_arrived": 8} for v in range(1, 96)] + [{"ms": 3.0} for _ in range(5)]
    p = report.latency_percentiles([report.latency_or_inf(r) for r in records])
    assert p["p50"] == pytest.approx(50.5) and p["p90"] is not None
    assert p["p99"] is None and p["p99.9"] is None


@pytest.mark.slow
def test_dead_worker_quick_profile(tmp_path):
    """`nercc loadtest --profile dead-worker --quick`: the coded schemes and replication survive a killed worker;
    uncoded loses the batches that needed it."""
    args = parse("--profile", "dead-worker", "--quick", "--engine", "asyncio", "--no-frontier", "--no-calibrate",
                 "--rate", "10", "--deadline-ms", "1000", "--out", str(tmp_path))
    assert run.main(args) == 0
    schemes = json.loads((tmp_path / "summary.json").read_text())["profiles"]["dead-worker"]["schemes"]
    assert schemes["uncoded"]["unanswered"] > 0
    for name in ("replication", "bacc", "nercc"):
        assert schemes[name]["unanswered"] == 0, name


def test_module_paths():
    assert Path(run.LOCUSTFILE).exists() and Path(openloop.__file__).parent == Path(run.LOCUSTFILE).parent


def test_checkout_locustfile_is_an_entry_point_to_the_package(tmp_path):
    """`locust -f loadtest/locustfile.py` (the design card's path) finds the package's users, from any folder."""
    thin = REPO_ROOT / "loadtest" / "locustfile.py"
    done = subprocess.run([sys.executable, "-m", "locust", "-f", str(thin), "--list"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    users = set(done.stdout.split())
    assert {workload.user_class_name(s) for s in workload.available_schemes()} <= users, done.stdout
    assert {"UncodedUser", "ReplicationUser", "BaccUser", "NerccUser"} <= users, done.stdout
    assert "CodedBatchUser" not in users  # the abstract base is not a user


def test_locust_distributed_mode_writes_one_merged_log_and_locust_html(cluster, tmp_path):
    """--locust-workers 2: Locust's master + 2 worker processes share the load; one log, our report, Locust's HTML."""
    args = parse("--profile", "none", "--engine", "locust", "--locust-workers", "2", "--workers", str(N_WORKERS),
                 "--inputs", str(K), "--schemes", "uncoded", "--no-calibrate", "--rate", "10", "--deadline-ms", "2000",
                 "--batches", "30", "--no-frontier", "--record-predictions", "0", "--out", str(tmp_path),
                 *_urls(cluster))
    assert run.main(args) == 0
    raw = tmp_path / "raw"
    logs = list(raw.glob("requests_none_uncoded_locust.jsonl"))
    assert logs and not list(raw.glob("*.worker*")), "per-process logs are merged and removed"
    records = [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]
    engines = [r for r in records if r.get("event") == "engine"]
    assert len({e["pid"] for e in engines}) == 2, engines  # two worker processes ran users
    requests = [r for r in records if "event" not in r]
    # 10 batches/s for Locust's ~5 s run time is ~50 in all; two processes each offering the full rate would be ~100
    assert 25 <= len(requests) <= 75, len(requests)
    assert (raw / "locust_none_uncoded_locust.html").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["profiles"]["none"]["schemes"]["uncoded"]["requests"] == len(requests)


# ------------------------------------------------------------------------------------------------ never die, repeats
def _write_run_log(path: Path, scheme: str, n: int = 200, seed: int = 0, slow: float = 0.0, step=None) -> None:
    """A synthetic engine log: n batches 0.1 s apart, 12 workers each, CPU events around them."""
    rng = np.random.default_rng(seed)
    lines = [{"event": "cpu", "phase": "start", "step": step, "self_cpu_s": 1.0, "servers_cpu_s": 2.0, "wall": 1000.0}]
    for i in range(n):
        worker_ms = {str(w): float(1.0 + rng.exponential(1.0) + (40.0 if rng.random() < slow else 0.0))
                     for w in range(12)}
        times = sorted(worker_ms.values())
        ms = 1.0 + (times[-1] if scheme == "uncoded" else times[6]) + 0.2
        record = {"scheme": scheme, "batch": i, "t_sched": 1000.0 + i / 10, "t": 1000.0 + i / 10 + ms / 1e3,
                  "ms": ms, "ok": True, "n_arrived": 12, "n_requests": 12, "lag_ms": 0.1, "encode_ms": 1.0,
                  "fanout_ms": ms - 1.2, "decode_ms": 0.2, "worker_ms": worker_ms}
        if step is not None:
            record["step"] = step
        lines.append(record)
    lines.append({"event": "cpu", "phase": "end", "step": step, "self_cpu_s": 1.2, "servers_cpu_s": 3.0,
                  "wall": 1000.0 + n / 10, "max_in_flight": 2})
    with open(path, "a") as fh:
        fh.write("\n".join(json.dumps(x) for x in lines) + "\n")


def _synthetic_ramp(capacity: float):
    """run_ramp for run.ramp_with_fallback: a ramp log whose steps above ``capacity`` batches/s fall behind."""
    def run_ramp(spec: str, tag: str, folder: Path) -> dict:
        rates, _, _ = openloop.ramp_rates(spec)
        log = folder / f"ramp{tag}.jsonl"
        for step, rate in enumerate(rates):
            _write_run_log(log, "nercc", n=20, seed=step, step=step)
            passed = rate <= capacity
            with open(log, "a") as fh:
                fh.write(json.dumps({"event": "ramp_step", "step": step, "rate": rate, "passed": passed,
                                     "throughput": rate if passed else capacity}) + "\n")
            if not passed:
                break
        return dict(report.ramp_summary(log), log=log.name)

    return run_ramp


def test_lower_ramp_halves_down_to_one_batch_per_second():
    assert run.lower_ramp("8,1.5,300,2") == "4,1.5,7.992,2"
    assert run.lower_ramp("4,1.5,7.992,2,40") == "2,1.5,3.996,2,40"
    assert run.lower_ramp("1.5,2,10,1") == "1,2,1.4985,1"
    assert run.lower_ramp("1,1.5,300,2") is None and run.lower_ramp("0.5,1.5,12,8,10") is None


def test_ramp_whose_lightest_step_fails_is_rerun_lower(tmp_path):
    result = run.ramp_with_fallback("8,1.5,300,2", lambda spec, tag: _synthetic_ramp(3.2)(spec, tag, tmp_path))
    # 8 failed, then 4 (ramp 4..7.99) failed, then 2 and 3 passed (ramp 2..3.996): the knee is 3
    assert [t["ramp"] for t in result["lowered"]] == ["8,1.5,300,2", "4,1.5,7.992,2"]
    assert result["ramp"] == "2,1.5,3.996,2" and result["knee_batches_per_s"] == 3.0 and "no_knee" not in result
    assert result["log"] == "ramp_lower2.jsonl"


def test_no_knee_even_at_one_batch_per_second_goes_on_at_the_lowest_rate(tmp_path):
    result = run.ramp_with_fallback("8,1.5,300,2", lambda spec, tag: _synthetic_ramp(0.5)(spec, tag, tmp_path))
    assert result["knee_batches_per_s"] is None and result["lowest_rate"] == 1.0
    assert "no knee" in result["no_knee"] and len(result["lowered"]) == 3  # 8 -> 4 -> 2 -> 1
    calibration = {"schemes": {"nercc": result}}
    args = parse("--schemes", "nercc", "--policy", "first:7")
    plan = run.check_args(args)
    choice = run.choose_load_and_deadline(args, plan, calibration)
    assert choice["rate"] == 1.0 and "no knee" in choice["rate_why"] and choice["no_knee"]["nercc"]


def _fake_runs(fail_on=None):
    """run._one_run without servers: writes a synthetic log per run; raises for the (repeat, scheme) in fail_on."""
    calls = []

    def one_run(args, plan, profile, scheme, engine, n_batches, rate, deadline, straggler, dead, clusters, raw_dir,
                progress, kind):
        calls.append((raw_dir.name, scheme, engine, kind))
        if fail_on and (raw_dir.name, scheme) == fail_on:
            raise RuntimeError(f"{scheme} engine crashed")
        log = raw_dir / f"requests_{profile}_{scheme}_{engine}.jsonl"
        _write_run_log(log, scheme, n=n_batches, seed=len(calls), slow=0.1)
        progress.update(1)
        return {"scheme": scheme, "engine": engine, "kind": kind, "rate": rate,
                "requests_log": str(log.relative_to(plan["raw_root"]))}

    return one_run, calls


def _offline_args(tmp_path, *extra):
    return parse("--profile", "bimodal", "--engine", "asyncio", "--schemes", "uncoded,nercc", "--no-calibrate",
                 "--rate", "10", "--deadline-ms", "30", "--policy", "first:7", "--batches", "200", "--no-frontier",
                 "--record-predictions", "0", "--worker-urls", ",".join(f"127.0.0.1:{p}" for p in range(1, 13)),
                 "--out", str(tmp_path), *extra)


def test_a_failed_measured_run_leaves_the_runs_before_it_and_exit_code_4(tmp_path, monkeypatch):
    one_run, calls = _fake_runs(fail_on=("raw", "nercc"))
    monkeypatch.setattr(run, "_one_run", one_run)
    assert run.main(_offline_args(tmp_path)) == 4
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failure"]["phase"] == "measure" and "nercc engine crashed" in summary["failure"]["error"]
    assert summary["phases_done"] == ["calibration", "report"]
    block = summary["profiles"]["bimodal"]
    assert [r["scheme"] for r in block["runs"]] == ["uncoded"]
    assert block["schemes"]["uncoded"]["requests"] == 200 and block["schemes"]["uncoded"]["p99_ms_ci"]
    text = (tmp_path / "report.md").read_text()
    assert "Incomplete run" in text and "exit code 4" in text


def test_a_failed_calibration_exits_3_with_a_summary(tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("ramp engine produced no log")

    monkeypatch.setattr(run, "calibrate", broken)
    args = _offline_args(tmp_path)
    args.no_calibrate, args.rate, args.deadline_ms = False, None, None
    assert run.main(args) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failure"] == {"phase": "calibration", "error": "RuntimeError: ramp engine produced no log",
                                  "exit_code": 3}
    assert not (tmp_path / "report.md").exists()
    assert run.main(parse("--batches", "3", "--out", str(tmp_path))) == 2  # bad arguments: nothing runs


def test_repeats_keep_every_repeat_and_pool_them(tmp_path, monkeypatch):
    one_run, calls = _fake_runs()
    monkeypatch.setattr(run, "_one_run", one_run)
    assert run.main(_offline_args(tmp_path, "--repeat", "2")) == 0
    assert {c[0] for c in calls} == {"repeat-1", "repeat-2"}
    assert (tmp_path / "raw" / "repeat-2" / "requests_bimodal_nercc_asyncio.jsonl").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["repeat"] for r in summary["repeats"]] == [1, 2]
    pooled = summary["profiles"]["bimodal"]["schemes"]
    assert pooled["nercc"]["requests"] == 400 and pooled["nercc"]["repeats"] == 2
    spread = pooled["nercc"]["spread"]["p99_ms"]
    assert spread["min"] <= spread["median"] <= spread["max"] and len(spread["values"]) == 2
    one = summary["repeats"][0]["profiles"]["bimodal"]["schemes"]["nercc"]
    # 200 batches cannot bound a p99 from above (0.99^200 = 13 % > 2.5 %): no upper end
    assert one["requests"] == 200 and one["p99_ms_ci"][0] <= one["p99_ms"] and one["p99_ms_ci"][1] is None
    [target] = [t for t in summary["profiles"]["bimodal"]["targets"] if t["key"] == "nercc_p99_vs_uncoded"]
    assert len(target["per_repeat"]) == 2
    assert target["verdict"] == stats_combine(target["per_repeat"])
    # the floor: first:7 decodes at the 7th answer, so p99 / floor p99 is the decode + encode overhead only
    floor = pooled["nercc"]["floor"]
    assert floor["policy"] == "first:7" and 1.0 < floor["p99_over_floor_p99"] < 1.1
    text = (tmp_path / "report.md").read_text()
    assert "2 repeats" in text and "### Every repeat" in text and "### Spread over the repeats" in text
    assert "per repeat:" in text and "order-statistic floor" in text


def stats_combine(verdicts):
    from nercc import stats

    return stats.combine_verdicts(verdicts)


def test_decode_floor_follows_the_policy():
    from nercc.policy import parse_policy

    record = {"n_arrived": 4, "ms": 30.0, "encode_ms": 2.0, "decode_ms": 0.5,
              "worker_ms": {"0": 3.0, "1": 4.0, "2": 25.0, "3": 5.0}}
    assert report.decode_floor_ms(record, parse_policy("first:3", 4)) == 2.0 + 5.0
    assert report.decode_floor_ms(record, parse_policy("first:3@10", 4)) == 2.0 + 5.0
    # exact:M@T: every systematic worker (0, 1) answered by 6 ms: that moment
    assert report.decode_floor_ms(record, parse_policy("exact:3@10", 4), (0, 1)) == 2.0 + 4.0
    # a systematic worker (2) is late: max(T, the M-th)
    assert report.decode_floor_ms(record, parse_policy("exact:3@10", 4), (1, 2)) == 10.0
    assert report.decode_floor_ms(record, parse_policy("exact:3@1", 4), (1, 2)) == 7.0
    # fewer than M logged: its own decision moment; never answered: +inf
    assert report.decode_floor_ms(dict(record, worker_ms={"0": 3.0}), parse_policy("first:3", 4)) == 29.5
    assert report.decode_floor_ms({"ms": 3.0}, parse_policy("first:3", 4)) == float("inf")
