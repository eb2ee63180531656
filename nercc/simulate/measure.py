"""The real run behind the simulator: calibration and validation on a LocalCluster through ``CodedClient``.

Two phases, each scheme in turn, one open-loop Poisson generator (asyncio, the same ``CodedClient`` users call):

1. **calibration** (``straggler=none``, policy ``all``): every worker request's round trip, the encode / pre-
   processing time, the decode time, and Triton's own per-request compute time (its statistics API) for the
   instance hold. Written to ``calibration.json`` (read by :class:`nercc.simulate.model.ServiceModel`).
2. **validation** (the straggler profile and the policy under test): end-to-end latency per batch, answers used,
   lateness and RelAcc against the labels (base accuracy: the uncoded run's exact predictions of the same inputs).
   Written to ``summary.json``, shaped like the loadtest's.

Run it alone on an otherwise idle machine (the repository's ``tools/exclusive`` orders runs that use it): latency numbers only mean something below the
saturation knee and without neighbours.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nercc.coding.registry import CODED_SCHEMES, HEDGED, NERCC_NAME, REPLICATION, SCHEME_ORDER, UNCODED
from nercc.simulate.core import PERCENTILES, percentile
from nercc.simulate.model import CodingCost


def _client_schemes() -> List[str]:
    from nercc import client

    return [s for s in SCHEME_ORDER if s in getattr(client, "SCHEMES", ())]


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
    from nercc.client import CodedClient
    from nercc.progress import progress_bar

    async def go():
        client = CodedClient(cluster.master_url, cluster.worker_urls, model="lenet5", scheme=scheme,
                             deadline_ms=deadline_ms, policy=policy if scheme in CODED_SCHEMES else (
                                 "all" if policy == "all" else "deadline"), n_inputs=k)
        async with client:
            await client.warmup(3)
            if after_warmup is not None:  # e.g. a statistics snapshot that must not count the slow first runs
                after_warmup()
            with progress_bar(total=n_batches, desc=desc, leave=False) as bar:
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


class _Recorder:
    """The state of one :func:`measure` run: calibration samples, instance holds, measured summaries."""

    def __init__(self, out_dir: Path, raw, labels, n_workers: int, k: int, rate: float, seed: int):
        self.out_dir, self.raw, self.labels = out_dir, raw, labels
        self.n_workers, self.k, self.rate, self.seed = n_workers, k, rate, seed
        self.worker_ms: Dict[str, list] = {}
        self.pre_ms: Dict[str, list] = {}
        self.post_ms: Dict[str, list] = {}
        self.holds: Dict[str, dict] = {}
        self.results: Dict[str, dict] = {}
        self.base_pred: Optional[Dict[int, int]] = None

    def _dump(self, name: str, rows) -> None:
        with open(self.out_dir / "raw" / f"{name}.json", "w") as fh:
            json.dump(_raw(rows), fh)

    def calibrate(self, calm, scheme: str, n_batches: int) -> None:
        """Policy ``all`` on the straggler-free cluster: worker round trips, pre/post times, instance holds."""
        if scheme == HEDGED:  # hedged's requests are uncoded's: calibrated by the uncoded run
            return
        before = {}

        def snapshot(before=before):
            before["w"] = _triton_compute(calm.worker_urls)
            before["m"] = _triton_compute([calm.master_url])

        rows = _run_scheme(calm, scheme, "all", 2000.0, self.k, self.raw, self.rate, n_batches, self.seed,
                           f"calibrate {scheme}", after_warmup=snapshot)
        after_w, after_m = _triton_compute(calm.worker_urls), _triton_compute([calm.master_url])
        self._dump(f"calibration_{scheme}", rows)
        kind = "coded" if scheme in CODED_SCHEMES else scheme
        good = [r for _, _, r, _, _ in rows if r is not None]
        width = max(len(r.worker_latency_ms) for r in good)
        self.worker_ms.setdefault(kind, []).extend(
            sorted(r.worker_latency_ms.values()) for r in good if len(r.worker_latency_ms) == width)
        self.pre_ms.setdefault(kind, []).extend(r.encode_ms for r in good)
        self.post_ms.setdefault(kind, []).extend(r.decode_ms for r in good)
        w_ns, w_n = after_w["ns"] - before["w"]["ns"], after_w["executions"] - before["w"]["executions"]
        m_ns, m_n = after_m["ns"] - before["m"]["ns"], after_m["executions"] - before["m"]["executions"]
        self.holds[scheme] = {"worker_hold_ms": w_ns / max(w_n, 1) / 1e6,
                              "master_hold_ms": (m_ns / 1e6 / max(len(good), 1)) if m_n else 0.0}

    def run_measured(self, cluster, scheme: str, policy: str, deadline_ms: float, n_batches: int) -> None:
        """The straggling cluster under ``policy``: latency, answers used, lateness and RelAcc per scheme."""
        rows = _run_scheme(cluster, scheme, policy, deadline_ms, self.k, self.raw, self.rate, n_batches,
                           self.seed + 1, f"measure {scheme}")
        self._dump(f"measured_{scheme}", rows)
        if scheme == UNCODED:  # exact f on the same inputs: the RelAcc reference
            self.base_pred = {}
            for _, idx, r, _, _ in rows:
                if r is not None:
                    self.base_pred.update(zip(idx.tolist(), r.predictions.argmax(1).tolist()))
        result = _summary(rows, self.k, self.n_workers, self.labels, self.base_pred)
        coded = scheme in CODED_SCHEMES
        result["policy"] = policy if coded else "every input"
        result["compute_per_input"] = (self.n_workers / self.k if coded else
                                       float(self.n_workers // self.k) if scheme == REPLICATION else 1.0)
        if scheme == HEDGED:
            used = [getattr(r, "hedge_ms", None) for _, _, r, _, _ in rows if r is not None]
            used = [u for u in used if u is not None]
            if used:
                result["hedge_ms"] = round(float(np.median(used)), 3)
        self.results[scheme] = result

    def calibration(self) -> dict:
        """What ``calibration.json`` holds (read by :class:`nercc.simulate.model.ServiceModel`)."""
        enc, grid, dec = CodingCost().measure(NERCC_NAME, self.n_workers, self.k)
        coded_holds = [h["master_hold_ms"] for s, h in self.holds.items() if s in CODED_SCHEMES]
        return {
            "model": "lenet5", "n_workers": self.n_workers, "n_inputs": self.k, "rate": self.rate, "seed": self.seed,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "worker_ms": self.worker_ms, "pre_ms": self.pre_ms, "post_ms": self.post_ms,
            "worker_hold_ms": float(np.mean([h["worker_hold_ms"] for h in self.holds.values()])),
            "master_hold_ms": float(np.mean(coded_holds)) if coded_holds else 0.0,
            "coding_encode_ms": enc, "coding_decode_ms": float(np.interp(self.n_workers, grid, dec)),
            "info": {"holds_by_scheme": self.holds,
                     "what": "no-straggler cluster, policy all, open-loop Poisson at `rate`; each scheme calibrated "
                             "right before its measured run"},
        }


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
    schemes = [s for s in _client_schemes() if schemes is None or s in schemes]
    if UNCODED not in schemes:
        schemes.insert(0, UNCODED)  # its exact predictions are the RelAcc reference
    t_begin = time.time()
    record = _Recorder(out_dir, raw, labels, n_workers, n_inputs, rate, seed)
    start_timeout = 120.0 + 3.0 * n_workers  # 100 servers on 2 cores take minutes to load

    def cluster(profile):
        return LocalCluster("lenet5", n_workers=n_workers, straggler=profile, seed=seed,
                            start_timeout_s=start_timeout)

    if sequential:  # one cluster at a time (memory: 2 x 100 workers do not fit)
        with cluster("none") as calm:
            for scheme in schemes:
                record.calibrate(calm, scheme, calibration_batches)
        with cluster(straggler) as slow:
            for scheme in schemes:
                record.run_measured(slow, scheme, policy, deadline_ms, n_batches)
    else:
        with cluster("none") as calm, cluster(straggler) as slow:
            for scheme in schemes:
                record.calibrate(calm, scheme, calibration_batches)
                record.run_measured(slow, scheme, policy, deadline_ms, n_batches)
    with open(out_dir / "calibration.json", "w") as fh:
        json.dump(record.calibration(), fh)
    summary = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": None,
        "settings": {"model": "lenet5", "n_workers": n_workers, "n_inputs": n_inputs, "offered_batches_per_s": rate,
                     "batches": n_batches, "deadline_ms": deadline_ms, "coded_policy": policy, "seed": seed,
                     "engine": "asyncio open loop (Poisson), CodedClient, LocalCluster on this machine",
                     "seconds": round(time.time() - t_begin, 1)},
        "profiles": {"measured": {"straggler": straggler, "schemes": record.results}},
    }
    with open(out_dir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    return summary
