"""Measure the server side: cluster start-to-ready, memory, one plain worker request, one encoder round trip.

    python -m nercc.serving.measure --workers 12 --requests 200

Starts a LocalCluster (master + N workers, no stragglers), then over gRPC, sequentially:
a plain request (one input) to worker 0, the encoder with float input (K inputs -> N coded), the
``_encode`` ensemble with raw uint8 input; reports median / p99 in ms, plus start-to-ready, the total
RSS of every server and Python stub, and the time to stop. Prints a Markdown table (and JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from nercc.coding.registry import DEFAULT_SCHEME


def rss_bytes(pids: List[int]) -> Dict[str, int]:
    """Resident memory of the processes in the given process groups, split into servers and stubs."""
    from nercc.serving.cluster import running_processes

    totals = {"tritonserver": 0, "python stubs": 0}
    for pid in running_processes(pids):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        totals["tritonserver" if comm == "tritonserver" else "python stubs"] += kb * 1024
    return totals


def _timed(fn, n: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = 1e3 * (time.perf_counter() - t0)
    return out


def measure(model: str = "lenet5", n_workers: int = 12, n_inputs: int = 4, n_requests: int = 200) -> dict:
    import tritonclient.grpc as grpcclient

    from nercc.models import load_model_info
    from nercc.serving.cluster import LocalCluster

    info = load_model_info(model)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(n_inputs, *info.raw_shape), dtype=np.uint8)
    x = rng.normal(size=(n_inputs, *info.input_shape)).astype(np.float32)
    one = x[:1]
    params = {"scheme": DEFAULT_SCHEME, "n_workers": n_workers}

    def tensor(name, array, dtype):
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    results: dict = {"model": model, "n_workers": n_workers, "n_inputs": n_inputs, "n_requests": n_requests,
                     "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0]}
    t0 = time.perf_counter()
    cluster = LocalCluster(model, n_workers=n_workers)
    with cluster:
        results["start_to_ready_s"] = time.perf_counter() - t0
        results["rss_bytes"] = rss_bytes(cluster.pids())
        worker = grpcclient.InferenceServerClient(cluster.worker_urls[0])
        master = grpcclient.InferenceServerClient(cluster.master_url)
        try:
            plain = [tensor(info.input_name, one, "FP32")]
            float_in = [tensor("INPUT", x, "FP32")]
            raw_in = [tensor("RAW", raw, "UINT8")]
            latency = {
                "plain request, 1 worker (1 input)": _timed(lambda: worker.infer(model, plain), n_requests),
                f"encoder, float (K={n_inputs}, N={n_workers})":
                    _timed(lambda: master.infer(f"{model}_encoder", float_in, parameters=params), n_requests),
                f"encode ensemble, raw uint8 (K={n_inputs}, N={n_workers})":
                    _timed(lambda: master.infer(f"{model}_encode", raw_in, parameters=params), n_requests),
            }
        finally:
            worker.close()
            master.close()
        t_stop = time.perf_counter()
    results["stop_s"] = time.perf_counter() - t_stop
    results["latency_ms"] = {
        name: {"median": float(np.median(v)), "p99": float(np.percentile(v, 99)), "min": float(v.min())}
        for name, v in latency.items()
    }
    return results


def table(results: dict) -> str:
    rss = results["rss_bytes"]
    lines = [
        f"| what ({results['model']}, master + {results['n_workers']} workers, {results['cpus']} CPUs) | figure |",
        "|---|---|",
        f"| start to ready, all {results['n_workers'] + 1} servers | {results['start_to_ready_s']:.2f} s |",
        f"| RSS total | {sum(rss.values()) / 2**20:.0f} MiB (tritonserver {rss['tritonserver'] / 2**20:.0f} MiB + "
        f"Python stubs {rss['python stubs'] / 2**20:.0f} MiB) |",
        f"| stop (SIGTERM to all, every process gone, shm removed) | {results['stop_s']:.2f} s |",
    ]
    for name, stats in results["latency_ms"].items():
        lines.append(f"| {name}: median / p99 over {results['n_requests']} | "
                     f"{stats['median']:.2f} / {stats['p99']:.2f} ms |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--inputs", type=int, default=4, help="K, inputs per coded request")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = measure(args.model, args.workers, args.inputs, args.requests)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
