"""Cost of each serving scheme at concurrency 1, no stragglers: latency and CPU per batch, ratios to replication.

    nercc bench client-cost                         # LeNet5, N = 12, K = 4, the default rows
    nercc bench client-cost --transports aio,gevent # also the gevent (tritonclient.http) transport
    tools/exclusive .venv/bin/nercc bench client-cost --save bench/results/client_cost.json   # alone

One LocalCluster (master + N workers, straggler profile ``none``); the rows share it and run interleaved in
rounds (``--round`` batches of each row in turn), so drifts of the machine's load hit every row alike. Rows:
``uncoded``, ``replication``, ``hedged``, ``nercc`` (the master encodes: ``<model>_encode``, one Python-stub
hop), ``nercc-local`` (the client encodes, ``encode="local"``), ``bacc`` (and ``bacc-local``); ``<scheme>-server``
(``nercc-server`` ...): one request to the master's coded endpoint ``<model>_coded``, which encodes, fans out,
waits and decodes inside the master (:class:`nercc.client.endpoint.EndpointClient`); ``--transports`` adds a
row per transport (``nercc@gevent`` ...).

Per row: p50 / p99 of the batch latency (call → predictions), and CPU ms per batch: the utime + stime deltas
(``/proc/<pid>/stat``) of every tritonserver and Python-stub process of the cluster ("servers") and of this
process ("client": every thread, gRPC's included), divided by the batches. Between batches the client waits
(untimed, CPU counted) for requests it left in flight, so a batch's leftover work is charged to it. The
targets of issue 9 (default server-side encoder): nercc CPU per batch <= 1.15x replication's, p50 <= 1.2x; of
issue 17: nercc-sys (policy ``--sys-policy``, default the demo's exact:M@T) CPU per batch and p50 <= 1.0x replication's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from nercc.coding.registry import CODED_SCHEMES, NERCC_NAME, REPLICATION, SCHEME_ORDER, SYSTEMATIC_SCHEMES

DEFAULT_ROWS = ",".join((*SCHEME_ORDER, f"{NERCC_NAME}-local"))
#: ``<scheme>-server``: the master's coded endpoint ``<model>_coded`` decodes (one request from the client)
SERVER_SUFFIX = "-server"
ROWS = (*SCHEME_ORDER, *(f"{name}-local" for name in CODED_SCHEMES),
        *(f"{name}{SERVER_SUFFIX}" for name in SCHEME_ORDER))
CPU_TARGET, P50_TARGET = 1.15, 1.2
#: issue 17: systematic NeRCC (its K own requests need no master; parity rows only when they come in time)
SYS_CPU_TARGET, SYS_P50_TARGET = 1.0, 1.0
_TICK_MS = 1e3 / os.sysconf("SC_CLK_TCK")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lenet5", help="exported model in model_repository/")
    parser.add_argument("--workers", "-n", type=int, default=12, help="worker tritonserver processes (N)")
    parser.add_argument("--inputs", "-k", type=int, default=4, help="inputs per batch (K)")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per row")
    parser.add_argument("--round", type=int, default=25, help="batches of one row before the next row's turn")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per row first")
    parser.add_argument("--rows", default=DEFAULT_ROWS,
                        help="comma-separated: uncoded, replication, hedged, bacc, nercc, nercc-local, bacc-local, "
                             "<scheme>-server (the master's coded endpoint: nercc-server, ...)")
    parser.add_argument("--transports", default="aio", help="comma-separated: aio (grpc.aio), gevent (http)")
    parser.add_argument("--policy", default="first:8", help="plain coded rows' wait policy")
    parser.add_argument("--sys-policy", default="auto",
                        help="systematic rows' (nercc-sys, bacc-sys) wait policy; auto = the demo's, "
                             "exact:ceil(2N/3)@T (T = nercc.demo.DEMO_EXACT_PATIENCE_MS; without stragglers "
                             "every own answer comes before T)")
    parser.add_argument("--save", default=None, metavar="PATH", help="also write the table and settings as JSON")
    parser.add_argument("--tritonserver", default=None, help="path of a tritonserver binary (default: pytriton's)")


def cpu_ms(pids: List[int]) -> float:
    """utime + stime of these processes, in ms (processes that vanished count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total * _TICK_MS


class Row:
    """One table row: a client (scheme, encode mode, transport) and what was measured for it."""

    def __init__(self, name: str, transport: str, client):
        self.name, self.transport, self.client = name, transport, client
        self.latency_ms: List[float] = []
        self.server_cpu_ms = 0.0
        self.client_cpu_ms = 0.0
        self.requests = 0
        self.hedge_ms: List[float] = []

    @property
    def label(self) -> str:
        return self.name if self.transport == "aio" else f"{self.name}@{self.transport}"

    def record(self, result) -> None:
        self.latency_ms.append(result.total_ms)
        self.requests += result.n_requests
        if result.hedge_ms is not None:
            self.hedge_ms.append(result.hedge_ms)


def row_policy(scheme: str, args) -> str:
    """The wait policy of a row's scheme: --sys-policy (systematic), --policy (plain coded), else deadline."""
    if scheme in SYSTEMATIC_SCHEMES:
        if args.sys_policy == "auto":
            from nercc.demo import auto_exact_policy

            return auto_exact_policy(args.workers, 1000.0)
        return args.sys_policy
    return args.policy if scheme in CODED_SCHEMES else "deadline"


def make_client(row: str, transport: str, cluster, args):
    from nercc.client import CodedClient, GeventCodedClient
    from nercc.demo import client_settings

    if row.endswith(SERVER_SUFFIX):  # the endpoint runs the coded client inside the master (gRPC only)
        from nercc.client.endpoint import EndpointClient

        scheme = row[: -len(SERVER_SUFFIX)]
        return EndpointClient(cluster.master_url, model=args.model, scheme=scheme, deadline_ms=1000.0,
                              policy=row_policy(scheme, args),
                              n_workers=args.workers, n_inputs=args.inputs)
    scheme, encode = client_settings(row)
    kw = dict(model=args.model, scheme=scheme, encode=encode, n_inputs=args.inputs, deadline_ms=1000.0,
              policy=row_policy(scheme, args))
    if transport == "gevent":
        return GeventCodedClient(cluster.master_http_url, cluster.worker_http_urls, **kw)
    return CodedClient(cluster.master_url, cluster.worker_urls, **kw)


class AioRunner:
    """Runs the asyncio clients' batches on one event loop for the whole benchmark."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()

    def warmup(self, client, n: int) -> None:
        self.loop.run_until_complete(client.warmup(n))

    def batch(self, client, batch):
        async def one():
            result = await client.infer(batch)
            await client.drain()
            return result

        return self.loop.run_until_complete(one())

    def close(self, client) -> None:
        self.loop.run_until_complete(client.close())


class GeventRunner:
    def warmup(self, client, n: int) -> None:
        client.warmup(n)

    def batch(self, client, batch):
        result = client.infer(batch)
        client.drain()
        return result

    def close(self, client) -> None:
        client.close()


def measure(rows: List[Row], runners: Dict[str, object], batches: List[np.ndarray], cluster, args, progress) -> None:
    """Every row's batches, interleaved in rounds; CPU deltas of servers and client per row's turn."""
    from nercc.serving.cluster import running_processes

    server_pids = running_processes(cluster.pids())
    me = [os.getpid()]
    for row in rows:
        runners[row.transport].warmup(row.client, args.warmup)
    done = 0
    while done < args.batches:
        n = min(args.round, args.batches - done)
        for row in rows:
            runner = runners[row.transport]
            s0, c0 = cpu_ms(server_pids), cpu_ms(me)
            for i in range(done, done + n):
                row.record(runner.batch(row.client, batches[i % len(batches)]))
            row.server_cpu_ms += cpu_ms(server_pids) - s0
            row.client_cpu_ms += cpu_ms(me) - c0
            progress.update(n)
        done += n


def table(rows: List[Row], n_batches: int) -> List[dict]:
    ref = next((r for r in rows if r.name == REPLICATION and r.transport == "aio"), None)
    out = []
    for r in rows:
        p50, p99 = (float(np.percentile(r.latency_ms, q)) for q in (50, 99))
        server, client = r.server_cpu_ms / n_batches, r.client_cpu_ms / n_batches
        out.append({"row": r.label, "p50_ms": p50, "p99_ms": p99, "server_cpu_ms_per_batch": server,
                    "client_cpu_ms_per_batch": client, "cpu_ms_per_batch": server + client,
                    "requests_per_batch": r.requests / n_batches,
                    "hedge_ms_p50": float(np.median(r.hedge_ms)) if r.hedge_ms else None})
    if ref is not None:
        ref_row = out[rows.index(ref)]
        for row in out:
            row["p50_vs_replication"] = row["p50_ms"] / ref_row["p50_ms"]
            ref_cpu = ref_row["cpu_ms_per_batch"]  # 0 only in tiny runs (clock ticks of 10 ms)
            row["cpu_vs_replication"] = row["cpu_ms_per_batch"] / ref_cpu if ref_cpu > 0 else float("nan")
    return out


def format_rows(out: List[dict]) -> str:
    header = ["row", "p50 ms", "p99 ms", "CPU ms/batch (servers + client)", "requests", "p50 / repl.",
              "CPU / repl."]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in out:
        lines.append(
            f"| {r['row']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_ms_per_batch']:.2f} "
            f"({r['server_cpu_ms_per_batch']:.2f} + {r['client_cpu_ms_per_batch']:.2f}) | "
            f"{r['requests_per_batch']:.2f} | {r.get('p50_vs_replication', float('nan')):.2f}x | "
            f"{r.get('cpu_vs_replication', float('nan')):.2f}x |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from nercc.data import load_model_data
    from nercc.models import load_model_info
    from nercc.progress import progress_bar
    from nercc.serving import LocalCluster

    names = [s.strip() for s in args.rows.split(",") if s.strip()]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not set(transports) <= {"aio", "gevent"}:
        raise SystemExit(f"nercc bench client-cost: unknown transport in {transports}; use aio, gevent")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"nercc bench client-cost: unknown row(s) {unknown}; use {', '.join(ROWS)}")
    if args.batches < 1 or args.round < 1:
        raise SystemExit("nercc bench client-cost: --batches and --round must be >= 1")
    info = load_model_info(args.model)
    raw, _ = load_model_data(info, split="test")
    k = args.inputs
    batches = [np.ascontiguousarray(raw[i * k:(i + 1) * k]) for i in range(min(args.batches, len(raw) // k))]
    with LocalCluster(args.model, n_workers=args.workers, straggler="none", seed=0, http=True,
                      tritonserver=args.tritonserver) as cluster:
        rows = [Row(name, t, make_client(name, t, cluster, args)) for t in transports for name in names
                if t == "aio" or not name.endswith(SERVER_SUFFIX)]
        runners = {"aio": AioRunner(), "gevent": GeventRunner()}
        try:
            with progress_bar(total=len(rows) * args.batches, desc="batches (all rows)", unit="batch") as progress:
                measure(rows, runners, batches, cluster, args, progress)
        finally:
            for row in rows:
                runners[row.transport].close(row.client)
        crashed = cluster.check()
    out = table(rows, args.batches)
    print(f"\n{args.model}: N={args.workers}, K={k}, concurrency 1, no stragglers, {args.batches} batches per row "
          f"(interleaved in rounds of {args.round}), coded policy {args.policy}, systematic {args.sys_policy}; "
          f"{os.cpu_count()} CPUs")
    print(format_rows(out))
    print(f"targets (issue 9, server-side encoder): nercc CPU <= {CPU_TARGET}x replication, p50 <= {P50_TARGET}x; "
          f"(issue 17) nercc-sys CPU <= {SYS_CPU_TARGET}x replication, p50 <= {SYS_P50_TARGET}x")
    if crashed:
        print(f"WARNING: servers died during the run: {', '.join(crashed)}")
    if args.save:
        record = {"settings": {k_: v for k_, v in vars(args).items() if k_ not in ("func",)},
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": out,
                  "crashed_servers": crashed}
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    configure(parser)
    raise SystemExit(main(parser.parse_args()))
