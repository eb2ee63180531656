"""Master memory under hostile requests: RSS after a 200 MiB raw request, and with a new lam_enc per request.

    python -m nercc.bench.master_memory            # prints the table, writes bench/results/master_memory.json

Starts a master alone (``LocalCluster(start_workers=False)``) and reads the resident memory of its process
group (tritonserver and its Python stubs: VmRSS, and the shared-memory part of it, RssShmem) from /proc:
idle, right after a 200 MiB raw LeNet5 request (K = 267,000 images: far past N, refused), and after each of
``--lam-requests`` K = N = 4096 encodes with a fresh lam_enc each (every one a new 4096 x 4096 matrix).
Each row also splits RSS into tritonserver and its Python stubs and gives the master's ``/dev/shm`` regions'
size on disk (shared memory counted once; RSS counts it in every process that maps it).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from pathlib import Path

import numpy as np

from nercc.paths import REPO_ROOT

_MiB = 2**20


def group_memory(pgids, shm_prefix: str | None = None) -> dict:
    """Summed VmRSS and RssShmem (MiB) of every process in the process groups ``pgids``.

    Also tritonserver's own VmRSS and its Python stubs' (``triton_python_backend_stub``), and with
    ``shm_prefix`` the allocated size of ``/dev/shm/<shm_prefix>*`` (the stubs' shared-memory pools, once).
    """
    rss = shmem = server = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) not in pgids:
                continue
            is_server = (proc / "comm").read_text().strip() == "tritonserver"
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                    server += int(line.split()[1]) if is_server else 0
                elif line.startswith("RssShmem:"):
                    shmem += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    row = {"rss_mib": round(rss / 1024, 1), "shmem_mib": round(shmem / 1024, 1),
           "tritonserver_rss_mib": round(server / 1024, 1), "stubs_rss_mib": round((rss - server) / 1024, 1)}
    if shm_prefix is not None:
        used = 0
        for path in glob.glob(f"/dev/shm/{glob.escape(shm_prefix)}*"):
            try:
                used += os.stat(path).st_blocks * 512
            except OSError:
                continue
        row["dev_shm_mib"] = round(used / _MiB, 1)
    return row


def main(argv=None) -> int:
    import tritonclient.grpc as grpcclient

    from nercc.serving import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-mib", type=float, default=200.0, help="size of the large raw request")
    parser.add_argument("--lam-requests", type=int, default=8, help="K = N = 4096 encodes, a new lam_enc each")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "master_memory.json")
    args = parser.parse_args(argv)
    rows = []
    with LocalCluster("lenet5", n_workers=4096, start_workers=False, max_request_bytes=256 * _MiB) as cluster:
        pg = cluster.pids()
        prefix = cluster.servers[0].shm_prefix
        client = grpcclient.InferenceServerClient(cluster.master_url)

        def encode(model, name, data, dtype, params):
            inp = grpcclient.InferInput(name, list(data.shape), dtype)
            inp.set_data_from_numpy(data)
            started = time.perf_counter()
            try:
                client.infer(model, [inp], parameters=params, client_timeout=600)
                outcome = "ok"
            except Exception as exc:  # noqa: BLE001 - the refusal message is the point
                outcome = str(exc)[:160]
            return outcome, round(time.perf_counter() - started, 2)

        raw = np.zeros((4, 28, 28), np.uint8)
        encode("lenet5_encode", "RAW", raw, "UINT8", {"n_workers": 12})  # warm: first request loads numpy/scipy
        time.sleep(1.0)
        idle = group_memory(pg, prefix)
        rows.append({"step": "idle (after one small request)", **idle})
        big = np.zeros((int(args.raw_mib * _MiB) // 784, 28, 28), np.uint8)
        outcome, seconds = encode("lenet5_encode", "RAW", big, "UINT8", {"n_workers": 12})
        del big
        time.sleep(1.0)
        rows.append({"step": f"after a {args.raw_mib:g} MiB raw request", **group_memory(pg, prefix), "outcome": outcome,
                     "seconds": seconds})
        x = np.random.default_rng(0).random((4096, 1, 28, 28), dtype=np.float32)
        for i in range(args.lam_requests):
            outcome, seconds = encode("lenet5_encoder", "INPUT", x, "FP32",
                                      {"n_workers": 4096, "lam_enc": 1e-6 * (i + 1)})
            rows.append({"step": f"K = N = 4096, lam_enc #{i + 1}", **group_memory(pg, prefix), "outcome": outcome,
                         "seconds": seconds})
        client.close()
    for row in rows:
        ratio = row["rss_mib"] / idle["rss_mib"]
        print(f"{row['step']:<36} RSS {row['rss_mib']:>8.1f} MiB ({ratio:4.2f}x idle; tritonserver "
              f"{row['tritonserver_rss_mib']:.1f}, stubs {row['stubs_rss_mib']:.1f})  RssShmem {row['shmem_mib']:>7.1f}"
              f" MiB  /dev/shm {row['dev_shm_mib']:.1f} MiB  {row.get('outcome', '')[:90]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "launcher default"),
                "model": "lenet5", "max_request_bytes": 256 * _MiB}
    args.out.write_text(json.dumps({"rows": rows, "idle_rss_mib": idle["rss_mib"], "settings": settings},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
