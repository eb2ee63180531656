"""Which transport for the gevent (Locust) client: a fan-out of N plain worker requests, one batch at a time.

    nercc bench transport-fanout                       # N = 12 LeNet5 workers, 300 fan-outs per transport

Three ways to send N requests at once and wait for all of them, each timed from the first send to the last
answer, with the CPU this process spent per fan-out:

``grpc.aio``        ``tritonclient.grpc.aio`` on an asyncio loop (what :class:`nercc.client.CodedClient` uses)
``http+gevent``     ``tritonclient.http`` (geventhttpclient) with one greenlet per request, after
                    ``gevent.monkey.patch_all()`` as under Locust (:class:`nercc.client.GeventCodedClient`)
``grpc+gevent``     ``tritonclient.grpc`` (blocking stubs) in greenlets after ``monkey.patch_all()`` and
                    ``grpc.experimental.gevent.init_gevent()``

Each transport runs in its own child process (monkey-patching and gRPC's gevent mode are process-wide), in
rounds that alternate the transports so that a drift of the machine's load hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

TRANSPORTS = ("grpc.aio", "http+gevent", "grpc+gevent")
WARMUP = 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--workers", "-n", type=int, default=12, help="worker tritonserver processes (N)")
    parser.add_argument("--fanouts", type=int, default=300, help="timed fan-outs per transport")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the transports")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one transport's run


def _child(args) -> None:
    """One transport: read the URLs and sizes from argv's JSON, print one JSON line of latencies and CPU."""
    spec = json.loads(args.child)
    transport, urls, n, shape = spec["transport"], spec["urls"], spec["n"], spec["shape"]
    if transport != "grpc.aio":
        from gevent import monkey

        monkey.patch_all()
    x = np.zeros((1, *shape), dtype=np.float32)
    fanout = _make_fanout(transport, urls, spec["model"], spec["input"], spec["output"], x)
    for _ in range(WARMUP):  # warm connections and servers
        fanout()
    lat = []
    c0 = os.times()
    for _ in range(n):
        t0 = time.perf_counter()
        fanout()
        lat.append((time.perf_counter() - t0) * 1e3)
    c1 = os.times()
    cpu = ((c1.user - c0.user) + (c1.system - c0.system)) * 1e3 / n
    print(json.dumps({"transport": transport, "latency_ms": lat, "client_cpu_ms": cpu}))


def _make_fanout(transport, urls, model, input_name, output_name, x):
    if transport == "grpc.aio":
        import asyncio

        import tritonclient.grpc.aio as aioclient
        from tritonclient.grpc import InferInput, InferRequestedOutput

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # the channels bind to the loop current at creation
        clients = [aioclient.InferenceServerClient(u) for u in urls]

        async def one(c):
            t = InferInput(input_name, list(x.shape), "FP32")
            t.set_data_from_numpy(x)
            return (await c.infer(model, [t], outputs=[InferRequestedOutput(output_name)])).as_numpy(output_name)

        async def all_():
            await asyncio.gather(*(one(c) for c in clients))

        return lambda: loop.run_until_complete(all_())
    import gevent

    if transport == "http+gevent":
        import tritonclient.http as httpclient

        clients = [httpclient.InferenceServerClient(u, concurrency=2) for u in urls]

        def one(c):
            t = httpclient.InferInput(input_name, list(x.shape), "FP32")
            t.set_data_from_numpy(x, binary_data=True)
            out = [httpclient.InferRequestedOutput(output_name, binary_data=True)]
            return c.infer(model, [t], outputs=out).as_numpy(output_name)
    else:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
        import tritonclient.grpc as grpcclient

        clients = [grpcclient.InferenceServerClient(u) for u in urls]

        def one(c):
            t = grpcclient.InferInput(input_name, list(x.shape), "FP32")
            t.set_data_from_numpy(x)
            return c.infer(model, [t], outputs=[grpcclient.InferRequestedOutput(output_name)]).as_numpy(output_name)

    return lambda: gevent.joinall([gevent.spawn(one, c) for c in clients], raise_error=True)


def main(args: argparse.Namespace) -> int:
    if args.child:
        _child(args)
        return 0
    from nercc.models import load_model_info
    from nercc.paths import REPO_ROOT
    from nercc.serving import LocalCluster

    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = set(transports) - set(TRANSPORTS)
    if unknown:
        raise SystemExit(f"nercc bench transport-fanout: unknown transport(s) {sorted(unknown)}; use {TRANSPORTS}")
    info = load_model_info(args.model)
    from nercc.bench.client_cost import cpu_ms
    from nercc.serving.cluster import running_processes

    lat = {t: [] for t in transports}
    cpu = {t: [] for t in transports}
    server_cpu = {t: 0.0 for t in transports}
    with LocalCluster(args.model, n_workers=args.workers, straggler="none", seed=0, http=True,
                      master=False) as cluster:
        server_pids = running_processes(cluster.pids())
        for r in range(args.rounds):
            for t in transports:
                urls = cluster.worker_http_urls if t == "http+gevent" else cluster.worker_urls
                spec = {"transport": t, "urls": urls, "n": max(1, args.fanouts // args.rounds),
                        "model": args.model, "shape": list(info.input_shape), "input": info.input_name,
                        "output": info.output_name}
                s0 = cpu_ms(server_pids)
                out = subprocess.run([sys.executable, "-m", "nercc.bench.transport_fanout", "--child", json.dumps(spec)],
                                     capture_output=True, text=True, cwd=REPO_ROOT)
                if out.returncode != 0:
                    raise SystemExit(f"transport {t} failed:\n{out.stderr[-3000:]}")
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                server_cpu[t] += (cpu_ms(server_pids) - s0) / (spec["n"] + WARMUP)  # warm-up fan-outs included
                lat[t] += rec["latency_ms"]
                cpu[t].append(rec["client_cpu_ms"])
                print(f"round {r + 1}/{args.rounds} {t}: p50 {np.median(rec['latency_ms']):.2f} ms", flush=True)
    print(f"\n{args.model}: fan-out of {args.workers} worker requests (batch 1), one at a time, "
          f"{len(next(iter(lat.values())))} per transport; {os.cpu_count()} CPUs")
    print("| transport | p50 ms | p99 ms | client CPU ms / fan-out | servers' CPU ms / fan-out |\n|---|---|---|---|---|")
    for t in transports:
        print(f"| {t} | {np.percentile(lat[t], 50):.2f} | {np.percentile(lat[t], 99):.2f} | {np.mean(cpu[t]):.2f} | "
              f"{server_cpu[t] / args.rounds:.2f} |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    configure(parser)
    raise SystemExit(main(parser.parse_args()))
