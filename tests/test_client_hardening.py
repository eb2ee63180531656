"""The client's defences, transport-free: answer checks, plans around unavailable workers, worker health,
master failover order, give-up reasons, robust decoding and the non-finite guard (nercc.client.core/health)."""

import math

import numpy as np
import pytest

from nercc.client import core
from nercc.client.core import (
    BadPredictionsError,
    WaitState,
    check_answer,
    decode_coded_robust,
    ensure_finite,
    plan_requests,
    restrict_plan,
)
from nercc.client.health import MasterPool, WorkerHealth
from nercc.coding import NeRCC


def test_check_answer_names_every_problem():
    good = np.full((1, 10), 0.1, np.float32)
    assert check_answer(good, 1, 10) is None
    assert "shape" in check_answer(np.zeros((1, 11), np.float32), 1, 10)
    assert "dtype" in check_answer(good.astype(np.float64), 1, 10)
    assert "non-finite" in check_answer(np.full((1, 10), np.nan, np.float32), 1, 10)
    assert "outside [0, 1]" in check_answer(np.full((1, 10), 1e30, np.float32), 1, 10)
    assert check_answer(np.full((1, 10), 1e30, np.float32), 1, 10, value_range=None) is None
    assert "array" in check_answer(None, 1, 10)


def test_restrict_plan_coded_drops_unavailable_workers():
    plan = plan_requests("nercc", 4, 12)
    restricted = restrict_plan(plan, set(range(12)) - {3, 7})
    assert sorted(restricted.requests) == [w for w in range(12) if w not in (3, 7)]
    assert restrict_plan(plan, set(range(12))) is plan


def test_restrict_plan_baselines_move_inputs_to_idle_workers():
    plan = plan_requests("uncoded", 4, 12, rotation=0)
    blocked = next(iter(plan.requests))
    row = plan.requests[blocked]
    restricted = restrict_plan(plan, set(range(12)) - {blocked})
    assert blocked not in restricted.requests and sorted(restricted.requests.values()) == [0, 1, 2, 3]
    assert any(r == row for r in restricted.requests.values())
    # replication: the copies on other workers keep the input covered
    rep = plan_requests("replication", 4, 12)
    restricted = restrict_plan(rep, set(range(12)) - {0, 1})
    assert set(restricted.requests.values()) == {0, 1, 2, 3} and not {0, 1} & set(restricted.requests)
    # nowhere to go: the input stays on its worker (the batch fails with a clear reason, not silently)
    full = plan_requests("uncoded", 4, 4)
    assert restrict_plan(full, {1, 2, 3}).requests == full.requests


def test_a_worker_busy_with_an_abandoned_straggler_gets_no_new_request_while_others_are_idle():
    health = WorkerHealth(4, avoid_stragglers=True)
    health.sent(1)
    health.abandoned(1)  # its batch decoded without it
    assert health.busy_straggling(1) and health.available(1)  # soft: the planner decides
    health.sent(1)  # a later batch's request (not abandoned) completing must not clear the flag
    health.finished(1, True, 0.0)
    assert health.busy_straggling(1)
    health.finished(1, True, 0.1, abandoned=True)
    assert not health.busy_straggling(1)
    health.sent(2)
    health.abandoned(2)
    health.released(2, abandoned=True)  # cancelled: also ends it
    assert not health.busy_straggling(2)
    off = WorkerHealth(4)  # off by default
    off.sent(0)
    off.abandoned(0)
    assert not off.busy_straggling(0)


def test_planner_routes_around_busy_stragglers_only_while_enough_workers_are_idle():
    from nercc.client import CodedClient

    urls = [f"127.0.0.1:{port}" for port in range(2, 14)]  # never contacted: planning is local
    coded = CodedClient("127.0.0.1:1", urls, model="lenet5", scheme="nercc", n_inputs=4, policy="first:8",
                        deadline_ms=40, avoid_stragglers=True)
    for w in (0, 1, 2):
        coded.health.sent(w)
        coded.health.abandoned(w)
    assert sorted(coded._plan(4).requests) == list(range(3, 12))  # 9 idle >= M = 8
    for w in range(3, 8):
        coded.health.sent(w)
        coded.health.abandoned(w)
    assert sorted(coded._plan(4).requests) == list(range(12))  # only 4 idle: M could not come; send to all
    uncoded = CodedClient("127.0.0.1:1", urls, model="lenet5", scheme="uncoded", n_inputs=4, deadline_ms=40,
                          avoid_stragglers=True)
    uncoded.health.sent(1)
    uncoded.health.abandoned(1)
    assert uncoded._plan(4).requests == {0: 0, 4: 1, 2: 2, 3: 3}  # input 1 moves to an idle worker


