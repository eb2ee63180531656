"""Systematic codes offline: per-input scores (exact vs recovered) and the parity-point geometry comparison.

`nercc bench geometry` answers "which N - K parity points beside the K alphas?": for every (K, N) and every
geometry of :func:`nercc.coding.points.systematic_points` that exists there, systematic NeRCC is tuned jointly
(lam_enc, lam_dec) on held-out inputs at every straggler count S (:func:`nercc.coding.tune`,
``scheme="nercc-sys"``; serving picks lam_dec per number of answers the same way), then scored on the evaluation inputs: S stragglers drawn uniformly among the N workers
per trial, the same trials and arrived sets for every geometry and for plain NeRCC (tuned the same way).

Scores (:func:`systematic_scores`): the **recovered-input MSE**, pooled over every (trial, input) whose own
systematic worker straggled, ``sum ||f(x_k) - y_hat_k||^2 / count``; the RelAcc of those recovered inputs
(accuracy on them / the base model's accuracy on all evaluation inputs); and whole-batch MSE and RelAcc (every
input, exact ones included). Plain NeRCC's per-input MSE at the same S is the reference for "the geometry must
not make the regression worse".
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nercc import tables
from nercc.bench.experiment import (
    RESULTS_DIR,
    Trials,
    command_line,
    default_batch_size,
    exit_code_of,
    load_inputs,
    parse_int_list,
    straggler_sets,
)
from nercc.coding import SYSTEMATIC_GEOMETRIES, CodingScheme, make_scheme, systematic_points
from nercc.coding.points import _parse_geometry
from nercc.coding.registry import NERCC_NAME, NERCC_SYS_NAME

#: (K, N) compared by default: N = 12 workers at 3x, 2x and 1.5x redundancy
DEFAULT_SIZES = "4x12,6x12,8x12"
DEFAULT_TRIALS = 500


def systematic_scores(scheme: CodingScheme, trials: Trials, arrived: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-trial scores of ``scheme`` with trial t decoded from ``arrived[t]``.

    Returns arrays of shape (T,): ``sq_err_recovered`` (sum over recovered inputs of ||f(x_k) - y_hat_k||^2),
    ``n_recovered``, ``correct_recovered`` (recovered inputs whose argmax matches the label), ``mse`` (whole
    batch, mean over the K inputs), ``correct`` (whole batch, label matches) and ``agree`` (top-1 equals f's).
    For a plain scheme every input counts as recovered.
    """
    outputs = trials.worker_outputs(scheme)
    T, K = trials.n_trials, trials.n_inputs
    out = {name: np.zeros(T) for name in ("sq_err_recovered", "n_recovered", "correct_recovered", "mse", "correct",
                                          "agree")}
    for t in range(T):
        arr = arrived[t]
        y_hat = scheme.decode(outputs[t, arr], arr)
        err = np.sum((y_hat - trials.base[t]) ** 2, axis=1)  # (K,)
        rec = scheme.recovered(arr)
        top1 = y_hat.argmax(-1)
        right = top1 == trials.labels[t] if trials.labels is not None else np.zeros(K, dtype=bool)
        out["sq_err_recovered"][t] = err[rec].sum()
        out["n_recovered"][t] = rec.sum()
        out["correct_recovered"][t] = right[rec].sum()
        out["mse"][t] = err.mean()
        out["correct"][t] = right.sum()
        out["agree"][t] = np.mean(top1 == trials.base_top1[t])
    return out


