"""The real run behind the simulator: calibration and validation on a LocalCluster through ``CodedClient``.

Two phases, each scheme in turn, one open-loop Poisson generator (asyncio, the same ``CodedClient`` users call):

1. **calibration** (``straggler=none``, policy ``all``): every worker request's round trip, the encode / pre-
   processing time, the decode time, and Triton's own per-request compute time (its statistics API) for the
   instance hold. Written to ``calibration.json`` (read by :class:`nercc.simulate.model.ServiceModel`).
2. **validation** (the straggler profile and the policy under test): end-to-end latency per batch, answers used,
   lateness and RelAcc against the labels (base accuracy: the uncoded run's exact predictions of the same inputs).
   Written to ``summary.json``, shaped like the loadtest's.

Run it alone on the machine (``/work/bin/cpu-exclusive``): latency numbers only mean something below the
saturation knee and without neighbours.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nercc.simulate.core import PERCENTILES, percentile
from nercc.simulate.model import CodingCost


def _client_schemes() -> List[str]:
    from nercc import client

    order = ("uncoded", "replication", "hedged", "bacc", "nercc")
    return [s for s in order if s in getattr(client, "SCHEMES", ())]


def _triton_compute(urls: List[str], skip_ensembles: bool = True) -> Dict[str, float]:
    """Sum of compute_input + compute_infer + compute_output (ns) and executions over the servers' models."""
    import tritonclient.grpc as grpcclient

    total_ns, executions = 0, 0
    for url in urls:
        client = grpcclient.InferenceServerClient(url)
        try:
            stats = client.get_inference_statistics(as_json=True)
        finally:
            client.close()
        for model in stats.get("model_stats", []):
            inf = model.get("inference_stats", {})
            ns = sum(int(inf.get(part, {}).get("ns", 0)) for part in ("compute_input", "compute_infer",
                                                                        "compute_output"))
            if skip_ensembles and ns == 0:
                continue  # an ensemble has no compute of its own
            total_ns += ns
            executions += int(model.get("execution_count", 0))
    return {"ns": total_ns, "executions": executions}


async def _open_loop(client, raw: np.ndarray, k: int, rate: float, n_batches: int, seed: int, progress=None):
    """Poisson arrivals at ``rate`` batches/s; batch i carries inputs i*K .. i*K+K-1 (mod the data)."""
    from nercc.client import NotEnoughAnswersError

    rng = np.random.default_rng(seed)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    due = start + np.cumsum(rng.exponential(1.0 / rate, size=n_batches))

    async def one(i: int):
        wait = due[i] - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        lag_ms = (loop.time() - due[i]) * 1e3
        idx = (np.arange(k) + i * k) % len(raw)
        try:
            result = await client.infer(raw[idx])
            error = None
        except NotEnoughAnswersError as exc:
            result, error = None, f"NotEnoughAnswersError: {exc}"
        if progress is not None:
            progress.update(1)
        return i, idx, result, error, lag_ms

    out = await asyncio.gather(*(one(i) for i in range(n_batches)))
    await client.drain(timeout_s=5.0)
    return out


def _run_scheme(cluster, scheme: str, policy: str, deadline_ms: float, k: int, raw, rate, n_batches, seed,
                desc: str, after_warmup=None):
    from tqdm import tqdm

    from nercc.client import CodedClient

    async def go():
        client = CodedClient(cluster.master_url, cluster.worker_urls, model="lenet5", scheme=scheme,
                             deadline_ms=deadline_ms, policy=policy if scheme in ("nercc", "bacc") else (
                                 "all" if policy == "all" else "deadline"), n_inputs=k)
        async with client:
            await client.warmup(3)
            if after_warmup is not None:  # e.g. a statistics snapshot that must not count the slow first runs
                after_warmup()
            with tqdm(total=n_batches, desc=desc, leave=False) as bar:
                return await _open_loop(client, raw, k, rate, n_batches, seed, bar)

    return asyncio.run(go())


