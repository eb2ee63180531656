"""The chaos harness: one cluster per scenario, every scheme under load at once, faults on a timeline.

For a scenario (``SCENARIOS``) it starts a ``LocalCluster`` (two masters, the scenario's injected faults),
opens one ``CodedClient`` per scheme and sends batches of real MNIST images from each at a steady pace for
``duration_s`` seconds, all schemes interleaved on the same servers, while the scenario's events fire (SIGKILL
workers or a master, SIGSTOP a worker for 5 s...). Every batch ends in exactly one bucket:

    answered    predictions returned, every one finite, the deadline met
    late        predictions returned, finite, after the deadline (the client waited for the minimum)
    failed      the call raised (NotEnoughAnswersError, MasterError...); the reason is tallied
    non-finite  predictions returned with a NaN or inf in them: must never happen

plus the call's longest duration (must stay under the hard timeout plus a little), and the top-1 agreement of
the returned predictions with the model run locally on the same images (wrong answers show up there). After
the cluster stops: no process of it and no shared-memory region with its prefix may be left.

The network scenario puts one worker in a network namespace of its own (``tests/netlab.py``: a veth link on a
bridge, its own address), started as ``nercc worker`` inside it, then slows its link with a token bucket
(``tc qdisc tbf``) and later blackholes the route to it. It needs root and namespaces; elsewhere it is
skipped with the reason.

Run: ``make test-chaos`` (the full suite), or ``python -m tests.chaos.chaos`` to print the table.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from nercc.coding.registry import CODED_SCHEMES, SCHEME_ORDER, SYSTEMATIC_SCHEMES

#: Every scheme the client serves, the systematic ones (policy exact:M@T) included
SCHEMES = SCHEME_ORDER
CODED = CODED_SCHEMES


def scheme_policy(scheme: str, n_workers: int, deadline_ms: float) -> str:
    """``deadline`` for every scheme but the systematic ones, which run their own policy, ``exact:M@T``
    (M = ceil(2N/3), T = deadline / 4): exact when every own answer is in, else recovered at T."""
    if scheme in SYSTEMATIC_SCHEMES:
        return f"exact:{max(2, math.ceil(2 * n_workers / 3))}@{deadline_ms / 4:g}"
    return "deadline"


@dataclass
class Tally:
    answered: int = 0
    late: int = 0
    failed: int = 0
    nonfinite: int = 0
    max_ms: float = 0.0
    agree: List[float] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    dropped: int = 0  # answers the client set aside (bad answers, robust decoding)

    @property
    def batches(self) -> int:
        return self.answered + self.late + self.failed + self.nonfinite

    def row(self) -> Dict:
        return {"answered": self.answered, "late": self.late, "failed": self.failed, "nonfinite": self.nonfinite,
                "max_ms": round(self.max_ms, 1),
                "agree": round(float(np.mean(self.agree)), 3) if self.agree else None,
                "reasons": dict(self.reasons.most_common(3))}


@dataclass(frozen=True)
class Scenario:
    """A fault timeline: ``events`` are (seconds after the load starts, description, action(cluster))."""

    name: str
    events: Tuple[Tuple[float, str, Callable], ...] = ()
    faults: Dict[int, str] = field(default_factory=dict)
    coded_must_not_fail: bool = True
    netns_workers: int = 0  # the last workers run in network namespaces of their own (events get ``.net``)


def _kill(*workers):
    return lambda cluster: [cluster.kill_worker(w) for w in workers]


def scenarios(n_workers: int) -> List[Scenario]:
    third = max(1, n_workers // 3)
    spread = [round(i * n_workers / third) for i in range(third)]  # N/3 workers across the range
    return [
        Scenario("baseline"),
        Scenario("kill 1 worker", ((1.0, "SIGKILL worker 1", _kill(1)),)),
        Scenario(f"kill N/3 = {third} workers", ((1.0, f"SIGKILL workers {spread}", _kill(*spread)),)),
        Scenario("SIGSTOP worker 5 s", ((1.0, "SIGSTOP worker 2", lambda c: c.pause_worker(2)),
                                        (6.0, "SIGCONT worker 2", lambda c: c.pause_worker(2, paused=False)))),
        Scenario("kill 1 of 2 masters", ((1.0, "SIGKILL master 0", lambda c: c.kill_master(0)),)),
        Scenario("worker answers NaN", faults={3: "nan"}),
        Scenario("worker answers 1e30", faults={3: "large"}),
        Scenario("worker answers wrong (finite)", faults={3: "wrong"}),
        # the last worker behind its own link: a 128 kbit/s token bucket (one 3 KB coded input takes ~0.2 s,
        # past the deadline), then a blackholed route (silence: no reset, no answer)
        Scenario(NETNS_SCENARIO, netns_workers=1, events=(
            (1.0, f"tc tbf 128kbit on the link to worker {n_workers - 1}",
             lambda c: c.net.rate_limit(0, rate="128kbit", burst="4kb")),
            (4.0, f"blackhole the route to worker {n_workers - 1}", lambda c: c.net.blackhole(0)),
        )),
    ]


NETNS_SCENARIO = "netns link: tbf, then blackhole"


def _netlab():
    """tests/netlab.py, imported as a sibling (pytest puts tests/ on the path) or from the checkout root."""
    try:
        import netlab
    except ImportError:
        from tests import netlab
    return netlab


def netns_unavailable() -> str | None:
    """Why the network-namespace scenario cannot run here (None when it can)."""
    return _netlab().unavailable()


class NetnsWorkers:
    """``count`` workers (indices ``first_index``...), each ``nercc worker`` inside a network namespace of its own.

    A context manager: namespaces, links and processes are removed on exit; ``problems()`` then lists what
    was left behind or did not stop cleanly.
    """

    def __init__(self, first_index: int, count: int, model: str = "lenet5", port: int = 8001):
        self.first_index, self.count, self.model, self.port = first_index, count, model, port
        self.net = None
        self.procs: List[subprocess.Popen] = []
        self.codes: List[int] = []
        self._folder = None

    @property
    def urls(self) -> List[str]:
        return [f"{address}:{self.port}" for address in self.net.addresses]

    def __enter__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="nercc-chaos-netns-")
        folder = Path(self._folder.name)
        self.net = _netlab().NetLab(self.count)
        try:
            for host, address in enumerate(self.net.addresses):
                log = open(folder / f"worker{host}.out", "w")
                self.procs.append(subprocess.Popen(
                    self.net.exec_prefix(host) + [
                        sys.executable, "-m", "nercc", "worker", "--model", self.model,
                        "--index", str(self.first_index + host), "--host", address, "--port", str(self.port),
                        "--http-port", "off", "--metrics-port", "off", "--urls-file", str(folder / f"w{host}.json")],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                log.close()
            deadline = time.monotonic() + 120.0
            for host, proc in enumerate(self.procs):
                while not (folder / f"w{host}.json").exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"netns worker {host} did not start (exit {proc.poll()}):\n"
                                           + (folder / f"worker{host}.out").read_text()[-2000:])
                    time.sleep(0.1)
                json.loads((folder / f"w{host}.json").read_text())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def crashed(self) -> List[str]:
        return [f"netns worker {self.first_index + i} exited {p.returncode}" for i, p in enumerate(self.procs)
                if p.poll() is not None]

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                self.codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                self.codes.append(proc.wait())
        if self.net is not None:
            self.net.close()
        if self._folder is not None:
            self._folder.cleanup()

    def problems(self) -> List[str]:
        out = [f"netns worker {self.first_index + i} stopped with code {c}" for i, c in enumerate(self.codes) if c]
        if self.net is not None and self.net.leftovers():
            out.append(f"namespaces or links left: {self.net.leftovers()}")
        return out


@dataclass
class _Target:
    """What the load and the events see: the servers' URLs, the local cluster, the namespaces' NetLab."""

    cluster: object
    master_urls: List[str]
    worker_urls: List[str]
    net: object = None

    def __getattr__(self, name):  # kill_worker, pause_worker, kill_master... of the local cluster
        return getattr(self.cluster, name)


def _batches(n_inputs: int, count: int, seed: int = 0):
    from nercc.data import load_mnist
    from nercc.models import OnnxModel, load_model_info
    from nercc.preprocessing import preprocess

    raw, _ = load_mnist("test")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(raw), size=n_inputs * count, replace=False)
    raw = np.ascontiguousarray(raw[idx]).reshape(count, n_inputs, *raw.shape[1:])
    f = OnnxModel("lenet5", threads=1)
    top1 = f(preprocess(load_model_info("lenet5"), raw.reshape(-1, *raw.shape[2:]))).argmax(-1)
    return raw, top1.reshape(count, n_inputs)


async def _drive(client, raw, top1, tally: Tally, stop_t: float, period_s: float, hard_ms: float):
    i = 0
    while time.perf_counter() < stop_t:
        started = time.perf_counter()
        j = i % len(raw)
        try:
            result = await asyncio.wait_for(client.infer(raw[j]), timeout=hard_ms / 1e3 + 30.0)
        except Exception as exc:  # noqa: BLE001 - every failure is tallied by kind
            tally.failed += 1
            text = str(exc)
            tally.reasons[f"{type(exc).__name__}: {text[:70]}"] += 1
        else:
            predictions = np.asarray(result.predictions)
            if not np.isfinite(predictions).all():
                tally.nonfinite += 1
            elif result.late or not result.deadline_met:
                tally.late += 1
            else:
                tally.answered += 1
            if np.isfinite(predictions).all():
                tally.agree.append(float(np.mean(predictions.argmax(-1) == top1[j])))
            tally.dropped += len(getattr(result, "dropped", ()) or ())
        elapsed = time.perf_counter() - started
        tally.max_ms = max(tally.max_ms, elapsed * 1e3)
        i += 1
        await asyncio.sleep(max(0.0, period_s - elapsed))


async def _run_load(cluster, scenario: Scenario, schemes: Sequence[str], n_inputs: int, duration_s: float,
                    rate_hz: float, deadline_ms: float, hard_timeout_ms: float, log) -> Dict[str, Tally]:
    from nercc.client import CodedClient

    raw, top1 = _batches(n_inputs, 64)
    clients = {s: CodedClient(cluster.master_urls, cluster.worker_urls, model="lenet5", scheme=s,
                              deadline_ms=deadline_ms,
                              policy=scheme_policy(s, len(cluster.worker_urls), deadline_ms), n_inputs=n_inputs,
                              hard_timeout_ms=hard_timeout_ms) for s in schemes}
    tallies = {s: Tally() for s in schemes}
    for client in clients.values():
        await client.connect()
        for _ in range(3):  # a faulty worker can fail a warm-up batch (uncoded has no other copy): retry
            try:
                await client.warmup()
                break
            except Exception:  # noqa: BLE001 - warming up is best effort
                pass
    t0 = time.perf_counter()
    stop_t = t0 + duration_s

    async def timeline():
        for at, what, action in scenario.events:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            log(f"  t={time.perf_counter() - t0:4.1f}s {what}")
            await asyncio.get_running_loop().run_in_executor(None, action, cluster)

    try:
        await asyncio.gather(timeline(), *(
            _drive(clients[s], raw, top1, tallies[s], stop_t, 1.0 / rate_hz, hard_timeout_ms) for s in schemes))
    finally:
        for client in clients.values():
            await client.close()
    return tallies


def run_scenario(scenario: Scenario, n_workers: int = 12, n_inputs: int = 4, duration_s: float = 8.0,
                 rate_hz: float = 4.0, deadline_ms: float = 80.0, hard_timeout_ms: float = 1500.0,
                 schemes: Sequence[str] = SCHEMES, log=print) -> Dict:
    """Start a cluster, run the load with the scenario's faults, stop it; returns the tallies and leftovers."""
    from nercc.serving import LocalCluster
    from nercc.serving.cluster import leftover_shm, running_processes

    log(f"scenario: {scenario.name}")
    if scenario.netns_workers:
        why = netns_unavailable()
        if why:
            log(f"  skipped: network namespaces unavailable: {why}")
            return {"scenario": scenario.name, "skipped": f"network namespaces unavailable: {why}"}
    local = n_workers - scenario.netns_workers
    cluster = LocalCluster("lenet5", n_workers=local, n_masters=2, faults=dict(scenario.faults))
    netns = NetnsWorkers(local, scenario.netns_workers) if scenario.netns_workers else None
    pids: List[int] = []
    with cluster:
        if netns is not None:
            netns.__enter__()
        try:
            target = _Target(cluster, cluster.master_urls, cluster.worker_urls + (netns.urls if netns else []),
                             netns.net if netns else None)
            pids = [p.pid for p in netns.procs] if netns else []
            tallies = asyncio.run(_run_load(target, scenario, schemes, n_inputs, duration_s, rate_hz, deadline_ms,
                                            hard_timeout_ms, log))
            crashed = cluster.check() + (netns.crashed() if netns else [])
        finally:
            if netns is not None:
                netns.__exit__(None, None, None)
    return {"scenario": scenario.name, "tallies": tallies, "crashed": crashed,
            "left_processes": running_processes(cluster.pids() + pids), "left_shm": leftover_shm(cluster.shm_prefix),
            "left_netns": netns.problems() if netns else [], "hard_timeout_ms": hard_timeout_ms}


