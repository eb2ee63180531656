"""SimPy engine: the reference event simulation of the model in ``nercc.simulate.model``.

Processes: a Poisson source of batches; per batch, the master's encoder instance (coded schemes), one
process per worker request (a ``simpy.Resource`` of capacity 1 per worker: FIFO queue + one model instance,
held for execution + straggler delay), the client's deadline and hard-timeout timers and, for ``hedged``, the
hedge timer per input. The wait policy follows ``nercc.client._collect``: stop at the target, or once the
deadline has passed with the minimum in, or at the hard timeout.

It is the readable definition; ``nercc.simulate.fast`` computes the same numbers much faster and is checked
against this one.
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from nercc.simulate.model import TIE_MS, BatchResults, Draws, SimSettings


class _Batch:
    """The client's state for one batch: answers so far and whether it has decided."""

    def __init__(self, env, sim: _Sim, i: int):
        self.env, self.sim, self.i = env, sim, i
        self.answers = []  # (time, row)
        self.first_by_input = {}
        self.n_sent = 0
        self.decided = env.event()
        self.decide_t = math.inf
        self.failed = False

    # policy -------------------------------------------------------------------------------------------
    def _enough(self) -> bool:
        s = self.sim.s
        if s.coded:
            return len(self.answers) >= s.min_answers
        return len(self.first_by_input) == s.n_inputs

    def _target(self) -> bool:
        s = self.sim.s
        if s.coded:
            if s.policy_kind == "exact":  # every systematic answer in, or M once T has passed
                if self.sim.systematic <= {row for _, row in self.answers}:
                    return True
                return self.env.now >= self.sim.patience_t[self.i] and len(self.answers) >= s.policy_m
            if s.policy_kind == "first":
                if s.patience_ms is not None and self.env.now < self.sim.patience_t[self.i]:
                    return len(self.answers) >= s.n_workers  # first:M@T: everyone, until T
                return len(self.answers) >= s.policy_m
            return len(self.answers) >= s.n_workers
        if s.policy_kind == "all":
            return len(self.answers) >= self.n_sent and self._enough()
        return self._enough()

    def check(self) -> None:
        if self.decided.triggered:
            return
        now = self.env.now
        s = self.sim.s
        # exact:M@T decodes from fewer than M only at the hard timeout (past the deadline it waits for the M-th)
        soft = self.sim.hard_t[self.i] if s.policy_kind in ("all", "exact") else self.sim.deadline_t[self.i]
        if self._target() or (now >= soft and self._enough()):
            self.decide_t = now
            self.decided.succeed()
        elif now >= self.sim.hard_t[self.i]:
            self.decide_t = now
            self.failed = not self._enough()
            self.decided.succeed()

    def answer(self, row: int) -> None:
        # kept even after the decision: answers at the decision instant count (the real client takes every
        # answer of one wake-up; recorded latencies tie), later ones are dropped when the batch is summarized
        self.answers.append((self.env.now, row))
        if self.decided.triggered:
            return  # abandoned: the worker did the work, the client no longer listens
        self.first_by_input.setdefault(row, self.env.now)
        self.check()