def summarize(scores: Dict[str, np.ndarray], n_inputs: int, base_acc: float) -> dict:
    """Pooled recovered-input MSE / RelAcc and mean whole-batch MSE / RelAcc from :func:`systematic_scores`."""
    n_rec = float(scores["n_recovered"].sum())
    T = len(scores["mse"])
    return {
        "recovered_mse": float(scores["sq_err_recovered"].sum() / n_rec) if n_rec else None,
        "recovered_relacc": float(scores["correct_recovered"].sum() / n_rec / base_acc) if n_rec and base_acc else None,
        "recovered_inputs": int(n_rec),
        "recovered_fraction": n_rec / (T * n_inputs),
        "mse": float(scores["mse"].mean()),
        "relacc": float(scores["correct"].sum() / (T * n_inputs) / base_acc) if base_acc else None,
        "agreement": float(scores["agree"].mean()),
        "exact_batches": float(np.mean(scores["n_recovered"] == 0)),
    }


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """'4x12,6x12' -> [(4, 12), (6, 12)] (K x N)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            k, n = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise ValueError(f"--sizes: expected KxN like 4x12, got {part!r}") from None
        if not 2 <= k < n:
            raise ValueError(f"--sizes: need 2 <= K < N for a systematic code, got {part!r}")
        out.append((k, n))
    if not out:
        raise ValueError("--sizes is empty")
    return out


def geometries_for(n_inputs: int, n_workers: int, names: Sequence[str]) -> List[str]:
    """The geometries among ``names`` that exist at (K, N) (chebyshev1 needs N/K odd; chebyshev2 no collision)."""
    ok = []
    for g in names:
        try:
            systematic_points(n_inputs, n_workers, g)
        except ValueError:
            continue
        ok.append(g)
    return ok


def min_gap(n_inputs: int, n_workers: int, geometry: str) -> float:
    return float(np.diff(systematic_points(n_inputs, n_workers, geometry)[0]).min())


def run_geometry(info, sizes: Sequence[Tuple[int, int]], stragglers: Sequence[int] | None, n_trials: int,
                 geometries: Sequence[str], seed: int, threads: int, progress: bool) -> dict:
    """The comparison (no file I/O): per (K, N), per geometry and plain NeRCC, tuned lams and scores per S."""
    from nercc.bench.tune import tune_setting
    from nercc.models import OnnxModel

    f = OnnxModel(info, threads=threads)
    out: Dict[str, dict] = {}
    for K, N in sizes:
        counts = list(stragglers) if stragglers else list(range(1, N - K + 1))
        counts = [s for s in counts if 0 < s <= N - K]
        inputs = load_inputs(info, "eval", n_trials * K, seed)
        trials = Trials.draw(f, inputs, K, n_trials, seed, default_batch_size(info.input_dim), progress)
        base_acc = float(np.mean(trials.base_top1 == trials.labels))
        block = {"stragglers": counts, "base_accuracy": base_acc, "variants": {}}
        variants = [(NERCC_NAME, None)] + [(NERCC_SYS_NAME, g) for g in geometries_for(K, N, geometries)]
        for scheme_name, geometry in variants:
            label = "plain" if geometry is None else geometry
            row = {"scheme": scheme_name, "geometry": geometry, "by_s": {}}
            if geometry is not None:
                row["min_gap"] = min_gap(K, N, geometry)
            for s in counts:  # (lam_enc, lam_dec) tuned per S on held-out inputs, as the profile does
                entry = tune_setting(info, K, N, s, seed=seed, threads=threads, progress=False, by_arrived=False,
                                     scheme=scheme_name, geometry=geometry)
                scheme = make_scheme(scheme_name, K, N, entry["lam_enc"], entry["lam_dec"],
                                     **({"geometry": geometry} if geometry else {}))
                scores = systematic_scores(scheme, trials, straggler_sets(N, s, n_trials, seed))
                row["by_s"][str(s)] = {**summarize(scores, K, base_acc), "lam_enc": entry["lam_enc"],
                                       "lam_dec": entry["lam_dec"]}
            block["variants"][label] = row
        out[f"{K}x{N}"] = block
    return out


def format_geometry_table(report: dict) -> str:
    """One line per (K x N, S): recovered-input MSE of each geometry / plain NeRCC's per-input MSE, RelAcc."""
    lines = []
    for size, block in report["results"].items():
        labels = list(block["variants"])
        geos = [g for g in labels if g != "plain"]
        header = (["S"] + [f"{g} rec MSE" for g in geos] + ["plain MSE"] + [f"{g} rec/plain" for g in geos]
                  + [f"{g} batch RelAcc" for g in geos] + ["plain RelAcc"])
        rows = []
        for s in map(str, block["stragglers"]):
            plain = block["variants"]["plain"]["by_s"][s]
            rec = [block["variants"][g]["by_s"][s] for g in geos]
            rows.append([s] + [f"{r['recovered_mse']:.4f}" if r["recovered_mse"] is not None else "-" for r in rec]
                        + [f"{plain['mse']:.4f}"]
                        + [f"{r['recovered_mse'] / plain['mse']:.2f}" if r["recovered_mse"] else "-" for r in rec]
                        + [f"{r['relacc']:.4f}" for r in rec] + [f"{plain['relacc']:.4f}"])
        lines.append(f"K x N = {size} ({report['model']}, {report['trials']} trials; lams tuned per S on held-out "
                     "inputs)")
        lines.append(tables.format_table(rows, header))
    return "\n".join(lines)


def configure(parser) -> None:
    parser.add_argument("--model", default="lenet5", help="model name in model_repository/")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="K x N settings, comma-separated")
    parser.add_argument("--stragglers", "-S", default=None,
                        help="straggler counts (default 1..N-K per size); lams are tuned at each")
    parser.add_argument("--trials", "-T", type=int, default=DEFAULT_TRIALS, help="evaluation trials per size")
    parser.add_argument("--geometries", default=",".join(SYSTEMATIC_GEOMETRIES),
                        help="comma-separated; one that does not exist at a size is skipped there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for geometry_<model>.json")
    parser.add_argument("--quiet", action="store_true")


def main(args) -> int:
    return exit_code_of("nercc bench geometry", lambda: _main(args))


def _main(args) -> int:
    from nercc.models import load_model_info

    sizes = parse_sizes(args.sizes)
    stragglers = parse_int_list(args.stragglers) if args.stragglers else None
    geometries = [g.strip() for g in args.geometries.split(",") if g.strip()]
    for g in geometries:
        _parse_geometry(g)  # a ValueError naming the choices
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    info = load_model_info(args.model)
    started = time.perf_counter()
    results = run_geometry(info, sizes, stragglers, args.trials, geometries, args.seed, args.threads,
                           not args.quiet)
    argv = ["bench", "geometry", "--model", info.name, "--sizes", args.sizes, "--trials", args.trials,
            "--geometries", ",".join(geometries), "--seed", args.seed]
    if args.stragglers:
        argv += ["--stragglers", args.stragglers]
    report = {"model": info.name, "trials": args.trials, "seed": args.seed, "command": command_line(argv),
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "metrics": {"recovered_mse": "pooled over (trial, input) whose systematic worker straggled",
                          "mse": "whole batch, mean over K inputs and trials (plain: every input recovered)",
                          "relacc": "whole-batch accuracy / base accuracy"},
              "results": results, "seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"geometry_{info.name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_geometry_table(report))
    print(f"wrote {path} ({report['seconds']} s)")
    return 0