def test_worker_health_marks_down_probes_and_caps_in_flight():
    health = WorkerHealth(4, max_failures=3, probe_interval_s=1.0, max_in_flight=2)
    events = []
    health.on_down, health.on_up = (lambda w: events.append(("down", w))), (lambda w: events.append(("up", w)))
    for t in range(3):
        health.sent(1)
        health.finished(1, False, float(t), "UNAVAILABLE: connection refused")
    assert health.is_down(1) and not health.available(1)
    assert "marked down after 3 consecutive failures" in health.unavailable()[1]
    assert health.probes_due(2.5) == [] and health.probes_due(3.0) == [1] and health.probes_due(3.5) == []
    health.probe_result(1, False, 3.0, "still refused")
    assert health.is_down(1)
    health.probe_result(1, True, 4.0)
    assert not health.is_down(1) and health.available(1)
    assert events == [("down", 1), ("up", 1)]
    # a success resets the count
    health.finished(2, False, 0.0, "x")
    health.finished(2, False, 0.0, "x")
    health.finished(2, True, 0.0)
    health.finished(2, False, 0.0, "x")
    assert not health.is_down(2)
    # in-flight cap: abandoned requests hold their slot until they end
    health.sent(0)
    health.sent(0)
    assert not health.available(0) and "in flight" in health.unavailable()[0]
    health.released(0)
    assert health.available(0)
    with pytest.raises(ValueError, match="max_in_flight"):
        WorkerHealth(4, max_in_flight=0)
    with pytest.raises(ValueError, match="probe_interval_s"):
        WorkerHealth(4, probe_interval_s=math.inf)


def test_master_pool_fails_over_in_order_and_retries_after_cooldown():
    pool = MasterPool(["m0:1", "m1:1", "m2:1"], cooldown_s=5.0)
    assert pool.order(0.0) == [0, 1, 2]
    pool.failed(0, 1.0, "UNAVAILABLE")
    assert pool.order(2.0) == [1, 2, 0]  # the failed one last, still a last resort
    assert pool.order(6.0) == [0, 1, 2]  # cool-down over: tried first again
    pool.failed(1, 6.0, "x")
    pool.failed(0, 7.0, "x")
    assert pool.order(8.0) == [2, 1, 0]
    with pytest.raises(ValueError, match="at least one"):
        MasterPool([])
    with pytest.raises(ValueError, match="distinct"):
        MasterPool(["a:1", "a:1"])


def _state(plan, **kw):
    return WaitState(plan, policy_kind="deadline", t_fanout=0.0, deadline_t=0.05, hard_t=2.0, **kw)


def test_give_up_says_why():
    plan = plan_requests("nercc", 2, 3)
    state = _state(plan)
    for w in range(2):
        state.on_failure(w, 0.01, "StatusCode.UNAVAILABLE: connection refused")
    err = state.give_up_error("nercc", 2000.0, {5: "marked down after 3 consecutive failures"})
    assert err.reason == "too many requests failed"
    assert "gave up after 10 ms, before the hard timeout: 2 request(s) failed" in str(err)
    assert "marked down" in str(err) and err.unavailable == {5: "marked down after 3 consecutive failures"}
    state = _state(plan_requests("nercc", 2, 3))
    state.on_answer(0, 0.01, np.zeros((1, 10)))
    state.on_tick(2.0)
    assert state.give_up_error("nercc", 2000.0).reason == "hard timeout"
    assert "gave up at the hard timeout (2000 ms)" in str(state.give_up_error("nercc", 2000.0))


def test_robust_decode_in_the_client_drops_a_wrong_answer():
    coding = NeRCC(2, 6)
    rng = np.random.default_rng(0)
    x = rng.random((2, 4))
    coded = coding.encode(x)
    z = np.exp(coded @ rng.standard_normal((4, 10)))
    answers = {w: (z[w] / z[w].sum())[None].astype(np.float32) for w in range(6)}
    clean, dropped = decode_coded_robust(coding, answers, tuple(range(6)))
    assert dropped == ()
    answers[2] = np.full((1, 10), 50.0, np.float32)
    robust, dropped = decode_coded_robust(coding, answers, tuple(range(6)))
    assert dropped == (2,)
    plain = core.decode_coded(coding, answers, tuple(range(6)))
    assert np.abs(robust - clean).max() < np.abs(plain - clean).max() / 10


def test_non_finite_predictions_are_never_returned():
    ensure_finite(np.zeros((2, 3), np.float32), "uncoded", (0, 1))
    with pytest.raises(BadPredictionsError, match="not finite"):
        ensure_finite(np.array([[np.inf]], np.float32), "nercc", (0, 1))


def test_client_arguments(tmp_path):
    from nercc.client import CodedClient

    workers = [f"127.0.0.1:{p}" for p in range(9001, 9007)]
    client = CodedClient(["127.0.0.1:1", "127.0.0.1:2"], workers, scheme="nercc", n_inputs=2)
    assert client.master_urls == ["127.0.0.1:1", "127.0.0.1:2"] and client.encode == "auto" and client.robust
    for bad in (float("inf"), float("nan"), -1.0, 10.0):
        with pytest.raises(ValueError, match="hard_timeout_ms"):
            CodedClient("127.0.0.1:1", workers, scheme="uncoded", hard_timeout_ms=bad)
    with pytest.raises(ValueError, match="distinct"):
        CodedClient(["a:1", "a:1"], workers)
    with pytest.raises(ValueError, match="answer_range"):
        CodedClient("a:1", workers, answer_range=(1.0, 0.0))