class _Sim:
    def __init__(self, settings: SimSettings, draws: Draws):
        self.s, self.d = settings, draws
        self.env = simpy.Environment()
        self.workers = [simpy.Resource(self.env, capacity=1) for _ in range(settings.n_workers)]
        self.master = simpy.Resource(self.env, capacity=1)
        b = draws.arrival_ms.size
        self.deadline_t = draws.arrival_ms + settings.deadline_ms
        self.hard_t = draws.arrival_ms + settings.hard_timeout_ms
        self.patience_t = draws.arrival_ms + (settings.patience_ms or 0.0)
        self.out = {name: np.zeros(b) for name in ("latency", "n_arrived", "n_requests", "encode", "fanout",
                                                     "decode", "late", "failed")}
        self.batches = {}
        self.systematic = set(settings.systematic_workers.tolist())  # coded rows = workers (make_draws)
        self.out["n_recovered"] = np.zeros(b)

    def _hold(self, resource, request, duration):
        yield self.env.timeout(duration)
        resource.release(request)

    def _request(self, batch: _Batch, worker: int, row: int, base: float, delay: float, hold: float):
        resource = self.workers[worker]
        req = resource.request()
        yield req
        self.env.process(self._hold(resource, req, hold + delay))
        yield self.env.timeout(base + delay)
        batch.answer(row)

    def _timer(self, batch: _Batch, at: float):
        yield self.env.timeout(max(at - self.env.now, 0.0))
        batch.check()

    def _hedge(self, batch: _Batch, at: float, k: int):
        # an answer due at the same instant (to float rounding) counts as in time, as in ``fast``
        yield self.env.timeout(max(at + TIE_MS - self.env.now, 0.0))
        d, i = self.d, batch.i
        if k in batch.first_by_input or batch.decided.triggered or d.hedge_worker[i, k] < 0:
            return
        batch.n_sent += 1
        self.env.process(self._request(batch, int(d.hedge_worker[i, k]), k, d.hedge_base_ms[i, k],
                                       d.hedge_delay_ms[i, k], d.hold_ms[i, k]))

    def _batch(self, i: int):
        env, s, d = self.env, self.s, self.d
        t0 = env.now
        if s.coded:
            req = self.master.request()
            yield req
            env.process(self._hold(self.master, req, d.master_hold_ms[i]))
        yield env.timeout(d.pre_ms[i])
        t_fanout = env.now
        batch = _Batch(env, self, i)
        for j in range(d.worker.shape[1]):
            batch.n_sent += 1
            env.process(self._request(batch, int(d.worker[i, j]), int(d.row[i, j]), d.base_ms[i, j],
                                      d.delay_ms[i, j], d.hold_ms[i, j]))
        if s.hedged:
            for k in range(s.n_inputs):
                env.process(self._hedge(batch, t_fanout + d.hedge_ms, k))
        env.process(self._timer(batch, self.deadline_t[i]))
        env.process(self._timer(batch, self.hard_t[i]))
        if s.coded and s.patience_ms is not None:
            env.process(self._timer(batch, self.patience_t[i]))
        yield batch.decided
        self.batches[i] = (batch, t0, t_fanout)

    def _finish(self, i: int) -> None:
        s, d = self.s, self.d
        batch, t0, t_fanout = self.batches[i]
        used = [t for t, _ in batch.answers if t <= batch.decide_t + TIE_MS]
        if s.coded:
            n_arrived = len(used)
            if s.systematic:
                answered = {row for t, row in batch.answers if t <= batch.decide_t + TIE_MS}
                n_recovered = len(self.systematic - answered)
            else:
                n_recovered = s.n_inputs
            grid, dec = d.decode_grid
            decode = d.post_ms[i] + float(np.interp(float(n_arrived), grid, dec))
        else:
            n_arrived = s.n_inputs
            used = list(batch.first_by_input.values())
            decode = d.post_ms[i]
            n_recovered = 0
        o = self.out
        o["failed"][i] = batch.failed
        o["latency"][i] = math.inf if batch.failed else batch.decide_t + decode - t0
        o["n_arrived"][i] = 0 if batch.failed else n_arrived
        o["n_requests"][i] = batch.n_sent
        o["n_recovered"][i] = 0 if batch.failed else n_recovered
        o["encode"][i] = t_fanout - t0
        o["fanout"][i] = batch.decide_t - t_fanout
        o["decode"][i] = decode
        o["late"][i] = (not batch.failed) and bool(used) and max(used) > self.deadline_t[i]

    def _source(self):
        for i, t in enumerate(self.d.arrival_ms):
            yield self.env.timeout(max(t - self.env.now, 0.0))
            self.env.process(self._batch(i))

    def run(self) -> BatchResults:
        self.env.process(self._source())
        self.env.run()
        for i in range(self.d.arrival_ms.size):
            self._finish(i)
        o = self.out
        return BatchResults(
            latency_ms=o["latency"], n_arrived=o["n_arrived"].astype(int), n_requests=o["n_requests"].astype(int),
            late=o["late"].astype(bool), failed=o["failed"].astype(bool), encode_ms=o["encode"],
            fanout_ms=o["fanout"], decode_ms=o["decode"], n_recovered=o["n_recovered"].astype(int),
        )


def run(settings: SimSettings, draws: Draws) -> BatchResults:
    if settings.hedged and settings.policy_kind == "all":
        raise ValueError("hedged with policy 'all' is not modelled: hedged stops at the first answer per input")
    return _Sim(settings, draws).run()
