"""The client's transport-free core: request plans, the wait-policy state machine, hedging, decoding.

A fake clock (plain numbers, seconds) and scripted arrivals drive :class:`WaitState`; no servers, no asyncio.
The transports are tested against real tritonservers in test_serving_client.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from nercc.client.core import (
    DECODE,
    GIVE_UP,
    WAIT,
    HedgeDelay,
    NotEnoughAnswersError,
    WaitState,
    decode_coded,
    encode_local,
    gather_uncoded,
    plan_requests,
)

MS = 1e-3


def state(scheme="nercc", k=4, n=12, policy="deadline", m=None, min_answers=2, deadline_ms=25.0,
          hard_ms=200.0, hedge_ms=None, rotation=0, patience_ms=None):
    plan = plan_requests(scheme, k, n, rotation)
    return WaitState(plan, policy_kind=policy, policy_m=m, min_answers=min_answers, t_fanout=0.0,
                     deadline_t=deadline_ms * MS, hard_t=hard_ms * MS,
                     hedge_t=None if hedge_ms is None else hedge_ms * MS,
                     patience_t=None if patience_ms is None else patience_ms * MS)


# ------------------------------------------------------------------------------------------------ plans
def test_plans_per_scheme():
    coded = plan_requests("nercc", 4, 12)
    assert coded.requests == {i: i for i in range(12)} and coded.coded and not coded.backups
    rep = plan_requests("replication", 4, 12, rotation=5)
    assert sorted(rep.requests) == list(range(12)) and sorted(rep.requests.values()) == [0, 0, 0, 1, 1, 1, 2, 2, 2,
                                                                                          3, 3, 3]
    first, second = plan_requests("uncoded", 4, 12, 0), plan_requests("uncoded", 4, 12, 1)
    assert first.requests == {0: 0, 1: 1, 2: 2, 3: 3} and second.requests == {4: 0, 5: 1, 6: 2, 7: 3}
    hedged = plan_requests("hedged", 4, 12, 2)
    assert hedged.requests == {8: 0, 9: 1, 10: 2, 11: 3}
    assert hedged.backups == {0: 0, 1: 1, 2: 2, 3: 3}  # idle workers after the K in use, wrapping around
    assert set(hedged.backups.values()).isdisjoint(hedged.requests)
    # fewer idle workers than inputs: only the first N - K inputs get a backup
    assert plan_requests("hedged", 4, 6).backups == {0: 4, 1: 5}
    with pytest.raises(ValueError, match="unknown scheme 'lt'"):
        plan_requests("lt", 4, 12)
    with pytest.raises(ValueError, match="K <= n_workers"):
        plan_requests("hedged", 13, 12)


# ------------------------------------------------------------------------------------------------ coded
def test_deadline_policy_waits_for_everyone_until_the_deadline():
    s = state()
    for w in range(11):
        assert s.on_answer(w, (1 + w) * MS, f"y{w}").action == WAIT
    assert s.next_wakeup(11 * MS) == pytest.approx(25 * MS)  # the deadline is the next thing that can happen
    d = s.on_tick(25 * MS)
    assert d.action == DECODE and d.reason == "deadline passed with enough answers"
    assert s.used_workers() == tuple(range(11)) and not s.late(s.used_workers())
    assert s.latency_ms()[3] == pytest.approx(4.0)
    assert s.on_answer(11, 30 * MS).action == DECODE and 11 not in s.answers  # decided: late answers ignored
    assert s.next_wakeup(30 * MS) is None


def test_deadline_policy_decodes_at_once_when_all_answered():
    s = state(n=6, k=2)
    decisions = [s.on_answer(w, w * MS).action for w in range(6)]
    assert decisions == [WAIT] * 5 + [DECODE]


def test_first_m_decodes_at_the_mth_answer():
    s = state(policy="first", m=8)
    actions = [s.on_answer(w, w * MS).action for w in (3, 1, 0, 7, 5, 2, 9)]
    assert actions == [WAIT] * 7
    assert s.on_answer(10, 8 * MS).action == DECODE
    assert s.used_workers() == (0, 1, 2, 3, 5, 7, 9, 10)


def test_patient_first_m_decodes_from_everyone_when_all_come_before_t():
    s = state(policy="first", m=8, patience_ms=15)
    actions = [s.on_answer(w, (1 + w) * MS).action for w in range(12)]
    assert actions == [WAIT] * 11 + [DECODE]  # the 8th answer (8 ms) is before T: keep waiting for all
    assert s.used_workers() == tuple(range(12))


def test_patient_first_m_settles_at_t_for_what_came():
    s = state(policy="first", m=8, patience_ms=15)
    for w in range(10):  # two stragglers
        assert s.on_answer(w, (1 + w) * MS).action == WAIT
    assert s.next_wakeup(10 * MS) == pytest.approx(15 * MS)  # T comes before the deadline
    d = s.on_tick(15 * MS)
    assert d.action == DECODE and d.reason == "policy satisfied"
    assert s.used_workers() == tuple(range(10)) and not s.late(s.used_workers())


def test_patient_first_m_past_t_decodes_at_the_mth_answer():
    s = state(policy="first", m=8, patience_ms=15)
    for w in range(6):
        s.on_answer(w, 1 * MS)
    assert s.on_tick(15 * MS).action == WAIT  # only 6 by T
    assert s.next_wakeup(15 * MS) == pytest.approx(25 * MS)
    assert s.on_answer(6, 16 * MS).action == WAIT
    assert s.on_answer(7, 17 * MS).action == DECODE  # the M-th after T ends the wait at once
    assert s.used_workers() == tuple(range(8))


def test_patience_is_ignored_by_baselines():
    s = state(scheme="uncoded", patience_ms=15)
    assert s.patience_t is None
    assert [s.on_answer(w, 1 * MS).action for w in range(4)] == [WAIT] * 3 + [DECODE]


def test_all_policy_waits_past_the_deadline_up_to_the_hard_timeout():
    s = state(policy="all", hard_ms=100)
    for w in range(11):
        s.on_answer(w, 1 * MS)
    assert s.on_tick(50 * MS).action == WAIT  # past the deadline: `all` keeps waiting
    assert s.next_wakeup(50 * MS) == pytest.approx(100 * MS)
    assert s.on_answer(11, 60 * MS).action == DECODE
    assert s.late(s.used_workers())


def test_too_few_by_the_deadline_waits_late_then_gives_up():
    s = state(min_answers=4, hard_ms=100)
    for w in range(3):
        s.on_answer(w, 1 * MS)
    assert s.on_tick(30 * MS).action == WAIT  # 3 < min_answers: wait past the deadline
    late = state(min_answers=4, hard_ms=100)
    for w in range(3):
        late.on_answer(w, 1 * MS)
    assert late.on_answer(7, 40 * MS).action == DECODE  # the 4th, after the deadline: decode, late
    assert late.late(late.used_workers())
    hopeless = state(min_answers=4, hard_ms=100)
    hopeless.on_answer(0, 1 * MS)
    d = hopeless.on_tick(100 * MS)
    assert d.action == GIVE_UP and d.reason == "hard timeout"
    err = hopeless.give_up_error("nercc", 100)
    assert isinstance(err, NotEnoughAnswersError) and err.n_arrived == 1 and err.n_needed == 4
    assert "1 of 12 requests answered; gave up at the hard timeout (100 ms); decoding needs at least 4" in str(err)


def test_failures_end_the_wait_when_the_minimum_is_out_of_reach():
    s = state(n=4, k=2, min_answers=3)
    assert s.on_failure(0, 1 * MS, "ConnectionError: refused").action == WAIT
    d = s.on_failure(1, 2 * MS, "ConnectionError: refused")
    assert d.action == GIVE_UP and d.reason == "too many requests failed"  # 2 left < 3 needed, no wait
    assert s.errors == {0: "ConnectionError: refused", 1: "ConnectionError: refused"}
    ok = state(n=4, k=2)
    ok.on_failure(3, 1 * MS, "boom")
    for w in range(3):
        d = ok.on_answer(w, 2 * MS)
    assert d.action == DECODE and d.reason == "every request answered or failed"
    assert ok.used_workers() == (0, 1, 2)


# ------------------------------------------------------------------------------------------------ baselines
def test_replication_first_answer_per_input_wins():
    s = state("replication", k=4, n=12)
    plan = s.plan.requests
    by_row = {}
    for w, row in plan.items():
        by_row.setdefault(row, []).append(w)
    s.on_answer(by_row[0][1], 2 * MS, "late copy")
    s.on_answer(by_row[1][0], 1 * MS)
    s.on_answer(by_row[2][2], 1 * MS)
    assert s.on_tick(3 * MS).action == WAIT
    assert s.on_answer(by_row[3][0], 3 * MS).action == DECODE
    assert s.used_workers() == tuple(sorted([by_row[0][1], by_row[1][0], by_row[2][2], by_row[3][0]]))


def test_uncoded_needs_every_input_and_gives_up_on_a_failed_one():
    s = state("uncoded", k=4, n=12)
    s.on_answer(0, 1 * MS)
    assert s.on_failure(1, 1 * MS, "refused").action == GIVE_UP  # input 1 has no other copy
    assert "all 4 inputs need an answer (covered 1)" in str(s.give_up_error("uncoded", 200))


# ------------------------------------------------------------------------------------------------ hedged
def test_hedged_sends_second_copies_at_the_hedge_time_and_first_answer_wins():
    s = state("hedged", k=4, n=12, hedge_ms=8)
    assert s.on_answer(0, 2 * MS).action == WAIT and s.on_answer(1, 3 * MS).action == WAIT
    assert s.next_wakeup(3 * MS) == pytest.approx(8 * MS)
    d = s.on_tick(8 * MS)
    assert d.action == WAIT and d.send == ((6, 2), (7, 3))  # only the unanswered inputs 2 and 3 get copies
    assert s.next_wakeup(8 * MS) == pytest.approx(25 * MS)  # no more hedges due
    assert s.on_answer(7, 10 * MS).action == WAIT  # input 3 from its hedge
    assert s.on_answer(2, 11 * MS).action == DECODE  # input 2 from its first copy, before its hedge
    assert s.used_workers() == (0, 1, 2, 7) and s.n_hedges() == 2 and len(s.sent) == 6
    assert s.sent[7] == 3  # the hedge answered for input 3


def test_hedged_without_stragglers_sends_no_hedge():
    s = state("hedged", k=4, n=12, hedge_ms=8)
    for w in range(4):
        d = s.on_answer(w, (1 + w) * MS)
        assert d.send == ()
    assert d.action == DECODE and s.n_hedges() == 0


def test_hedged_failure_hedges_at_once():
    s = state("hedged", k=4, n=12, hedge_ms=8)
    d = s.on_failure(2, 0.5 * MS, "refused")
    assert d.action == WAIT and d.send == ((6, 2),)  # no need to wait for the hedge time
    for w in (0, 1, 3):
        s.on_answer(w, 1 * MS)
    assert s.on_answer(6, 2 * MS).action == DECODE
    assert s.used_workers() == (0, 1, 3, 6) and s.errors == {2: "refused"}


def test_hedged_gives_up_when_both_copies_fail():
    s = state("hedged", k=2, n=4, hedge_ms=8)
    s.on_failure(0, 1 * MS, "refused")
    assert s.on_failure(2, 2 * MS, "refused").action == GIVE_UP


def test_hedge_delay_estimator():
    fixed = HedgeDelay(fixed_ms=7.0)
    fixed.observe(100.0)
    assert fixed.value_ms() == 7.0
    adaptive = HedgeDelay(initial_ms=12.5, min_samples=20)
    for v in range(19):
        adaptive.observe(1.0 + v)
    assert adaptive.value_ms() == 12.5  # too few round trips yet
    adaptive.observe(20.0)
    assert adaptive.value_ms() == pytest.approx(np.percentile(np.arange(1.0, 21.0), 95))
    small = HedgeDelay(window=4, min_samples=1)
    for v in (100.0, 1.0, 1.0, 1.0, 1.0):
        small.observe(v)
    assert small.value_ms() == 1.0  # the window forgot the old 100 ms
    with pytest.raises(ValueError, match="hedge_ms"):
        HedgeDelay(fixed_ms=-1.0)


# ------------------------------------------------------------------------------------------------ decoding
def test_decode_and_local_encode_match_the_coding_core():
    from nercc.coding import NeRCC

    rng = np.random.default_rng(0)
    scheme = NeRCC(n_inputs=3, n_workers=8, lam_enc=1e-4, lam_dec=1e-4)
    x = rng.normal(size=(3, 1, 5, 5)).astype(np.float32)
    coded = encode_local(scheme, x)
    assert coded.dtype == np.float32 and coded.shape == (8, 1, 5, 5)
    expected = (scheme.encoding_matrix().astype(np.float32) @ x.reshape(3, -1)).reshape(8, 1, 5, 5)
    np.testing.assert_allclose(coded, expected, rtol=1e-6, atol=1e-6)
    answers = {w: coded[w:w + 1].reshape(1, -1)[:, :4] for w in range(8)}
    used = (0, 2, 3, 5, 7)
    np.testing.assert_allclose(decode_coded(scheme, answers, used),
                               scheme.decode(np.concatenate([answers[w] for w in used]), list(used)), atol=1e-6)
    rows = {4: 0, 9: 1, 6: 0}
    out = gather_uncoded(rows, {4: np.ones((1, 3)), 9: np.zeros((1, 3)), 6: np.full((1, 3), 2.0)}, (4, 9), 2)
    np.testing.assert_array_equal(out, [[1, 1, 1], [0, 0, 0]])


# ------------------------------------------------------------------------------------------------ systematic
SYS = "nercc-sys"


def sys_state(policy="exact", m=8, patience_ms=10.0, deferred=False, k=4, n=12, **kw):
    plan = plan_requests(SYS, k, n)
    return WaitState(plan, policy_kind=policy, policy_m=m, min_answers=kw.pop("min_answers", 2), t_fanout=0.0,
                     deadline_t=kw.pop("deadline_ms", 25.0) * MS, hard_t=kw.pop("hard_ms", 200.0) * MS,
                     patience_t=None if patience_ms is None else patience_ms * MS,
                     deferred=plan.parity if deferred else ())


def test_systematic_plan_lists_the_inputs_own_workers_first():
    from nercc.coding import make_scheme

    coding = make_scheme(SYS, 4, 12)
    plan = plan_requests(SYS, 4, 12)
    assert plan.systematic == tuple(coding.systematic_workers)
    assert list(plan.requests)[:4] == list(coding.systematic_workers)  # sent first
    assert plan.requests == {w: w for w in range(12)}  # worker i gets row i of the N payload rows
    assert plan.parity == tuple(w for w in range(12) if w not in coding.systematic_workers)
    assert plan_requests("nercc", 4, 12).systematic == () and plan_requests("nercc", 4, 12).parity == ()
    with pytest.raises(ValueError, match="systematic_workers must be 4 distinct"):
        plan_requests(SYS, 4, 12, systematic_workers=(0, 0, 1, 2))
    with pytest.raises(ValueError, match="not systematic"):
        plan_requests("nercc", 4, 12, systematic_workers=(0, 1, 2, 3))


def test_exact_policy_refuses_plain_schemes():
    with pytest.raises(ValueError, match="policy 'exact' needs a systematic coded scheme.*'nercc' is not"):
        WaitState(plan_requests("nercc", 4, 12), policy_kind="exact", policy_m=8, t_fanout=0.0, deadline_t=0.025,
                  hard_t=0.2, patience_t=0.01)
    with pytest.raises(ValueError, match="policy 'exact' needs a systematic"):
        WaitState(plan_requests("replication", 4, 12), policy_kind="exact", policy_m=8, t_fanout=0.0,
                  deadline_t=0.025, hard_t=0.2)
    with pytest.raises(ValueError, match="M >= min_answers=4"):
        sys_state(m=3, min_answers=4)


def test_exact_decodes_as_soon_as_every_systematic_answer_is_in():
    s = sys_state()
    own = s.plan.systematic
    parity = s.plan.parity
    assert s.on_answer(parity[0], 0.5 * MS).action == WAIT
    actions = [s.on_answer(w, (1 + i) * MS).action for i, w in enumerate(own)]
    assert actions == [WAIT] * 3 + [DECODE]  # at 4 ms, long before T: no regression, no waiting for parity
    assert s.final.reason == "every systematic answer in" and s.systematic_complete()
    assert s.decided_t == pytest.approx(4 * MS)


def test_exact_recovers_a_late_input_at_t_once_m_answers_are_in():
    s = sys_state(m=8, patience_ms=10)
    own, parity = s.plan.systematic, s.plan.parity
    for w in own[1:]:
        assert s.on_answer(w, 1 * MS).action == WAIT
    for w in parity[:5]:  # 3 + 5 = 8 = M answers by 2 ms, but input 0's own worker is late: wait until T
        assert s.on_answer(w, 2 * MS).action == WAIT
    assert s.next_wakeup(2 * MS) == pytest.approx(10 * MS)
    d = s.on_tick(10 * MS)
    assert d.action == DECODE and d.reason == "policy satisfied"
    assert s.used_workers() == tuple(sorted(own[1:] + parity[:5])) and not s.systematic_complete()


def test_exact_own_answer_before_t_still_wins():
    s = sys_state(m=8, patience_ms=10)
    own, parity = s.plan.systematic, s.plan.parity
    for w in own[1:] + parity:
        s.on_answer(w, 1 * MS)
    assert s.on_answer(own[0], 9 * MS).action == DECODE  # before T: exact after all
    assert s.final.reason == "every systematic answer in"


def test_exact_past_t_waits_for_the_mth_answer_and_past_the_deadline_is_late():
    s = sys_state(m=8, patience_ms=10)
    own, parity = s.plan.systematic, s.plan.parity
    for w in own[1:] + parity[:3]:  # 6 answers, one input missing
        s.on_answer(w, 1 * MS)
    assert s.on_tick(10 * MS).action == WAIT  # T passed, fewer than M
    assert s.on_answer(parity[3], 12 * MS).action == WAIT
    assert s.on_tick(25 * MS).action == WAIT  # the deadline: still fewer than M, wait (late)
    assert s.on_answer(parity[4], 30 * MS).action == DECODE  # the M-th
    assert s.late(s.used_workers())
    # the missing input's own answer also ends the wait, exact, whenever it comes
    s2 = sys_state(m=8, patience_ms=10)
    for w in s2.plan.systematic[1:]:
        s2.on_answer(w, 1 * MS)
    assert s2.on_answer(s2.plan.systematic[0], 40 * MS).action == DECODE


def test_exact_when_m_is_out_of_reach_decodes_from_what_came():
    s = sys_state(m=8, patience_ms=10)
    own, parity = s.plan.systematic, s.plan.parity
    for w in own[1:] + parity[:3]:
        s.on_answer(w, 1 * MS)
    for w in parity[3:]:
        s.on_failure(w, 2 * MS, "dead")
    assert s.on_failure(own[0], 3 * MS, "dead").action == DECODE  # nothing left to wait for: 6 answers decode
    assert s.final.reason == "every request answered or failed"


def test_deferred_parity_requests_go_out_when_their_rows_exist_and_never_after_the_decision():
    s = sys_state(deferred=True)
    own, parity = s.plan.systematic, s.plan.parity
    assert set(s.sent) == set(own) and s.pending == set(s.plan.requests)  # parity: pending, not sent
    for w in own[:3]:
        s.on_answer(w, 1 * MS)
    d = s.on_deferred(2 * MS)  # the parity rows came
    assert d.action == WAIT and [w for w, _ in d.send] == sorted(parity)
    assert set(s.sent) == set(s.plan.requests)
    # decided before the parity rows: none is ever sent
    early = sys_state(deferred=True)
    for w in early.plan.systematic:
        early.on_answer(w, 1 * MS)
    assert early.final.action == DECODE
    assert early.on_deferred(3 * MS).send == () and set(early.sent) == set(early.plan.systematic)
    # no parity rows at all: the parity requests fail, the systematic answers alone can still decode
    lost = sys_state(deferred=True)
    assert lost.on_deferred(1 * MS, "no parity rows: master down").action == WAIT
    assert all(lost.errors[w] == "no parity rows: master down" for w in lost.plan.parity)
    for w in lost.plan.systematic:
        d = lost.on_answer(w, 2 * MS)
    assert d.action == DECODE and lost.final.reason == "every systematic answer in"


def test_first_m_still_works_for_systematic_schemes():
    s = sys_state(policy="first", m=8, patience_ms=None)
    order = list(s.plan.parity) + list(s.plan.systematic)
    actions = [s.on_answer(w, (1 + i) * MS).action for i, w in enumerate(order)]
    assert actions == [WAIT] * 7 + [DECODE] + [DECODE] * 4
    assert s.used_workers() == tuple(sorted(s.plan.parity))


def test_systematic_decoding_helpers():
    from nercc.client.core import exact_mask, gather_systematic
    from nercc.coding import make_scheme

    rng = np.random.default_rng(0)
    coding = make_scheme(SYS, 4, 12, 1e-6, 1e-3)
    plan = plan_requests(SYS, 4, 12, systematic_workers=coding.systematic_workers)
    answers = {w: rng.random((1, 10), dtype=np.float32) for w in range(12)}
    exact = gather_systematic(plan, answers)
    assert exact.dtype == np.float32
    for k, w in enumerate(coding.systematic_workers):
        assert np.array_equal(exact[k], answers[w][0])
    used = tuple(w for w in range(12) if w != coding.systematic_workers[2])
    decoded = decode_coded(coding, answers, used)
    mask = exact_mask(coding, used, 4)
    assert mask.tolist() == [True, True, False, True]
    for k in (0, 1, 3):  # an arrived input's own answer, bit-exact
        assert np.array_equal(decoded[k], answers[coding.systematic_workers[k]][0])
    assert exact_mask(make_scheme("nercc", 4, 12), tuple(range(12)), 4).tolist() == [False] * 4
