"""Plan a deployment: the cheapest (N, K, M, deadline) that meets a p99 SLO and a RelAcc floor, by simulation.

Searches a grid of coded settings (N workers, K inputs per batch, policy first:M, deadline) with the calibrated
simulator (``nercc simulate``), and prints the cheapest that meet ``--slo-p99-ms`` with mean expected RelAcc >=
``--min-relacc`` (compute = worker requests per input, N / K for coded), next to the best replication
(r = N // K) and hedged settings on the same load and straggler profile. Answers come from one simulation per
(N, K): the workers never learn the client's policy, so every (M, deadline) is evaluated on the same draws.

Example:
  nercc plan --slo-p99-ms 25 --min-relacc 0.96 --straggler bimodal:p=0.3,slow_ms=40
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from nercc.coding.registry import CODED_SCHEMES, DEFAULT_SCHEME, HEDGED, REPLICATION, UNCODED
from nercc.simulate import fast
from nercc.simulate.core import summarize
from nercc.simulate.model import AccuracyTable, CodingCost, ServiceModel, SimSettings, make_draws


def _ints(text: str, name: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"nercc plan: --{name} must be a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"nercc plan: --{name} needs positive integers, got {text!r}")
    return values


def _floats(text: str, name: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"nercc plan: --{name} must be a comma list of numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise SystemExit(f"nercc plan: --{name} needs positive numbers, got {text!r}")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("--slo-p99-ms", type=float, required=True, help="p99 end-to-end latency target (ms)")
    parser.add_argument("--min-relacc", type=float, default=0.95, help="mean expected RelAcc floor (default 0.95)")
    parser.add_argument("--straggler", required=True, help="straggler profile, e.g. bimodal:p=0.3,slow_ms=40")
    parser.add_argument("--max-compute", type=float, default=None,
                        help="most worker requests per input you will pay for (default: no limit)")
    parser.add_argument("--rate", type=float, default=10.0, help="offered batches per second (default 10)")
    parser.add_argument("--workers", default="12,24,50,100,200", help="N values to search")
    parser.add_argument("--overheads", default="2,3,4,5",
                        help="N / K values to search (K = round(N / overhead), N rounded to K * overhead)")
    parser.add_argument("--answer-fractions", default="0.5,0.6,0.7,0.8,0.9,1.0",
                        help="M / N values for first:M (1.0 = wait for all, up to the deadline)")
    parser.add_argument("--deadlines-ms", default="10,15,20,30,50", help="deadlines to search")
    parser.add_argument("--batches", type=int, default=2000, help="simulated batches per setting (default 2000)")
    parser.add_argument("--scheme", choices=CODED_SCHEMES, default=DEFAULT_SCHEME)
    parser.add_argument("--model", default="lenet5", help="accuracy tables of this model (default lenet5)")
    parser.add_argument("--calibration", default=None, help="calibration JSON (default: the committed one)")
    parser.add_argument("--top", type=int, default=5, help="coded settings to print (default 5)")
    parser.add_argument("--seed", type=int, default=0)


def _row(kind: str, settings: SimSettings, summary: Dict, **extra) -> Dict:
    return {"scheme": kind, "N": settings.n_workers, "K": settings.n_inputs, **extra,
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "p99.9_ms": summary["p99.9_ms"],
            "rel_acc": summary.get("rel_acc"), "rel_acc_p1": summary.get("rel_acc_p1"),
            "compute": summary["measured_compute_per_input"]}


def search(slo_p99_ms: float, min_relacc: float, straggler: str, max_compute: Optional[float] = None,
           rate: float = 10.0, workers=(12, 24, 50, 100, 200), overheads=(2, 3, 4, 5),
           answer_fractions=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0), deadlines=(10, 15, 20, 30, 50), batches: int = 2000,
           scheme: str = DEFAULT_SCHEME, model: str = "lenet5", calibration=None, seed: int = 0) -> Dict:
    service = calibration if isinstance(calibration, ServiceModel) else ServiceModel.load(calibration)
    cost = CodingCost()
    coded: List[Dict] = []
    baselines: List[Dict] = []
    skipped: List[str] = []
    seen_k = set()
    grid = sorted({(max(2, int(round(n0 / r))) * r, max(2, int(round(n0 / r)))) for n0 in workers for r in overheads})
    for n, k in grid:  # N rounded to a multiple of the overhead r: N / K = r exactly (accuracy tables per r)
        base = dict(straggler=straggler, rate=rate, n_batches=batches, seed=seed)
        # replication on the same N workers
        rep = SimSettings(REPLICATION, n, k, **base)
        draws = make_draws(rep, service, cost)
        baselines.append(_row(REPLICATION, rep, summarize(rep, fast.run(rep, draws), draws, None),
                              policy=f"r={n // k}", deadline_ms=None))
        if k not in seen_k:  # hedged and uncoded depend on K only (and N >= 2K for a free second worker)
            seen_k.add(k)
            for name in (UNCODED, HEDGED):
                nb = 2 * k
                probe = SimSettings(name, nb, k, **base)
                for q in ((None,) if name == UNCODED else (0.5, 0.9, 0.95)):
                    hedge = None
                    if q is not None:
                        hedge = service.one_request_quantile(q) if q < 0.95 else None
                    st = dataclasses.replace(probe, hedge_ms=hedge)
                    draws = make_draws(st, service, cost)
                    summ = summarize(st, fast.run(st, draws), draws, None)
                    label = "" if q is None else f"hedge {summ['hedge_ms']:.1f} ms" + (" (p95)" if q == 0.95 else "")
                    baselines.append(_row(name, st, summ, policy=label, deadline_ms=None))
        accuracy = AccuracyTable.find(model, n, k)
        if accuracy is None:
            skipped.append(f"N={n} K={k}: no {model} accuracy table with N/K={n / k:g}")
            continue
        st0 = SimSettings(scheme, n, k, policy="all", **base)
        draws = make_draws(st0, service, cost)
        fanout, answer, hedge_answer, flags = fast.worker_answers(st0, draws)
        srt = np.sort(answer, axis=1)
        ms = sorted({min(n, max(2, int(round(f * n)))) for f in answer_fractions})
        for m in ms:
            for dl in deadlines:
                st = dataclasses.replace(st0, policy=f"first:{m}", deadline_ms=float(dl))
                res = fast.client_decisions(st, draws, fanout, answer, hedge_answer, flags, sorted_answer=srt)
                coded.append(_row(scheme, st, summarize(st, res, draws, accuracy), policy=f"first:{m}",
                                  deadline_ms=float(dl)))

    def meets(row, need_acc=True):
        ok = row["p99_ms"] is not None and row["p99_ms"] <= slo_p99_ms
        if need_acc:
            ok = ok and row["rel_acc"] is not None and row["rel_acc"] >= min_relacc
        if max_compute is not None:
            ok = ok and row["compute"] <= max_compute + 1e-9
        return ok

    def key(row):
        return (row["compute"], row["p99_ms"] if row["p99_ms"] is not None else math.inf)

    feasible = sorted((r for r in coded if meets(r)), key=key)
    best = {}
    for name in (REPLICATION, HEDGED, UNCODED):
        rows = [r for r in baselines if r["scheme"] == name]
        ok = sorted((r for r in rows if meets(r, need_acc=False)), key=key)
        if ok:
            best[name] = {**ok[0], "meets_slo": True}
        elif rows:
            fastest = min(rows, key=lambda r: (r["p99_ms"] is None, r["p99_ms"] or 0.0))
            best[name] = {**fastest, "meets_slo": False}
    nearest = None
    if not feasible and coded:
        nearest = min(coded, key=lambda r: (r["p99_ms"] is None, r["p99_ms"] or 0.0,
                                            -(r["rel_acc"] or 0.0)))
    return {"coded": feasible, "best_baselines": best, "nearest_coded": nearest, "skipped": skipped,
            "evaluated": len(coded) + len(baselines)}


def _fmt_row(r: Dict) -> str:
    def f(v, w=7, p=1):
        return f"{'fail':>{w}s}" if v is None else f"{v:{w}.{p}f}"

    dl = "" if r.get("deadline_ms") is None else f"{r['deadline_ms']:g}"
    rel = "   -  " if r.get("rel_acc") is None else f"{r['rel_acc']:.4f}"
    return (f"  {r['scheme']:11s} {r['N']:5d} {r['K']:4d} {r['policy']:24s} {dl:>8s} {f(r['p50_ms'])} "
            f"{f(r['p99_ms'])} {f(r['p99.9_ms'])} {rel:>7s} {r['compute']:8.2f}")


HEADER = (f"  {'scheme':11s} {'N':>5s} {'K':>4s} {'policy':24s} {'deadline':>8s} {'p50':>7s} {'p99':>7s} "
          f"{'p99.9':>7s} {'RelAcc':>7s} {'compute':>8s}")


def main(args) -> int:
    if not (args.slo_p99_ms > 0 and math.isfinite(args.slo_p99_ms)):
        print(f"nercc plan: --slo-p99-ms must be a positive number, got {args.slo_p99_ms}", file=sys.stderr)
        return 2
    if not 0 < args.min_relacc <= 1:
        print(f"nercc plan: --min-relacc must be in (0, 1], got {args.min_relacc}", file=sys.stderr)
        return 2
    fractions = _floats(args.answer_fractions, "answer-fractions")
    if max(fractions) > 1:
        print("nercc plan: --answer-fractions are M / N, at most 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = search(args.slo_p99_ms, args.min_relacc, args.straggler, args.max_compute, args.rate,
                     _ints(args.workers, "workers"), _ints(args.overheads, "overheads"), fractions,
                     _floats(args.deadlines_ms, "deadlines-ms"), args.batches, args.scheme, args.model,
                     args.calibration, args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"nercc plan: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    print(f"plan: p99 <= {args.slo_p99_ms:g} ms, RelAcc >= {args.min_relacc:g}, {args.straggler}, "
          f"{args.rate:g} batches/s" + (f", compute <= {args.max_compute:g}" if args.max_compute else ""))
    print(HEADER)
    if out["coded"]:
        print(f"cheapest coded settings that meet the SLO ({len(out['coded'])} of the grid do):")
        for r in out["coded"][: args.top]:
            print(_fmt_row(r))
    else:
        print("no coded setting on the grid meets the SLO and the RelAcc floor; the closest (lowest p99):")
        if out["nearest_coded"]:
            print(_fmt_row(out["nearest_coded"]))
    print("best baselines (lowest compute that meets the p99 SLO; else the lowest p99, marked MISSES):")
    for r in out["best_baselines"].values():
        print(_fmt_row(r) + ("" if r["meets_slo"] else "   MISSES SLO"))
    for note in out["skipped"]:
        print(f"  skipped {note}")
    print(f"({out['evaluated']} settings simulated, {args.batches} batches each, in {seconds:.1f} s)")
    return 0