def _summary(rows, k: int, n_workers: int, labels: np.ndarray, base_pred: Optional[Dict[int, int]]):
    lat = np.asarray([r.total_ms if r is not None else np.inf for _, _, r, _, _ in rows])
    ok = [(idx, r) for _, idx, r, _, _ in rows if r is not None]
    out = {"requests": len(rows), "unanswered": int(sum(r is None for _, _, r, _, _ in rows)),
           "late": int(sum(r.late for _, r in ok))}
    for name, q in PERCENTILES:
        out[name] = percentile(lat, q)
    out["mean_ms"] = round(float(lat[np.isfinite(lat)].mean()), 3)
    out["max_ms"] = round(float(lat[np.isfinite(lat)].max()), 3)
    out["mean_arrived"] = round(float(np.mean([len(r.arrived) for _, r in ok])), 3)
    out["measured_compute_per_input"] = round(float(np.mean([r.n_requests for _, r in ok])) / k, 4)
    out["breakdown_ms"] = {name: {"p50": round(float(np.percentile([getattr(r, name) for _, r in ok], 50)), 3),
                                  "p99": round(float(np.percentile([getattr(r, name) for _, r in ok], 99)), 3)}
                           for name in ("encode_ms", "fanout_ms", "decode_ms")}
    out["start_lag_ms_p99"] = round(float(np.percentile([lag for *_, lag in rows], 99)), 3)
    if base_pred is not None:
        pred = np.concatenate([r.predictions.argmax(1) for _, r in ok])
        idx = np.concatenate([i for i, _ in ok])
        base = np.asarray([base_pred[int(i)] for i in idx])
        out["accuracy"] = round(float((pred == labels[idx]).mean()), 5)
        out["base_accuracy"] = round(float((base == labels[idx]).mean()), 5)
        out["rel_acc"] = round(out["accuracy"] / out["base_accuracy"], 5)
    return out


def _raw(rows) -> Dict:
    """Per-batch log of one run (kept beside the summary for later analysis)."""
    ok = [r for _, _, r, _, _ in rows if r is not None]
    return {"total_ms": [round(r.total_ms, 4) for r in ok], "encode_ms": [round(r.encode_ms, 4) for r in ok],
            "decode_ms": [round(r.decode_ms, 4) for r in ok], "n_arrived": [len(r.arrived) for r in ok],
            "n_requests": [r.n_requests for r in ok], "late": [bool(r.late) for r in ok],
            "hedge_ms": [getattr(r, "hedge_ms", None) for r in ok],
            "worker_latency_ms": [[round(v, 4) for v in r.worker_latency_ms.values()] for r in ok],
            "unanswered": sum(r is None for _, _, r, _, _ in rows)}


