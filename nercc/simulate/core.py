"""Run one scheme through an engine and summarize it the way ``nercc loadtest`` does."""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from nercc.paths import display_path
from nercc.simulate import fast
from nercc.simulate.model import (
    AccuracyTable,
    BatchResults,
    CodingCost,
    Draws,
    ServiceModel,
    SimSettings,
    make_draws,
)

PERCENTILES = (("p50_ms", 50), ("p90_ms", 90), ("p95_ms", 95), ("p99_ms", 99), ("p99.9_ms", 99.9))


def _source_text(source: str) -> str:
    """An accuracy table's "<path> (note)" with the path as results name it (no machine-only folder)."""
    path, sep, note = source.partition(" (")
    return display_path(path) + sep + note


def run_engine(settings: SimSettings, draws: Draws, engine: str = "fast") -> BatchResults:
    if engine == "fast":
        return fast.run(settings, draws)
    if engine == "simpy":
        from nercc.simulate import des

        return des.run(settings, draws)
    raise ValueError(f"unknown engine {engine!r}; use 'fast' or 'simpy'")


def percentile(values: np.ndarray, q: float) -> Optional[float]:
    """The q-th percentile (numpy's linear rule, like the loadtest); None when it falls on failed batches."""
    if values.size == 0:
        return None
    v = float(np.percentile(values, q)) if np.isfinite(values).all() else float(
        np.percentile(np.where(np.isfinite(values), values, np.finfo(float).max), q))
    return None if not math.isfinite(v) or v >= np.finfo(float).max / 2 else round(v, 3)


def summarize(settings: SimSettings, res: BatchResults, draws: Draws, accuracy: Optional[AccuracyTable]) -> Dict:
    s = settings
    lat = res.latency_ms
    ok = ~res.failed
    out: Dict = {"requests": int(lat.size), "failures": int(res.failed.sum() + res.late.sum()),
                 "failure_reasons": {}, "late": int(res.late.sum()), "unanswered": int(res.failed.sum())}
    if res.late.any():
        out["failure_reasons"]["late"] = int(res.late.sum())
    if res.failed.any():
        out["failure_reasons"]["NotEnoughAnswersError"] = int(res.failed.sum())
    for name, q in PERCENTILES:
        out[name] = percentile(lat, q)
    out["mean_ms"] = round(float(lat[ok].mean()), 3) if ok.any() else None
    out["max_ms"] = round(float(lat[ok].max()), 3) if ok.any() else None
    span_s = float(draws.arrival_ms[-1] - draws.arrival_ms[0]) / 1e3 if lat.size > 1 else math.nan
    out["offered_batches_per_s"] = s.rate
    out["compute_per_input"] = round(s.compute_per_input, 3)
    out["measured_compute_per_input"] = round(float(res.n_requests.mean()) / s.n_inputs, 4)
    out["mean_arrived"] = round(float(res.n_arrived[ok].mean()), 3) if ok.any() else None
    busy = float((draws.hold_ms + draws.delay_ms).sum())
    out["worker_utilization"] = round(busy / (s.n_workers * span_s * 1e3), 4) if span_s > 0 else None
    out["breakdown_ms"] = {
        name: {"p50": round(float(np.percentile(v[ok], 50)), 3), "p99": round(float(np.percentile(v[ok], 99)), 3)}
        for name, v in (("encode_ms", res.encode_ms), ("fanout_ms", res.fanout_ms), ("decode_ms", res.decode_ms))
    } if ok.any() else {}
    out["policy"] = s.policy if s.coded else ("all" if s.policy_kind == "all" else "every input")
    out["deadline_ms"] = s.deadline_ms
    if s.hedged:
        out["hedge_ms"] = round(draws.hedge_ms, 3)
        out["hedged_fraction"] = round(float(res.n_requests.mean() - s.n_inputs) / s.n_inputs, 4)
    if s.coded:
        if accuracy is None:
            out["rel_acc"] = None
            out["accuracy_source"] = f"no accuracy table for this model at N={s.n_workers}, K={s.n_inputs}"
        elif s.scheme not in accuracy.rel:
            out["rel_acc"] = None
            out["accuracy_source"] = (f"{_source_text(accuracy.source)} has no {s.scheme} column "
                                      "(rerun `nercc bench accuracy`)")
        else:
            # per-input RelAcc of a regression estimate at S = N - |F| stragglers; exact inputs (systematic
            # answers that came) count 1: batch RelAcc = 1 - (recovered / K) (1 - RelAcc_recovered(S))
            rel, beyond = accuracy.rel_acc(s.scheme, s.n_workers - res.n_arrived[ok], s.n_workers)
            if res.n_recovered is not None:
                share = res.n_recovered[ok] / s.n_inputs
                rel = 1.0 - share * (1.0 - rel)
                beyond = beyond & (share > 0)
                out["exact_batches"] = round(float(np.mean(res.n_recovered[ok] == 0)), 5)
                out["recovered_per_batch"] = round(float(res.n_recovered[ok].mean()), 4)
            out["rel_acc"] = round(float(rel.mean()), 5)
            out["rel_acc_p1"] = round(float(np.percentile(rel, 1)), 5)  # the worst 1% of batches
            out["rel_acc_min"] = round(float(rel.min()), 5)
            out["beyond_accuracy_table"] = round(float(beyond.mean()), 5)
            src = _source_text(accuracy.source)
            if accuracy.scaled_from is not None:
                src += (f" (no table at N={s.n_workers}, K={s.n_inputs}: N={accuracy.scaled_from[0]}, "
                        f"K={accuracy.scaled_from[1]} at the same straggler fraction S/N)")
            out["accuracy_source"] = src
    else:
        out["rel_acc"] = 1.0  # exact predictions of f
    return out


def simulate(settings: SimSettings, service: ServiceModel, accuracy: Optional[AccuracyTable] = None,
             engine: str = "fast", cost: Optional[CodingCost] = None) -> Dict:
    """Simulate one scheme; returns the loadtest-shaped per-scheme summary dict."""
    draws = make_draws(settings, service, cost)
    res = run_engine(settings, draws, engine)
    return summarize(settings, res, draws, accuracy)