def format_table(outcomes: Sequence[Dict], schemes: Sequence[str] = SCHEMES) -> str:
    """scenario x scheme: answered / late / failed / non-finite (and the longest call, agreement with f)."""
    head = f"{'scenario':<30}" + "".join(f"{s:>22}" for s in schemes)
    lines = ["cells: answered/late/failed/non-finite  max call ms  top-1 agreement with f", head, "-" * len(head)]
    for outcome in outcomes:
        if outcome.get("skipped"):
            lines.append(f"{outcome['scenario']:<30}  skipped: {outcome['skipped']}")
            continue
        cells, extra = [], []
        for s in schemes:
            t = outcome["tallies"][s]
            cells.append(f"{t.answered}/{t.late}/{t.failed}/{t.nonfinite}".rjust(22))
            agree = f"{np.mean(t.agree):.2f}" if t.agree else "-"
            extra.append(f"{t.max_ms:.0f}ms {agree}".rjust(22))
        lines.append(f"{outcome['scenario']:<30}" + "".join(cells))
        lines.append(f"{'':<30}" + "".join(extra))
    return "\n".join(lines)


def check(outcome: Dict, slack_ms: float = 1500.0) -> List[str]:
    """The chaos assertions for one scenario; returns the violations (empty when all hold)."""
    problems = []
    if outcome.get("skipped"):
        return problems
    for scheme, t in outcome["tallies"].items():
        if t.nonfinite:
            problems.append(f"{scheme}: {t.nonfinite} batches with non-finite predictions")
        if t.max_ms > outcome["hard_timeout_ms"] + slack_ms:
            problems.append(f"{scheme}: a call took {t.max_ms:.0f} ms, past the hard timeout")
        if scheme in CODED and t.failed:
            problems.append(f"{scheme}: {t.failed} coded batches lost: {dict(t.reasons)}")
        if t.batches == 0:
            problems.append(f"{scheme}: no batch ran")
    if outcome["crashed"]:
        problems.append(f"servers crashed: {outcome['crashed']}")
    if outcome["left_processes"]:
        problems.append(f"processes left: {outcome['left_processes']}")
    if outcome["left_shm"]:
        problems.append(f"shared memory left: {outcome['left_shm']}")
    problems += outcome.get("left_netns", [])
    return problems


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="run the chaos scenarios and print the table")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=4.0, help="batches per second per scheme")
    parser.add_argument("--only", default=None, help="run only scenarios whose name contains this")
    args = parser.parse_args(argv)
    outcomes, failures = [], []
    for scenario in scenarios(args.workers):
        if args.only and args.only not in scenario.name:
            continue
        outcome = run_scenario(scenario, args.workers, args.inputs, args.duration, args.rate)
        outcomes.append(outcome)
        failures += [f"{scenario.name}: {p}" for p in check(outcome)]
    print(format_table(outcomes))
    for line in failures:
        print("VIOLATION", line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
