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

from nercc.coding.registry import (
    BACC_NAME,
    BASELINE_SCHEMES,
    CODED_SCHEMES,
    HEDGED,
    NERCC_NAME,
    NERCC_SYS_NAME,
    REPLICATION,
    UNCODED,
)
from nercc.paths import display_path
from nercc.simulate import fast
from nercc.simulate.core import summarize
from nercc.simulate.model import AccuracyTable, CodingCost, ServiceModel, SimSettings, make_draws

#: Every scheme, in the registry's order (the sweeps run them in this order).
COLORS = {UNCODED: "#7f7f7f", REPLICATION: "#1f77b4", HEDGED: "#9467bd", BACC_NAME: "#ff7f0e", NERCC_NAME: "#d62728",
          NERCC_SYS_NAME: "#2ca02c"}


def _sim(scheme: str, n: int, k: int, straggler: str, rate: float, batches: int, service, cost, accuracy,
         policy: str = "deadline", deadline_ms: float = 30.0, hedge_ms=None, seed: int = 0) -> Dict:
    st = SimSettings(scheme, n, k, straggler, rate=rate, n_batches=batches, policy=policy,
                     deadline_ms=deadline_ms, hedge_ms=hedge_ms, seed=seed)
    draws = make_draws(st, service, cost)
    return summarize(st, fast.run(st, draws), draws, accuracy)


def straggler_rate_sweep(service, cost, rates=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4), n=100, k=20,
                         load=10.0, batches=20_000, policy="first:60", deadline_ms=25.0) -> Dict:
    acc = AccuracyTable.find("lenet5", n, k)
    out: Dict[str, List] = {s: [] for s in COLORS}
    for p in rates:
        prof = f"bimodal:p={p:g},slow_ms=40"
        for scheme in COLORS:
            out[scheme].append(_sim(scheme, n, k, prof, load, batches, service, cost, acc if scheme in CODED_SCHEMES
                                else None, policy=policy, deadline_ms=deadline_ms))
    return {"p": list(rates), "N": n, "K": k, "rate": load, "policy": policy, "deadline_ms": deadline_ms,
            "schemes": out}


def workers_sweep(service, cost, ns=(15, 25, 50, 100, 200, 500, 1000), overhead=5, ps=(0.1, 0.3), load=10.0,
                  batches=10_000, answer_fraction=0.6, deadline_ms=25.0) -> Dict:
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
                                         acc if scheme in CODED_SCHEMES else None, policy=f"first:{m}",
                                         deadline_ms=deadline_ms))
        out[f"{p:g}"] = rows
    return {"N": list(ns), "overhead": overhead, "rate": load, "answer_fraction": answer_fraction,
            "deadline_ms": deadline_ms, "by_p": out}


