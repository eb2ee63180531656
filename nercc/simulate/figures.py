"""Scale figures and tables from the simulator: ``python -m nercc.simulate.figures --out bench/results/scale``.

1. ``fig_p999_vs_straggler_rate.png``: p99.9 (and RelAcc) vs bimodal straggler rate p = 0.05 .. 0.4 per scheme at
   N = 100, K = 20.
2. ``fig_p999_vs_workers.png``: p99.9 vs N = 15 .. 1000 at N / K = 5, for p = 0.1 and 0.3.
3. ``fig_frontier_N100.png``: the accuracy-latency frontier at N = 100, K = 20, p = 0.3 (first:M and deadline
   swept for NeRCC and BACC; uncoded, replication and hedged as points).
Every number also goes to ``scale_results.json``; the commands are in the folder's README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from nercc.simulate import fast
from nercc.simulate.core import summarize
from nercc.simulate.model import AccuracyTable, CodingCost, ServiceModel, SimSettings, make_draws

COLORS = {"uncoded": "#7f7f7f", "replication": "#1f77b4", "hedged": "#9467bd", "bacc": "#ff7f0e",
          "nercc": "#d62728"}


def _sim(scheme: str, n: int, k: int, straggler: str, rate: float, batches: int, service, cost, accuracy,
         policy: str = "deadline", deadline_ms: float = 30.0, hedge_ms=None, seed: int = 0) -> Dict:
    st = SimSettings(scheme, n, k, straggler, rate=rate, n_batches=batches, policy=policy,
                     deadline_ms=deadline_ms, hedge_ms=hedge_ms, seed=seed)
    draws = make_draws(st, service, cost)
    return summarize(st, fast.run(st, draws), draws, accuracy)


def straggler_rate_sweep(service, cost, rates=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4), n=100, k=20,
                         load=10.0, batches=20_000, policy="first:55", deadline_ms=25.0) -> Dict:
    acc = AccuracyTable.find("lenet5", n, k)
    out: Dict[str, List] = {s: [] for s in COLORS}
    for p in rates:
        prof = f"bimodal:p={p:g},slow_ms=40"
        for scheme in COLORS:
            out[scheme].append(_sim(scheme, n, k, prof, load, batches, service, cost, acc if scheme in (
                "nercc", "bacc") else None, policy=policy, deadline_ms=deadline_ms))
    return {"p": list(rates), "N": n, "K": k, "rate": load, "policy": policy, "deadline_ms": deadline_ms,
            "schemes": out}


def workers_sweep(service, cost, ns=(15, 25, 50, 100, 200, 500, 1000), overhead=5, ps=(0.1, 0.3), load=10.0,
                  batches=10_000, answer_fraction=0.55, deadline_ms=25.0) -> Dict:
    out = {}
    for p in ps:
        prof = f"bimodal:p={p:g},slow_ms=40"
        rows = {s: [] for s in COLORS}
        for n in ns:
            k = n // overhead
            acc = AccuracyTable.find("lenet5", n, k)
            m = max(k, int(round(answer_fraction * n)))
            for scheme in COLORS:
                rows[scheme].append(_sim(scheme, n, k, prof, load, batches, service, cost,
                                         acc if scheme in ("nercc", "bacc") else None, policy=f"first:{m}",
                                         deadline_ms=deadline_ms))
        out[f"{p:g}"] = rows
    return {"N": list(ns), "overhead": overhead, "rate": load, "answer_fraction": answer_fraction,
            "deadline_ms": deadline_ms, "by_p": out}


def frontier(service, cost, n=100, k=20, p=0.3, load=10.0, batches=20_000,
             fractions=(0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7), deadlines=(15.0, 20.0, 25.0, 30.0, 50.0)) -> Dict:
    prof = f"bimodal:p={p:g},slow_ms=40"
    acc = AccuracyTable.find("lenet5", n, k)
    points = {"nercc": [], "bacc": []}
    for scheme in points:
        st0 = SimSettings(scheme, n, k, prof, rate=load, n_batches=batches, policy="all")
        draws = make_draws(st0, service, cost)
        answers = fast.worker_answers(st0, draws)
        srt = np.sort(answers[1], axis=1)
        for f in fractions:
            for dl in deadlines:
                st = dataclasses.replace(st0, policy=f"first:{int(round(f * n))}", deadline_ms=dl)
                res = fast.client_decisions(st, draws, *answers, sorted_answer=srt)
                row = summarize(st, res, draws, acc)
                points[scheme].append({"M": int(round(f * n)), "deadline_ms": dl, **row})
    base = {}
    for scheme in ("uncoded", "replication", "hedged"):
        base[scheme] = _sim(scheme, n, k, prof, load, batches, service, cost, None)
    base["hedged (hedge at p50)"] = _sim("hedged", n, k, prof, load, batches, service, cost, None,
                                        hedge_ms=service.one_request_quantile(0.5))
    return {"N": n, "K": k, "p": p, "rate": load, "coded": points, "baselines": base}


def _p(row, key="p99.9_ms"):
    v = row.get(key)
    return np.nan if v is None else v


def plot(results: Dict, out_dir: Path) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    sw = results["straggler_rate"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for scheme, rows in sw["schemes"].items():
        ax.plot(sw["p"], [_p(r) for r in rows], "o-", color=COLORS[scheme], label=scheme)
        if scheme in ("nercc", "bacc"):
            ax2.plot(sw["p"], [r["rel_acc"] for r in rows], "o-", color=COLORS[scheme], label=scheme)
    ax.set_xlabel("straggler rate p (bimodal, +40 ms)")
    ax.set_ylabel("p99.9 latency (ms)")
    ax.set_title(f"N={sw['N']}, K={sw['K']}, {sw['rate']:g} batches/s, coded {sw['policy']} "
                 f"deadline {sw['deadline_ms']:g} ms", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax2.set_xlabel("straggler rate p")
    ax2.set_ylabel("mean expected RelAcc (coded)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "fig_p999_vs_straggler_rate.png", dpi=120)
    plt.close(fig)
    files.append("fig_p999_vs_straggler_rate.png")

    ws = results["workers"]
    fig, axes = plt.subplots(1, len(ws["by_p"]), figsize=(11, 4.2), sharey=True)
    for ax, (p, rows) in zip(np.atleast_1d(axes), ws["by_p"].items()):
        for scheme, rr in rows.items():
            ax.plot(ws["N"], [_p(r) for r in rr], "o-", color=COLORS[scheme], label=scheme)
        ax.set_xscale("log")
        ax.set_xlabel(f"N workers (K = N/{ws['overhead']})")
        ax.set_title(f"bimodal p={p}, +40 ms; coded first:{ws['answer_fraction']:g}N, "
                     f"deadline {ws['deadline_ms']:g} ms", fontsize=9)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("p99.9 latency (ms)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "fig_p999_vs_workers.png", dpi=120)
    plt.close(fig)
    files.append("fig_p999_vs_workers.png")

    fr = results["frontier"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key in zip(axes, ("p99_ms", "p99.9_ms")):
        for scheme, pts in fr["coded"].items():
            ax.scatter([q["rel_acc"] for q in pts], [_p(q, key) for q in pts], s=14, color=COLORS[scheme],
                       label=f"{scheme} (first:M, deadline swept)", alpha=0.7)
        for name, row in fr["baselines"].items():
            color = COLORS.get(name.split()[0], "k")
            ax.scatter([1.0], [_p(row, key)], marker="*", s=140, color=color, edgecolor="k", label=name)
        ax.set_xlabel("mean expected RelAcc")
        ax.set_ylabel(key.replace("_ms", "") + " latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"accuracy-latency frontier, N={fr['N']}, K={fr['K']}, bimodal p={fr['p']} +40 ms, "
                 f"{fr['rate']:g} batches/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "fig_frontier_N100.png", dpi=120)
    plt.close(fig)
    files.append("fig_frontier_N100.png")
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nercc.simulate.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/scale")
    parser.add_argument("--calibration", default=None)
    parser.add_argument("--batches", type=int, default=20_000)
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    service = ServiceModel.load(args.calibration)
    cost = CodingCost()
    t0 = time.perf_counter()
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m nercc.simulate.figures " + " ".join(argv if argv is not None else []),
        "calibration": service.source,
        "straggler_rate": straggler_rate_sweep(service, cost, batches=args.batches),
        "workers": workers_sweep(service, cost, batches=max(2000, args.batches // 2)),
        "frontier": frontier(service, cost, batches=args.batches),
    }
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["figures"] = plot(results, out_dir)
    with open(out_dir / "scale_results.json", "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"wrote {', '.join(results['figures'])} and scale_results.json to {out_dir} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
