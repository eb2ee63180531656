"""The asyncio load engine: open-loop Poisson arrivals into ``CodedClient``, no Locust, nothing else in the process.

    python -m nercc.loadtest.openloop --scheme nercc --rate 20 --duration 30 --worker-urls ... --requests-log log.jsonl
    python -m nercc.loadtest.openloop --scheme nercc --ramp 10,1.6,400,2.5 ...        # capacity ramp, stops at the knee

Each batch starts at its scheduled arrival time whatever the earlier ones are doing (open loop: no batch waits for
another, so a slow answer cannot hide the load behind it), as an asyncio task on one event loop with the same
client, cluster and workload as the Locust engine. It is the yardstick ``nercc loadtest --engine both`` checks the
Locust harness against. It writes the same JSON-lines log (``nercc.loadtest.workload.request_record``) plus CPU
snapshots of itself and of the given server pids at the start and end of each measured stretch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from nercc.loadtest.workload import (
    Batches,
    CpuMeter,
    RequestLog,
    add_engine_arguments,
    make_async_client,
    parse_pids,
    poisson_offsets,
    request_record,
    scheme_label,
)

#: A ramp step passes while throughput stays >= this share of the offered load ...
RAMP_THROUGHPUT_SHARE = 0.95
#: ... and its p50 stays within this factor of the first (lightest) step's p50.
RAMP_P50_GROWTH = 2.0
#: A ramp step lasts STEP_S or this many batches' worth of arrivals, whichever is longer (p50 needs a few).
RAMP_MIN_BATCHES = 40


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheme", required=True, help="uncoded | replication | hedged | bacc | nercc")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals")
    parser.add_argument("--ramp", default="",
                        help="START,FACTOR,MAX,STEP_S[,MIN_BATCHES]: offered load START, START*FACTOR, ... up to MAX "
                             "batches/s, STEP_S seconds each (at least MIN_BATCHES, default 40, batches' worth), "
                             "stopping after the first step past the knee "
                             f"(throughput < {RAMP_THROUGHPUT_SHARE:g} x offered or p50 > {RAMP_P50_GROWTH:g} x the "
                             "first step's)")
    parser.add_argument("--warmup-batches", type=int, default=3, help="unlogged batches first (policy all)")
    add_engine_arguments(parser)


class OpenLoop:
    """One client, one event loop; :meth:`run` plays one arrival schedule and logs every batch."""

    def __init__(self, options, client, batches: Batches, log: RequestLog, meter: CpuMeter):
        self.options = options
        self.client = client
        self.batches = batches
        self.log = log
        self.meter = meter
        self.record_every = max(0, int(options.record_predictions))
        self.label = scheme_label(options, client.scheme)
        self._count = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def _one(self, index: int, batch, scheduled: float, step) -> dict:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = time.time()
        keep = bool(self.record_every) and self._count % self.record_every == 0
        self._count += 1
        try:
            result = await self.client.infer(batch)
            record = request_record(self.label, index, scheduled, started, result, keep_predictions=keep,
                                    deadline_ms=self.client.deadline_ms)
        except Exception as exc:  # noqa: BLE001 - every failure is a logged result, never a crash of the run
            record = request_record(self.label, index, scheduled, started, None, exc,
                                    wall_ms=(time.time() - started) * 1e3)
        finally:
            self.in_flight -= 1
        if step is not None:
            record["step"] = step
        self.log.write(record)
        return record

    async def run(self, rate: float, duration_s: float, seed: int, step=None) -> list:
        """Play ``duration_s`` of Poisson arrivals at ``rate``; returns the records (also written to the log)."""
        offsets = poisson_offsets(rate, duration_s, seed)
        self.max_in_flight = self.in_flight
        t0_perf = time.perf_counter() + 0.02
        t0_wall = time.time() + 0.02
        self.log.event("cpu", phase="start", step=step, rate=rate, **self.meter.snapshot())
        tasks = []
        for offset in offsets:
            delay = t0_perf + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            index, batch = self.batches.take()
            tasks.append(asyncio.ensure_future(self._one(index, batch, t0_wall + offset, step)))
        records = list(await asyncio.gather(*tasks))
        # straggler requests the client abandoned still run on the workers: their CPU belongs to these batches
        await self.client.drain(self.client.hard_timeout_ms / 1e3)
        self.log.event("cpu", phase="end", step=step, rate=rate, n_scheduled=len(offsets),
                       schedule_s=duration_s, max_in_flight=self.max_in_flight, **self.meter.snapshot())
        return records


def step_stats(records: list, rate: float, duration_s: float) -> dict:
    """p50 and throughput of one ramp step (the report recomputes everything from the log)."""
    import numpy as np

    answered = [r for r in records if "n_arrived" in r]
    if not records:
        return {"rate": rate, "p50_ms": None, "throughput": 0.0, "arrivals": 0.0, "n": 0}
    # judged against the arrivals this step really drew (Poisson: a short step's count is noisy), over the
    # schedule's length or, when the answers trail behind it, up to the last answer
    span = max(r["t"] for r in records) - min(r["t_sched"] for r in records)
    return {
        "rate": float(rate), "n": len(records), "arrivals": len(records) / duration_s,
        "p50_ms": float(np.percentile([r["ms"] for r in answered], 50)) if answered else None,
        "throughput": float(len(answered) / max(span, duration_s, 1e-9)),
    }


def ramp_rates(spec: str) -> tuple:
    """'START,FACTOR,MAX,STEP_S[,MIN_BATCHES]' -> (rates, step_s, min_batches)."""
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) not in (4, 5):
        raise ValueError(f"--ramp wants START,FACTOR,MAX,STEP_S[,MIN_BATCHES] (4 or 5 numbers), got {spec!r}")
    start, factor, top, step_s = values[:4]
    min_batches = int(values[4]) if len(values) == 5 else RAMP_MIN_BATCHES
    if not (start > 0 and factor > 1 and top >= start and step_s > 0 and min_batches >= 5):
        raise ValueError(f"--ramp {spec!r}: need START > 0, FACTOR > 1, MAX >= START, STEP_S > 0, MIN_BATCHES >= 5")
    rates, rate = [], start
    while rate <= top * (1 + 1e-9):
        rates.append(round(rate, 3))
        rate *= factor
    return rates, step_s, min_batches


async def main_async(options) -> int:
    batches = Batches(options.model, options.n_inputs)
    log = RequestLog(options.requests_log)
    client = make_async_client(options, options.scheme)
    try:
        await client.connect()
        await warm_up(client, max(1, options.warmup_batches))
        meter = CpuMeter(parse_pids(options.server_pids))
        engine = OpenLoop(options, client, batches, log, meter)
        log.event("engine", engine="asyncio", scheme=engine.label, pid=_pid())
        if options.ramp:
            rates, step_s, min_batches = ramp_rates(options.ramp)
            base_p50 = None
            for step, rate in enumerate(rates):
                duration = max(step_s, min_batches / rate)
                stats = step_stats(await engine.run(rate, duration, options.arrival_seed + step, step), rate, duration)
                base_p50 = base_p50 if base_p50 is not None else stats["p50_ms"]
                passed = bool(stats["throughput"] >= RAMP_THROUGHPUT_SHARE * stats["arrivals"]
                              and stats["p50_ms"] is not None and base_p50 is not None
                              and stats["p50_ms"] <= RAMP_P50_GROWTH * base_p50)  # numpy bool_ is not JSON
                log.event("ramp_step", step=step, passed=passed, **stats)
                print(f"ramp {engine.label}: {rate:g}/s -> {stats['throughput']:.1f}/s, p50 "
                      f"{stats['p50_ms'] if stats['p50_ms'] is None else round(stats['p50_ms'], 1)} ms"
                      f"{'' if passed else '  (past the knee)'}", flush=True)
                if not passed:
                    break
        else:
            await engine.run(options.rate, options.duration, options.arrival_seed)
    finally:
        await client.close()
        log.close()
    return 0


async def warm_up(client, n_batches: int, attempts: int = 5) -> None:
    """Unlogged batches first; a fresh server's first requests are slow (Python backend, onnxruntime first runs)
    and may miss a short hard timeout: each attempt warms it anyway, so failures here are retried, not fatal."""
    for _attempt in range(attempts):
        try:
            await client.warmup(n_batches)
            return
        except Exception as exc:  # noqa: BLE001 - a dead worker or a cold server; the measured run reports the rest
            error = exc
            await asyncio.sleep(0.2)
    print(f"warm-up failed {attempts} times (last: {error}); measuring anyway", file=sys.stderr, flush=True)


def _pid() -> int:
    import os

    return os.getpid()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nercc.loadtest.openloop", description=__doc__.splitlines()[0])
    configure(parser)
    options = parser.parse_args(argv)
    return asyncio.run(main_async(options))


if __name__ == "__main__":
    sys.exit(main())