def measure(out_dir: Path, n_workers: int = 12, n_inputs: int = 4, straggler: str = "bimodal:p=0.1,slow_ms=40",
            rate: float = 10.0, n_batches: int = 600, calibration_batches: int = 200, policy: str = "first:8",
            deadline_ms: float = 30.0, seed: int = 0, schemes: Optional[List[str]] = None,
            sequential: bool = False) -> Dict:
    """Both clusters up at once; per scheme, calibration (no stragglers) right before the measured run, so that
    both see the machine in the same state (a shared 2-core box drifts over minutes). ``sequential``: the
    calibration cluster first, then the measured one (when two clusters do not fit in memory)."""
    from nercc.data import load_mnist
    from nercc.serving import LocalCluster

    out_dir = Path(out_dir)
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    raw, labels = load_mnist("test")
    k = n_inputs
    available = _client_schemes()
    schemes = [s for s in available if schemes is None or s in schemes]
    if "uncoded" not in schemes:
        schemes.insert(0, "uncoded")  # its exact predictions are the RelAcc reference
    t_begin = time.time()
    worker_ms: Dict[str, list] = {}
    pre_ms: Dict[str, list] = {}
    post_ms: Dict[str, list] = {}
    holds = {}
    results = {}
    base_pred: Optional[Dict[int, int]] = None
    start_timeout = 120.0 + 3.0 * n_workers  # 100 servers on 2 cores take minutes to load

    def calibrate(calm, scheme):
        if scheme == "hedged":  # hedged's requests are uncoded's: calibrated by the uncoded run
            return
        before = {}

        def snapshot(before=before):
            before["w"] = _triton_compute(calm.worker_urls)
            before["m"] = _triton_compute([calm.master_url])

        rows = _run_scheme(calm, scheme, "all", 2000.0, k, raw, rate, calibration_batches, seed,
                           f"calibrate {scheme}", after_warmup=snapshot)
        after_w = _triton_compute(calm.worker_urls)
        after_m = _triton_compute([calm.master_url])
        with open(out_dir / "raw" / f"calibration_{scheme}.json", "w") as fh:
            json.dump(_raw(rows), fh)
        kind = "coded" if scheme in ("nercc", "bacc") else scheme
        good = [r for _, _, r, _, _ in rows if r is not None]
        width = max(len(r.worker_latency_ms) for r in good)
        worker_ms.setdefault(kind, []).extend(
            sorted(r.worker_latency_ms.values()) for r in good if len(r.worker_latency_ms) == width)
        pre_ms.setdefault(kind, []).extend(r.encode_ms for r in good)
        post_ms.setdefault(kind, []).extend(r.decode_ms for r in good)
        w_ns = after_w["ns"] - before["w"]["ns"]
        w_n = after_w["executions"] - before["w"]["executions"]
        m_ns = after_m["ns"] - before["m"]["ns"]
        m_n = after_m["executions"] - before["m"]["executions"]
        holds[scheme] = {"worker_hold_ms": w_ns / max(w_n, 1) / 1e6,
                         "master_hold_ms": (m_ns / 1e6 / max(len(good), 1)) if m_n else 0.0}

    def run_measured(cluster, scheme):
        nonlocal base_pred
        rows = _run_scheme(cluster, scheme, policy, deadline_ms, k, raw, rate, n_batches, seed + 1,
                           f"measure {scheme}")
        with open(out_dir / "raw" / f"measured_{scheme}.json", "w") as fh:
            json.dump(_raw(rows), fh)
        if scheme == "uncoded":  # exact f on the same inputs: the RelAcc reference
            base_pred = {}
            for _, idx, r, _, _ in rows:
                if r is not None:
                    base_pred.update(zip(idx.tolist(), r.predictions.argmax(1).tolist()))
        results[scheme] = _summary(rows, k, n_workers, labels, base_pred)
        results[scheme]["policy"] = policy if scheme in ("nercc", "bacc") else "every input"
        results[scheme]["compute_per_input"] = (n_workers / k if scheme in ("nercc", "bacc") else
                                                float(n_workers // k) if scheme == "replication" else 1.0)
        if scheme == "hedged":
            used = [getattr(r, "hedge_ms", None) for _, _, r, _, _ in rows if r is not None]
            used = [u for u in used if u is not None]
            if used:
                results[scheme]["hedge_ms"] = round(float(np.median(used)), 3)

    def cluster(profile):
        return LocalCluster("lenet5", n_workers=n_workers, straggler=profile, seed=seed,
                            start_timeout_s=start_timeout)

    if sequential:  # one cluster at a time (memory: 2 x 100 workers do not fit)
        with cluster("none") as calm:
            for scheme in schemes:
                calibrate(calm, scheme)
        with cluster(straggler) as slow:
            for scheme in schemes:
                run_measured(slow, scheme)
    else:
        with cluster("none") as calm, cluster(straggler) as slow:
            for scheme in schemes:
                calibrate(calm, scheme)
                run_measured(slow, scheme)
    cost = CodingCost()
    enc, grid, dec = cost.measure("nercc", n_workers, k)
    coded_holds = [h["master_hold_ms"] for s, h in holds.items() if s in ("nercc", "bacc")]
    calibration = {
        "model": "lenet5", "n_workers": n_workers, "n_inputs": k, "rate": rate, "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "worker_ms": worker_ms, "pre_ms": pre_ms, "post_ms": post_ms,
        "worker_hold_ms": float(np.mean([h["worker_hold_ms"] for h in holds.values()])),
        "master_hold_ms": float(np.mean(coded_holds)) if coded_holds else 0.0,
        "coding_encode_ms": enc, "coding_decode_ms": float(np.interp(n_workers, grid, dec)),
        "info": {"holds_by_scheme": holds,
                 "what": "no-straggler cluster, policy all, open-loop Poisson at `rate`; each scheme calibrated "
                         "right before its measured run"},
    }
    with open(out_dir / "calibration.json", "w") as fh:
        json.dump(calibration, fh)
    summary = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": None,
        "settings": {"model": "lenet5", "n_workers": n_workers, "n_inputs": k, "offered_batches_per_s": rate,
                     "batches": n_batches, "deadline_ms": deadline_ms, "coded_policy": policy, "seed": seed,
                     "engine": "asyncio open loop (Poisson), CodedClient, LocalCluster on this machine",
                     "seconds": round(time.time() - t_begin, 1)},
        "profiles": {"measured": {"straggler": straggler, "schemes": results}},
    }
    with open(out_dir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    return summary