def frontier(service, cost, n=100, k=20, p=0.3, load=10.0, batches=20_000,
             fractions=(0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7), deadlines=(15.0, 20.0, 25.0, 30.0, 50.0)) -> Dict:
    prof = f"bimodal:p={p:g},slow_ms=40"
    acc = AccuracyTable.find("lenet5", n, k)
    points = {NERCC_NAME: [], BACC_NAME: []}
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
    for scheme in BASELINE_SCHEMES:
        base[scheme] = _sim(scheme, n, k, prof, load, batches, service, cost, None)
    base[f"{HEDGED} (hedge at p50)"] = _sim(HEDGED, n, k, prof, load, batches, service, cost, None,
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
        if scheme in CODED_SCHEMES:
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
    parser.add_argument("--readme-only", action="store_true",
                        help="only rewrite README.md and the validation figures from the JSON files")
    args = parser.parse_args(argv)
    if args.readme_only:  # also the validation figures: they only read the committed runs
        for tag, _, val in validation_runs(Path(args.out)):
            plot_validation(Path(args.out), tag, val)
        print(f"wrote {write_readme(Path(args.out))}")
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    service = ServiceModel.load(args.calibration)
    cost = CodingCost()
    t0 = time.perf_counter()
    for n in (15, 25, 50, 100, 200, 500, 1000):  # time the coding first, before the big runs (see cli.py)
        for scheme in (NERCC_NAME, BACC_NAME, NERCC_SYS_NAME):
            cost.measure(scheme, n, n // 5)
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m nercc.simulate.figures " + " ".join(argv if argv is not None else []),
        "calibration": display_path(service.source),
        "straggler_rate": straggler_rate_sweep(service, cost, batches=args.batches),
        "workers": workers_sweep(service, cost, batches=max(2000, args.batches // 2)),
        "frontier": frontier(service, cost, batches=args.batches),
    }
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["figures"] = plot(results, out_dir) + [plot_validation(out_dir, tag, val)
                                                   for tag, _, val in validation_runs(out_dir)]
    with open(out_dir / "scale_results.json", "w") as fh:
        json.dump(results, fh, indent=1)
    write_readme(out_dir)
    print(f"wrote {', '.join(results['figures'])}, scale_results.json and README.md to {out_dir} "
          f"({results['seconds']} s)")
    return 0



# ------------------------------------------------------------------------------------------------ README


def _cell(v, fmt="{:.1f}"):
    return "fail" if v is None else fmt.format(v)


def write_readme(out_dir: Path) -> Path:
    """bench/results/scale/README.md from the JSON files in the folder (no number typed by hand)."""
    out_dir = Path(out_dir)
    lines = ["# Scale: the calibrated simulator's results (`nercc simulate`, `nercc plan`)", "",
             "Everything here is regenerated by the commands listed with each part; how the simulator works and "
             "what it assumes: [docs/simulate.md](../../../docs/simulate.md).", ""]
    lines += _readme_validation(out_dir) + _readme_headline(out_dir) + _readme_figures(out_dir)
    plan_path = out_dir / "plan_example.txt"
    if plan_path.exists():
        lines += ["## `nercc plan` example", "", "```", plan_path.read_text().rstrip(), "```", ""]
    lines += FILES_TABLE
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _summary(out_dir: Path, folder: str):
    """The summary.json in ``out_dir / folder``, or None when that run is not in the folder."""
    path = out_dir / folder / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _command_block(summary: dict) -> list:
    return ["```", summary.get("command") or "", "```"]


def validation_runs(out_dir: Path) -> List[tuple]:
    """(tag, real summary, validation summary) for every ``validation_<tag>/`` beside its ``real_<tag>/``, by N."""
    runs = []
    for folder in Path(out_dir).glob("validation_N*_K*"):
        tag = folder.name[len("validation_"):]
        val, meas = _summary(out_dir, folder.name), _summary(out_dir, f"real_{tag}")
        if val is not None and meas is not None and "validation" in val:
            runs.append((tag, meas, val))
    return sorted(runs, key=lambda run: (run[2]["settings"]["n_workers"], run[2]["settings"]["n_inputs"]))


def plot_validation(out_dir: Path, tag: str, val: dict) -> str:
    """Tail plot of one validation: the real run's per-batch latencies (1 - CDF, from ``real_<tag>/raw``) as
    lines, the simulated percentiles as markers, one colour per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nercc.simulate.core import PERCENTILES

    sim = next(iter(val["profiles"].values()))["schemes"]
    st = val["settings"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for scheme, row in sim.items():
        raw_path = Path(out_dir) / f"real_{tag}" / "raw" / f"measured_{scheme}.json"
        color = COLORS.get(scheme, "k")
        if raw_path.exists():
            lat = np.sort(np.asarray(json.loads(raw_path.read_text())["total_ms"], dtype=float))
            tail = 1.0 - np.arange(len(lat)) / len(lat)
            ax.step(lat, tail, where="post", color=color, label=f"{scheme} real ({len(lat)} batches)")
        qs = [(q, row.get(name)) for name, q in PERCENTILES if row.get(name) is not None]
        ax.plot([v for _, v in qs], [1.0 - q / 100.0 for q, _ in qs], "o", color=color, markeredgecolor="k",
                label=f"{scheme} simulated")
    ax.set_yscale("log")
    ax.set_xlabel("end-to-end latency per batch (ms)")
    ax.set_ylabel("fraction of batches slower (1 - CDF)")
    ax.set_title(f"real vs simulated, N={st['n_workers']}, K={st['n_inputs']}, "
                 f"{st['offered_batches_per_s']:g} batches/s, coded {st['coded_policy']}, "
                 f"deadline {st['deadline_ms']:g} ms", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    name = f"fig_validation_{tag}.png"
    fig.savefig(Path(out_dir) / name, dpi=120)
    plt.close(fig)
    return name


def _readme_validation(out_dir: Path) -> list:
    lines = []
    for tag, meas, val in validation_runs(out_dir):
        st = val["settings"]
        n_real = meas["settings"]["batches"]
        lines += [f"## Validation against the real {st['n_workers']}-worker cluster", "",
                  f"Real run (`real_{tag}/`, {meas['settings']['seconds']:.0f} s, run alone (tools/exclusive)): "
                  f"LocalCluster, LeNet5, N = {st['n_workers']}, K = {st['n_inputs']}, "
                  f"`{val['profiles'][next(iter(val['profiles']))]['straggler']}`, open-loop Poisson "
                  f"{st['offered_batches_per_s']:g} batches/s through `CodedClient`, coded `{st['coded_policy']}`, "
                  f"deadline {st['deadline_ms']:g} ms, {n_real} batches per scheme; "
                  "calibration from the same machine with no stragglers (policy `all`), each scheme right before "
                  "its measured run:",
                  *_command_block(meas),
                  *([f"(Recorded before `--measure-batches` existed, when `--measure` took `--batches`: today "
                     f"the same run is `--measure-batches {n_real}`.)"]
                    if " --batches " in (meas.get("command") or "") else []),
                  f"Simulation ({st['batches']} batches per scheme, calibrated from `real_{tag}/calibration.json`):",
                  *_command_block(val), "",
                  "| scheme | p50 sim / real (err) | p99 sim / real (err) | p99.9 sim / real (err) | "
                  "RelAcc sim / real |",
                  "|---|---|---|---|---|"]
        for scheme, row in val["validation"]["schemes"].items():
            cells = []
            for key in ("p50_ms", "p99_ms", "p99.9_ms"):
                c = row[key]
                err = "n/a" if c["rel_error"] is None else f"{c['rel_error']:+.0%}"
                cells.append(f"{_cell(c['simulated'])} / {_cell(c['measured'])} ({err})")
            ra = row["rel_acc"]
            cells.append(f"{_cell(ra['simulated'], '{:.3f}')} / {_cell(ra['measured'], '{:.3f}')}")
            lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
        worst = val["validation"]["max_abs_rel_error_p50_p99"]
        lines += ["", f"Largest error on p50 and p99: {worst:.0%} (target <= 20%: "
                  f"{'met' if worst <= 0.20 else 'NOT met'}). The real p99.9 rests on ~{max(1, n_real // 1000)} "
                  f"batch(es) in {n_real} per scheme, so its error is mostly the measurement's.", ""]
        if (Path(out_dir) / f"fig_validation_{tag}.png").exists():
            lines += [f"![real vs simulated, {tag}](fig_validation_{tag}.png)", "",
                      "Lines: the real run's batches (1 - CDF); dots: the simulated p50, p90, p95, p99, p99.9.", ""]
        note = Path(out_dir) / f"real_{tag}" / "NOTES.md"
        if note.exists():
            lines += [note.read_text().rstrip(), ""]
    return lines


def _readme_headline(out_dir: Path) -> list:
    head = _summary(out_dir, "N100_K20_p0.3")
    if head is None:
        return []
    st = head["settings"]
    rows = next(iter(head["profiles"].values()))["schemes"]
    lines = ["## N = 100, K = 20, bimodal p = 0.3 (+40 ms)", "",
             f"{st['batches']} batches per scheme at {st['offered_batches_per_s']:g} batches/s, coded "
             f"`{st['coded_policy']}`, deadline {st['deadline_ms']:g} ms, replication r = "
             f"{st['replication_copies']}, hedged at the p95 of one request (wall time of this run, five schemes: "
             f"{st['seconds']:.1f} s on the shared machine; the speed measured alone is in docs/simulate.md):",
             *_command_block(head), "",
             "| scheme | p50 ms | p99 ms | p99.9 ms | RelAcc (mean) | RelAcc (worst 1%) | compute / input |",
             "|---|---|---|---|---|---|---|"]
    for scheme, r in rows.items():
        lines.append(f"| {scheme} | {_cell(r['p50_ms'])} | {_cell(r['p99_ms'])} | {_cell(r['p99.9_ms'])} | "
                     f"{_cell(r.get('rel_acc'), '{:.4f}')} | "
                     f"{'exact' if r.get('rel_acc_p1') is None else format(r['rel_acc_p1'], '.3f')} | "
                     f"{r['measured_compute_per_input']:.2f} |")
    n, rep, hed = rows.get(NERCC_NAME), rows.get(REPLICATION), rows.get(HEDGED)
    if n and rep and hed and None not in (n["p99.9_ms"], rep["p99.9_ms"], hed["p99.9_ms"]):
        ratio = n["p99.9_ms"] / rep["p99.9_ms"]
        ok = ratio <= 0.5 and n["rel_acc"] >= 0.96 and n["p99.9_ms"] < hed["p99.9_ms"]
        lines += ["", f"NeRCC p99.9 = {ratio:.2f}x replication's at mean RelAcc {n['rel_acc']:.4f}, "
                  f"{n['p99.9_ms'] / hed['p99.9_ms']:.2f}x hedged's (target <= 0.5x at RelAcc >= 0.96 and "
                  f"below hedged: {'met' if ok else 'NOT met'}).", ""]
    ns = rows.get(NERCC_SYS_NAME)
    if ns and rep and None not in (ns["p99.9_ms"], rep["p99.9_ms"]) and ns.get("rel_acc") is not None:
        ratio = ns["p99.9_ms"] / rep["p99.9_ms"]
        ok = ratio <= 0.5 and ns["rel_acc"] >= 0.99
        lines += [f"NeRCC-sys (`{ns['policy']}`; predictions of inputs whose own worker answered are exact) "
                  f"p99.9 = {ratio:.2f}x replication's at mean RelAcc {ns['rel_acc']:.4f}, "
                  f"exact batches {ns.get('exact_batches', 0):.1%} (target <= 0.5x at RelAcc >= 0.99: "
                  f"{'met' if ok else 'NOT met'}).", ""]
    return lines


def _readme_figures(out_dir: Path) -> list:
    lines = []
    res_path = out_dir / "scale_results.json"
    if res_path.exists():
        res = json.load(open(res_path))
        sw = res["straggler_rate"]
        lines += ["## Figures", "", "```", "python -m nercc.simulate.figures --out bench/results/scale", "```",
                  f"({res['seconds']:.0f} s.) Numbers in `scale_results.json`.", "",
                  "![p99.9 vs straggler rate](fig_p999_vs_straggler_rate.png)", "",
                  f"p99.9 (ms) vs straggler rate at N = {sw['N']}, K = {sw['K']}, {sw['rate']:g} batches/s, coded "
                  f"`{sw['policy']}`, deadline {sw['deadline_ms']:g} ms:", "",
                  "| p | " + " | ".join(sw["schemes"]) + " | NeRCC RelAcc | NeRCC-sys RelAcc |",
                  "|---|" + "---|" * (len(sw["schemes"]) + 2)]
        for i, p in enumerate(sw["p"]):
            sys_rel = sw["schemes"].get(NERCC_SYS_NAME, [{}] * (i + 1))[i].get("rel_acc")
            lines.append(f"| {p:g} | " + " | ".join(_cell(sw["schemes"][s][i]["p99.9_ms"]) for s in sw["schemes"])
                         + f" | {sw['schemes']['nercc'][i]['rel_acc']:.4f} | {_cell(sys_rel, '{:.4f}')} |")
        ws = res["workers"]
        lines += ["", "![p99.9 vs N](fig_p999_vs_workers.png)", "",
                  f"p99.9 (ms) vs N at N / K = {ws['overhead']}, coded first:{ws['answer_fraction']:g}N, deadline "
                  f"{ws['deadline_ms']:g} ms (RelAcc in brackets; NeRCC-sys needs an accuracy table with systematic "
                  "columns, committed at N = 100 only):", ""]
        for p, rows in ws["by_p"].items():
            lines += [f"bimodal p = {p}:", "", "| N | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
            for i, n in enumerate(ws["N"]):
                cells = [_cell(rows[s][i]["p99.9_ms"]) for s in rows]
                for j, s in enumerate(rows):
                    if s in CODED_SCHEMES and s != BACC_NAME and rows[s][i].get("rel_acc") is not None:
                        cells[j] += f" ({rows[s][i]['rel_acc']:.3f})"
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["![frontier](fig_frontier_N100.png)", "",
                  "The accuracy-latency frontier at N = 100, K = 20, p = 0.3: each dot is one (first:M, deadline); "
                  "the stars are the baselines (RelAcc 1, exact).", ""]
    return lines


FILES_TABLE = [
    "## Files", "", "| file | what |", "|---|---|",
    "| `calibration.json` | the calibration the simulator uses by default (copy of `real_N12_K4/calibration.json`) |",
    "| `real_N12_K4/`, `real_N48_K12/` | the real runs: `summary.json` (measured), `calibration.json`, `raw/` "
    "per-batch logs |",
    "| `validation_N12_K4/`, `validation_N48_K12/` | `summary.json`: the simulation of each real run, with "
    "`validation`; `fig_validation_*.png` its tail plot |",
    "| `N100_K20_p0.3/summary.json` | the headline simulation |",
    "| `accuracy/` | LeNet5 RelAcc tables at more (N, K), `nercc bench accuracy ... --no-tune --out "
    "bench/results/scale/accuracy` (commands inside each JSON) |",
    "| `scale_results.json`, `fig_*.png` | the figures' numbers and plots |", "",
]


if __name__ == "__main__":
    raise SystemExit(main())
