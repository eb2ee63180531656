"""nercc simulate / nercc plan: the vectorized engine against SimPy, queueing and order statistics against
closed forms, accuracy mapping, calibration, CLI shapes and errors."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest

simpy = pytest.importorskip("simpy")

from nercc.simulate import des, fast  # noqa: E402
from nercc.simulate.core import simulate  # noqa: E402
from nercc.simulate.model import (  # noqa: E402
    DEFAULT_CALIBRATION,
    AccuracyTable,
    ServiceModel,
    SimSettings,
    make_draws,
)


def _service() -> ServiceModel:
    """The committed calibration (a real 12-worker run on this machine)."""
    return ServiceModel.load(DEFAULT_CALIBRATION)


def _constant_service(base: float = 2.0, hold: float = 0.5, pre: float = 1.0) -> ServiceModel:
    """Every request takes exactly ``base`` ms: closed forms become exact."""
    one = {"coded": np.full((4, 12), base), "replication": np.full((4, 12), base), "uncoded": np.full((4, 4), base)}
    pres = {k: np.full(4, pre) for k in one}
    posts = {k: np.zeros(4) for k in one}
    return ServiceModel(one, pres, posts, worker_hold_ms=hold, master_hold_ms=0.5, n_workers=12, n_inputs=4)


# --------------------------------------------------------------------------------------- the engines


@pytest.mark.parametrize("scheme,policy", [
    ("uncoded", "deadline"), ("replication", "deadline"), ("hedged", "deadline"), ("bacc", "first:8"),
    ("nercc", "first:8"), ("nercc", "deadline"), ("nercc", "all"), ("uncoded", "all"), ("nercc", "first:8@12"),
    ("nercc-sys", "exact:8@12"), ("nercc-sys", "exact:10@4"), ("bacc-sys", "exact:6"), ("nercc-sys", "first:8"),
])
def test_fast_engine_equals_simpy(scheme, policy):
    # a load where queues form behind stragglers (50 batches/s, 40 ms holds) so ordering matters
    settings = SimSettings(scheme, 12, 4, "bimodal:p=0.15,slow_ms=40", rate=50, n_batches=600, policy=policy,
                           deadline_ms=20, hedge_ms=8.0 if scheme == "hedged" else None, seed=3)
    draws = make_draws(settings, _service())
    a, b = fast.run(settings, draws), des.run(settings, draws)
    finite = np.isfinite(b.latency_ms)
    assert np.array_equal(np.isfinite(a.latency_ms), finite)
    np.testing.assert_allclose(a.latency_ms[finite], b.latency_ms[finite], rtol=0, atol=1e-6)
    assert np.array_equal(a.n_arrived, b.n_arrived)
    assert np.array_equal(a.n_requests, b.n_requests)
    assert np.array_equal(a.late, b.late)
    assert np.array_equal(a.n_recovered, b.n_recovered)
    if scheme == "hedged":
        assert a.n_requests.max() > 4  # hedges were actually sent


def test_request_placement_is_the_clients():
    from nercc.client.core import plan_requests

    for scheme, n, k in (("uncoded", 12, 4), ("replication", 12, 4), ("hedged", 12, 4), ("hedged", 6, 4),
                         ("nercc", 12, 4), ("uncoded", 10, 3)):
        settings = SimSettings(scheme, n, k, "none", n_batches=7)
        d = make_draws(settings, _constant_service())
        for b in range(7):
            plan = plan_requests(scheme, k, n, rotation=b)
            assert dict(zip(d.worker[b].tolist(), d.row[b].tolist())) == plan.requests
            if scheme == "hedged":
                backups = {j: int(w) for j, w in enumerate(d.hedge_worker[b]) if w >= 0}
                assert backups == plan.backups


def test_fifo_start_matches_a_plain_queue():
    rng = np.random.default_rng(0)
    n = 3000
    worker = rng.integers(0, 7, n)
    send = rng.random(n) * 500
    hold = rng.exponential(3.0, n)
    start = fast.fifo_start(worker, send, hold)
    expected = np.empty(n)
    free = {}
    for i in sorted(range(n), key=lambda i: (worker[i], send[i], i)):
        expected[i] = max(send[i], free.get(worker[i], -np.inf))
        free[worker[i]] = expected[i] + hold[i]
    np.testing.assert_allclose(start, expected, atol=1e-9)


# ------------------------------------------------------------------- closed forms at negligible load


def test_coded_first_m_tail_is_the_binomial_order_statistic():
    # 0.2 batches/s: no queues. A batch waits for the slow mode iff fewer than M of N workers are fast.
    p, n, m = 0.3, 100, 60
    settings = SimSettings("nercc", n, 20, f"bimodal:p={p},slow_ms=40", rate=0.2, n_batches=20_000,
                           policy=f"first:{m}", deadline_ms=1000.0)
    res = fast.run(settings, make_draws(settings, _constant_service()))
    slow = float((res.latency_ms > 30).mean())
    from scipy.stats import binom

    expected = binom.cdf(m - 1, n, 1 - p)  # P(fast workers < M)
    assert abs(slow - expected) < 4 * math.sqrt(expected * (1 - expected) / 20_000) + 1e-3


def test_patient_first_m_decodes_from_everyone_or_settles_at_t():
    # negligible load, constant service: s stragglers of N decide the batch exactly (binomial counts)
    p, n, m, patience = 0.1, 12, 8, 10.0
    settings = SimSettings("nercc", n, 4, f"bimodal:p={p},slow_ms=40", rate=0.2, n_batches=20_000,
                           policy=f"first:{m}@{patience:g}", deadline_ms=100.0)
    draws = make_draws(settings, _constant_service())
    res = fast.run(settings, draws)
    stragglers = (draws.delay_ms > 0).sum(axis=1)
    alone = np.diff(draws.arrival_ms, prepend=-np.inf) > 100  # the rare batch queued behind a straggler aside
    assert alone.mean() > 0.97
    stragglers, res_n, res_fan = stragglers[alone], res.n_arrived[alone], res.fanout_ms[alone]
    assert np.array_equal(res_n[stragglers == 0], np.full((stragglers == 0).sum(), n))
    settled = (stragglers > 0) & (stragglers <= n - m)
    assert np.array_equal(res_n[settled], n - stragglers[settled])
    assert np.allclose(res_fan[settled] + draws.pre_ms[alone][settled], patience)  # decided at T
    assert settled.sum() > 1000 and (stragglers > n - m).sum() > 0
    assert (res.latency_ms[alone][stragglers > n - m] > 40).all()  # too few by T: waits for the M-th (slow) answer
    with pytest.raises(ValueError, match="below deadline_ms"):
        SimSettings("nercc", n, 4, policy="first:8@30", deadline_ms=30.0)


def test_exact_policy_is_exact_when_every_systematic_answer_is_on_time():
    # negligible load, constant service (2 ms): a batch is exact iff none of its K systematic workers straggles
    # (probability (1 - p)^K); otherwise it decides at T from the N - s that came, recovering the late inputs,
    # or waits for the M-th answer when more than N - M straggle
    p, n, k, m, patience = 0.2, 12, 4, 8, 10.0
    settings = SimSettings("nercc-sys", n, k, f"bimodal:p={p},slow_ms=40", rate=0.2, n_batches=20_000,
                           policy=f"exact:{m}@{patience:g}", deadline_ms=100.0)
    draws = make_draws(settings, _constant_service())
    res = fast.run(settings, draws)
    alone = np.diff(draws.arrival_ms, prepend=-np.inf) > 100
    slow = draws.delay_ms > 0
    sys_slow = slow[:, settings.systematic_workers].sum(axis=1)[alone]
    stragglers = slow.sum(axis=1)[alone]
    n_rec, n_arr, fan = res.n_recovered[alone], res.n_arrived[alone], res.fanout_ms[alone] + draws.pre_ms[alone]
    exact = sys_slow == 0
    waited = stragglers > n - m  # decided at the M-th answer, a slow one: every slow answer ties with it
    assert np.array_equal(n_rec[~waited] == 0, exact[~waited]) and (n_rec[waited] == 0).all()
    assert np.allclose(res.fanout_ms[alone][exact], 2.0)  # decided when the systematic answers came, before T
    expected = (1 - p) ** k
    assert abs(exact.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / exact.size)
    settled = ~exact & (stragglers <= n - m)
    assert np.allclose(fan[settled], patience) and np.array_equal(n_arr[settled], n - stragglers[settled])
    assert np.array_equal(n_rec[settled], sys_slow[settled])
    assert settled.sum() > 1000 and (~exact & (stragglers > n - m)).sum() > 0
    assert (fan[~exact & (stragglers > n - m)] > 40).all()
    with pytest.raises(ValueError, match="'exact' needs a systematic scheme"):
        SimSettings("nercc", n, k, policy="exact:8@5")
    with pytest.raises(ValueError, match="needs N > K"):
        SimSettings("nercc-sys", 4, 4, policy="first:3")


def test_systematic_relacc_counts_exact_inputs_as_one():
    table = AccuracyTable(model="lenet5", n_workers=12, n_inputs=4, stragglers=np.array([0.0, 4.0]),
                          rel={"nercc-sys": np.array([0.9, 0.5])}, source="test")
    settings = SimSettings("nercc-sys", 12, 4, "bimodal:p=0.2,slow_ms=40", rate=0.2, n_batches=4000,
                           policy="exact:8@10", deadline_ms=100.0)
    out = simulate(settings, _constant_service(), table)
    draws = make_draws(settings, _constant_service())
    res = fast.run(settings, draws)
    s = 12 - res.n_arrived
    expected = 1 - res.n_recovered / 4 * (1 - np.interp(s, [0, 4], [0.9, 0.5]))
    assert out["rel_acc"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert out["exact_batches"] == pytest.approx(float((res.n_recovered == 0).mean()), abs=1e-5)
    assert 0.4 < out["exact_batches"] < 0.52  # 0.8^4 = 0.41, plus batches that waited for slow answers (~0.07)


def test_replication_loses_when_all_copies_of_an_input_straggle():
    p, n, k = 0.3, 100, 20
    settings = SimSettings("replication", n, k, f"bimodal:p={p},slow_ms=40", rate=0.2, n_batches=20_000)
    res = fast.run(settings, make_draws(settings, _constant_service()))
    expected = 1 - (1 - p ** (n // k)) ** k
    slow = float((res.latency_ms > 30).mean())
    assert abs(slow - expected) < 4 * math.sqrt(expected * (1 - expected) / 20_000)
    # every batch: base + pre exactly when nobody straggles
    assert np.isclose(np.min(res.latency_ms), 3.0)


def test_a_straggler_delays_what_queues_behind_it():
    # two batches 1 ms apart; the first straggles on every worker: the second waits for the hold to end
    settings = SimSettings("nercc", 12, 4, "bimodal:p=1,slow_ms=40", rate=1.0, n_batches=2, policy="all")
    draws = make_draws(settings, _constant_service(base=2.0, hold=0.5, pre=1.0))
    draws.arrival_ms = np.array([0.0, 1.0])
    draws.delay_ms[1] = 0.0
    res = fast.run(settings, draws)
    assert np.isclose(res.latency_ms[0], draws.pre_ms[0] + 2.0 + 40.0 + res.decode_ms[0])
    # second batch fans out at 2 ms, starts when the first's hold (1 + 40.5) ends: waits 39.5 ms
    assert np.isclose(res.fanout_ms[1], 39.5 + 2.0)


def test_deadline_caps_the_tail_and_answers_shrink():
    # p = 0.3: fewer than the 2 answers a decode needs by the deadline is a 1e-5 event
    settings = SimSettings("nercc", 12, 4, "bimodal:p=0.3,slow_ms=40", rate=1.0, n_batches=3000,
                           policy="first:11", deadline_ms=15.0)
    from nercc.simulate.model import CodingCost

    class FixedCost(CodingCost):  # the decode time measured in-process reads high under CPU contention
        def measure(self, scheme, n_workers, n_inputs):
            return 0.01, np.array([2.0, 12.0]), np.array([0.05, 0.05])

    res = fast.run(settings, make_draws(settings, _constant_service(), FixedCost()))
    assert np.percentile(res.latency_ms, 99.9) < 15.0 + 0.5  # deadline + decode
    assert res.n_arrived.min() >= 2 and (res.n_arrived < 10).any()


# --------------------------------------------------------------------------------------------- accuracy


def test_accuracy_table_interpolates_the_measured_relacc():
    table = AccuracyTable.find("lenet5", 100, 20)
    assert table is not None and table.scaled_from is None
    data = json.load(open(table.source))
    rel, beyond = table.rel_acc("nercc", np.array([40]), 100)
    assert rel[0] == pytest.approx(data["results"]["40"]["nercc"]["relacc_mean"])
    mid, _ = table.rel_acc("nercc", np.array([45]), 100)
    lo, hi = data["results"]["40"]["nercc"]["relacc_mean"], data["results"]["50"]["nercc"]["relacc_mean"]
    assert mid[0] == pytest.approx((lo + hi) / 2)
    _, beyond = table.rel_acc("nercc", np.array([70]), 100)
    assert beyond[0]


def test_coded_summary_carries_relacc_and_compute():
    settings = SimSettings("nercc", 100, 20, "bimodal:p=0.3,slow_ms=40", rate=2, n_batches=2000,
                           policy="first:60", deadline_ms=30)
    out = simulate(settings, _service(), AccuracyTable.find("lenet5", 100, 20))
    assert out["compute_per_input"] == 5.0 and out["measured_compute_per_input"] == 5.0
    assert 0.9 < out["rel_acc"] <= 1.0
    assert out["p50_ms"] <= out["p99_ms"] <= out["p99.9_ms"]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs,needle", [
    (dict(scheme="nope"), "unknown scheme"),
    (dict(n_inputs=13), "K=13"),
    (dict(policy="first:1"), "M must be"),
    (dict(rate=0), "rate"),
    (dict(straggler="bimodal:p=2,slow_ms=1"), "'p'"),
])
def test_bad_settings_name_the_problem(kwargs, needle):
    base = dict(scheme="nercc", n_workers=12, n_inputs=4)
    base.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        SimSettings(**base)


def _nercc(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "nercc", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_simulate_writes_a_loadtest_shaped_summary(tmp_path):
    proc = _nercc("simulate", "--workers", "100", "--inputs", "20", "--straggler", "bimodal:p=0.3,slow_ms=40",
                  "--rate", "5", "--batches", "2000", "--policy", "first:60", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    data = json.load(open(tmp_path / "summary.json"))
    schemes = data["profiles"]["bimodal"]["schemes"]
    assert set(schemes) == {"uncoded", "replication", "hedged", "bacc", "nercc", "bacc-sys", "nercc-sys"}
    assert schemes["nercc"]["policy"] == "first:60" and schemes["nercc-sys"]["policy"] == "first:60"
    assert schemes["nercc-sys"]["rel_acc"] is not None and 0 <= schemes["nercc-sys"]["exact_batches"] < 0.05
    for row in schemes.values():
        for key in ("p50_ms", "p99_ms", "p99.9_ms", "rel_acc", "compute_per_input"):
            assert key in row
    assert schemes["replication"]["compute_per_input"] == 5.0
    assert "nercc" in proc.stdout


def test_cli_simulate_validates_against_a_measured_summary(tmp_path):
    measured = DEFAULT_CALIBRATION.parent / "real_N12_K4" / "summary.json"
    if not measured.exists():
        pytest.skip("no committed real run")
    proc = _nercc("simulate", "--validate", str(measured), "--calibration",
                  str(measured.parent / "calibration.json"), "--batches", "3000", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    val = json.load(open(tmp_path / "summary.json"))["validation"]
    for row in val["schemes"].values():
        assert set(row["p50_ms"]) == {"simulated", "measured", "rel_error"}


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    proc = _nercc("simulate", "--workers", "4", "--inputs", "8", "--out", str(tmp_path))
    assert proc.returncode == 2 and "K=8" in proc.stderr
    proc = _nercc("simulate", "--straggler", "weird:x=1", "--batches", "100", "--out", str(tmp_path))
    assert proc.returncode == 2 and "unknown straggler profile kind" in proc.stderr


def test_cli_measure_has_its_own_batch_counts(tmp_path):
    """--measure runs --measure-batches real batches per scheme (default 600), never the simulated --batches
    (20000 by default: ~35 minutes per scheme at 10 batches/s); a real run on a 4-worker cluster."""
    from nercc.simulate import cli

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--measure", "--out", str(tmp_path)])
    assert cli._check(args) is None and args.measure_batches == cli.MEASURE_BATCHES == 600
    proc = _nercc("simulate", "--measure", "--batches", "900", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--measure-batches" in proc.stderr
    proc = _nercc("simulate", "--measure", "--measure-batches", "3", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--measure-batches must be >= 10, got 3" in proc.stderr
    proc = _nercc("simulate", "--measure", "--workers", "4", "--inputs", "2", "--policy", "first:3", "--rate", "20",
                  "--measure-batches", "12", "--calibration-batches", "10", "--schemes", "uncoded,nercc",
                  "--out", str(tmp_path / "real"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.load(open(tmp_path / "real" / "summary.json"))
    assert data["settings"]["batches"] == 12 and "--measure-batches 12" in data["command"]
    rows = data["profiles"]["measured"]["schemes"]
    assert set(rows) == {"uncoded", "nercc"} and all(r["requests"] == 12 for r in rows.values())
    calibration = json.load(open(tmp_path / "real" / "calibration.json"))
    assert len(calibration["worker_ms"]["coded"]) == 10 and calibration["n_workers"] == 4


def test_cli_plan_prints_settings_that_meet_the_slo():
    proc = _nercc("plan", "--slo-p99-ms", "30", "--min-relacc", "0.95", "--straggler", "bimodal:p=0.3,slow_ms=40",
                  "--workers", "12,100", "--overheads", "3,5", "--batches", "1500")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "cheapest coded settings" in out and "replication" in out and "hedged" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("nercc ")]
    assert rows
    for row in rows:
        p99, rel = float(row[6]), float(row[8])
        assert p99 <= 30 and rel >= 0.95


def test_wide_fanouts_resample_one_real_batch_each():
    service = _service()
    rng = np.random.default_rng(0)
    table = np.asarray(service.worker_ms["coded"])
    draws = service.draw_worker(rng, "coded", 50, 100)
    rows = [set(r.tolist()) for r in table]
    for batch in draws:  # every simulated batch's 100 round trips come from one real batch's 12
        assert any(set(batch.tolist()) <= row for row in rows)
    service.independent = True
    mixed = service.draw_worker(rng, "coded", 50, 100)
    assert sum(any(set(b.tolist()) <= row for row in rows) for b in mixed) < 5


def test_untuned_tables_use_the_lam0_column():
    table = AccuracyTable.find("lenet5", 1000, 200)
    if table is None:
        pytest.skip("no N=1000 table")
    data = json.load(open(table.source.split(" (")[0]))
    assert "lam = 0" in table.source
    assert table.rel["nercc"][0] == pytest.approx(data["results"]["0"]["nercc0"]["relacc_mean"])
