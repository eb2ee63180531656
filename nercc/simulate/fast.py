"""Vectorized engine: the same model as the SimPy one (``des``), computed with numpy in O(requests log requests).

Why it exists: SimPy handles ~10^5 events per second here, and 10^5 batches of N = 100 are 10^7 requests
(measured in docs/simulate.md). The model has no feedback from the client to the workers except hedging, so
every FIFO queue is a Lindley recursion, which has a closed form over a sorted request stream:

    finish_n = H_n + max_{j <= n} (send_j - H_{j-1}),   H_n = hold_1 + ... + hold_n   (per worker)

computed for all workers at once with one sort and one segmented running maximum. Hedging makes the
requests depend on earlier answers; its second copies are found by a fixed-point iteration (no hedges, then
the hedges the answers ask for, ... until the set stops growing: the set only grows, so it ends), which
reproduces the causal order of the event simulation (checked against SimPy in tests/test_simulate.py).
"""

from __future__ import annotations

import numpy as np

from nercc.simulate.model import TIE_MS, BatchResults, Draws, SimSettings


def fifo_start(worker: np.ndarray, send: np.ndarray, hold: np.ndarray) -> np.ndarray:
    """Start time of each request at its worker's single FIFO instance (flat arrays, any order).

    Ties in ``send`` are served in array order, as SimPy serves requests made at the same instant.
    """
    worker = np.asarray(worker).ravel()
    send = np.asarray(send, dtype=float).ravel()
    hold = np.asarray(hold, dtype=float).ravel()
    n = send.size
    if n == 0:
        return send.copy()
    order = np.lexsort((np.arange(n), send, worker))
    w, s, h = worker[order], send[order], hold[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = w[1:] != w[:-1]
    gid = np.cumsum(new_group) - 1
    cum = np.cumsum(h)
    group_base = (cum - h)[new_group]  # hold done before each group's first request, globally
    h_before = cum - h - group_base[gid]  # hold of earlier requests of the same worker
    x = s - h_before
    span = float(x.max() - x.min()) + 1.0
    shifted = x + gid * span  # later groups sit above earlier ones: one running max serves every group
    best = np.maximum.accumulate(shifted) - gid * span
    start_sorted = best + h_before
    start = np.empty(n)
    start[order] = start_sorted
    return start


def worker_answers(settings: SimSettings, draws: Draws):
    """(fan-out times (B,), answer times (B, W), hedge answer times (B, K) or None, hedge flags (B, K)).

    The workers never hear about the client's policy (stragglers are abandoned, not cancelled), so these times
    serve every (policy, deadline) on the same draws: the planner evaluates many policies on one run.
    """
    s, d = settings, draws
    b = d.arrival_ms.size
    k = s.n_inputs
    # 1. call -> fan-out: the coded path queues at the master's one encoder instance
    if s.coded:
        m_start = fifo_start(np.zeros(b, dtype=int), d.arrival_ms, d.master_hold_ms)
        fanout = m_start + d.pre_ms
    else:
        fanout = d.arrival_ms + d.pre_ms
    send = np.broadcast_to(fanout[:, None], d.worker.shape)
    occupancy = d.hold_ms + d.delay_ms

    # 2. worker queues (hedged: iterate to the causal set of second copies)
    hedged = s.hedged
    flags = np.zeros((b, k), dtype=bool)
    hedge_answer = np.full((b, k), np.inf)
    while True:
        if hedged and flags.any():
            hb, hk = np.nonzero(flags)
            workers = np.concatenate([d.worker.ravel(), d.hedge_worker[hb, hk]])
            sends = np.concatenate([send.ravel(), fanout[hb] + d.hedge_ms + TIE_MS])  # the timer fires 1 ns late
            occ = np.concatenate([occupancy.ravel(), d.hold_ms[hb, hk] + d.hedge_delay_ms[hb, hk]])
            start = fifo_start(workers, sends, occ)
            first = start[: d.worker.size].reshape(d.worker.shape)
            hedge_answer = np.full((b, k), np.inf)
            hedge_answer[hb, hk] = start[d.worker.size:] + d.hedge_base_ms[hb, hk] + d.hedge_delay_ms[hb, hk]
        else:
            first = fifo_start(d.worker, send, occupancy).reshape(d.worker.shape)
        answer = first + d.base_ms + d.delay_ms
        if not hedged:
            break
        new_flags = (answer > (fanout + d.hedge_ms + TIE_MS)[:, None]) & (d.hedge_worker >= 0)
        if np.array_equal(new_flags, flags):
            break
        flags = new_flags
    return fanout, answer, (hedge_answer if hedged else None), flags


def client_decisions(settings: SimSettings, draws: Draws, fanout, answer, hedge_answer, flags,
                     sorted_answer=None) -> BatchResults:
    """Apply the client's wait policy to the answer times (``nercc.client._collect``'s rules).

    ``sorted_answer``: ``np.sort(answer, axis=1)`` when the caller already has it (the planner reuses it).
    """
    s, d = settings, draws
    b = d.arrival_ms.size
    k, n = s.n_inputs, s.n_workers
    hedged = hedge_answer is not None
    deadline_t = d.arrival_ms + s.deadline_ms
    hard_t = d.arrival_ms + s.hard_timeout_ms
    if s.coded:
        t_sorted = np.sort(answer, axis=1) if sorted_answer is None else sorted_answer
        t_enough = t_sorted[:, s.min_answers - 1]
        sys_cols = s.systematic_workers if s.systematic else None
        if s.policy_kind == "all":
            decide = np.minimum(t_sorted[:, -1], hard_t)
        elif s.policy_kind == "exact":
            # every systematic answer in: decode exactly; else at T once M are in; past the deadline only for
            # the M-th answer (late); at the hard timeout with the minimum in
            t_sys = answer[:, sys_cols].max(axis=1)
            recover = np.maximum(d.arrival_ms + s.patience_ms, t_sorted[:, s.policy_m - 1])
            decide = np.minimum(np.minimum(t_sys, recover), np.maximum(hard_t, t_enough))
        else:
            m = s.policy_m if s.policy_kind == "first" else n
            decide = np.minimum(t_sorted[:, m - 1], np.maximum(deadline_t, t_enough))
            if s.coded and s.patience_ms is not None:  # first:M@T: everyone, or M once T has passed
                patient = np.maximum(d.arrival_ms + s.patience_ms, t_sorted[:, m - 1])
                decide = np.minimum(np.minimum(t_sorted[:, -1], patient), np.maximum(deadline_t, t_enough))
        failed = t_enough > hard_t
        n_arrived = np.empty(b, dtype=int)
        for i0 in range(0, b, 4096):  # searchsorted per row, in blocks: no (B, N) temporaries
            rows = slice(i0, i0 + 4096)
            # answers that tie with the decision count (one wake-up of the real client takes them all)
            n_arrived[rows] = (t_sorted[rows] <= decide[rows, None] + TIE_MS).sum(axis=1)
        used_last = t_sorted[np.arange(b), np.maximum(n_arrived - 1, 0)]
        if sys_cols is not None:
            n_recovered = (answer[:, sys_cols] > decide[:, None] + TIE_MS).sum(axis=1)
        else:
            n_recovered = np.full(b, k)
        grid, dec = d.decode_grid
        decode = d.post_ms + np.interp(n_arrived.astype(float), grid, dec)
        n_requests = np.full(b, n)
    else:
        # request j carries input j % K (make_draws): the copies of input k are columns k, k + K, ...
        per_input = answer.reshape(b, -1, k).min(axis=1)
        if hedged:
            per_input = np.minimum(per_input, hedge_answer)
        covered = per_input.max(axis=1)
        if s.policy_kind == "all":
            everything = answer.max(axis=1)
            if hedged:
                everything = np.maximum(everything, np.where(flags, hedge_answer, -np.inf).max(axis=1))
            decide = np.minimum(everything, hard_t)
        else:
            decide = covered
        failed = covered > hard_t
        n_arrived = np.full(b, k)
        used_last = covered
        decode = d.post_ms
        n_requests = d.worker.shape[1] + flags.sum(axis=1)
        n_recovered = np.zeros(b, dtype=int)
    late = used_last > deadline_t
    done = decide + decode
    latency = np.where(failed, np.inf, done - d.arrival_ms)
    return BatchResults(
        latency_ms=latency, n_arrived=np.where(failed, 0, n_arrived), n_requests=n_requests, late=late & ~failed,
        failed=failed, encode_ms=fanout - d.arrival_ms, fanout_ms=decide - fanout, decode_ms=decode,
        n_recovered=np.where(failed, 0, n_recovered),
    )


def run(settings: SimSettings, draws: Draws) -> BatchResults:
    return client_decisions(settings, draws, *worker_answers(settings, draws))
