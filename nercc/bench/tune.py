"""Jointly tune NeRCC's (lam_enc, lam_dec) for a model and write them to its tuning profile.

`nercc tune --model M --workers N --inputs K --stragglers S` searches (lam_enc, lam_dec) on a log grid plus
lam = 0, then refines around the best pair, scoring the mean MSE over random trials (K held-out inputs each,
a uniformly random set of N - S arrived workers). Held-out means: the training split for MNIST and CIFAR-10,
the odd-indexed ImageNet sample images for the ImageNet models; `nercc bench accuracy` evaluates on the test
split (even-indexed ImageNet samples), so tuning never sees an evaluation input.

It also fits lam_dec per number of arrived workers |F| (the ``lam_dec_by_arrived`` table of the profile
entry) and keeps the table only if it lowers MSE on a separate validation draw where |F| varies around N - S.
The entry is written with ``nercc.profiles.save_entry`` to ``model_repository/<model>/tuning.json``, which the
Triton encoder and the client read through ``nercc.profiles.lookup``.

f is evaluated once per lam_enc on all trials (every lam_dec reuses those outputs) and each decoding matrix
once per (lam_dec, arrived set) (every lam_enc reuses it), so the search costs a few f passes.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from nercc.bench.experiment import (
    RESULTS_DIR,
    BatchedModel,
    Trials,
    command_line,
    default_batch_size,
    exit_code_of,
    load_inputs,
    parse_int_list,
    straggler_sets,
    trial_batches,
)
from nercc.coding import (
    BACC,
    CodedSetting,
    NeRCC,
    coded_outputs,
    evaluate,
    make_scheme,
    refinement_grid,
)
from nercc.coding.registry import NERCC_SYS_NAME

#: The schemes `nercc tune` tunes (those with smoothing parameters)
TUNABLE_SCHEMES = (NeRCC.name, NERCC_SYS_NAME)

#: Default search grids: lam = 0 plus log-spaced values (see parse_lam_grid for the syntax).
DEFAULT_ENC_GRID = "0,1e-9:1e-3:1"
DEFAULT_DEC_GRID = "0,1e-9:1e0:1"
#: The lam_dec-per-|F| table is kept only when it lowers the check MSE by more than this fraction.
KEEP_TABLE_GAIN = 0.005
#: Refinement around the coarse optimum: this many points per decade, one decade either side.
REFINE_PER_DECADE = 4

#: Calibration batches of K held-out inputs per setting, by model (f runs on N coded inputs per batch per lam_enc).
DEFAULT_TUNE_TRIALS = {"lenet5": 60, "repvgg_cifar10": 24, "efficientnet_lite0": 8, "vit_b16": 2}
#: Random arrived sets per setting; every calibration batch is decoded with every set (decoding is cheap).
DEFAULT_STRAGGLER_SETS = {"lenet5": 40, "repvgg_cifar10": 30, "efficientnet_lite0": 20, "vit_b16": 20}


def parse_lam_grid(text: str) -> List[float]:
    """'0,1e-6,1e-4' and/or 'lo:hi:per_decade' log ranges (hi included), e.g. '0,1e-9:1e-3:2' -> sorted list."""
    values = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if ":" in part:
                lo, hi, per_decade = part.split(":")
                lo, hi, per_decade = float(lo), float(hi), int(per_decade)
                if not (0 < lo <= hi) or per_decade < 1:
                    raise ValueError
                n = int(round(np.log10(hi / lo) * per_decade)) + 1
                values.update(float(f"{v:.6g}") for v in np.logspace(np.log10(lo), np.log10(hi), n))
            else:
                v = float(part)
                if not v >= 0 or not np.isfinite(v):
                    raise ValueError
                values.add(v)
        except ValueError:
            raise ValueError(f"lam grid: expected numbers >= 0 or 'lo:hi:per_decade' with 0 < lo <= hi, "
                             f"got {part!r}") from None
    if not values:
        raise ValueError(f"lam grid {text!r} is empty")
    return sorted(values)


def arrived_range(n_inputs: int, n_workers: int, n_stragglers: int) -> List[int]:
    """|F| values for the lam_dec_by_arrived table: N - S +- max(2, N/10), within [max(2, K), N].

    These are the counts a deadline or first:M client sees around the tuned S; further away the
    client falls back to the joint lam_dec (and another S's entry is usually closer anyway).
    """
    spread = max(2, n_workers // 10)
    keep = n_workers - n_stragglers
    return list(range(max(2, n_inputs, keep - spread), min(n_workers, keep + spread) + 1))


def _mixed_arrived(n_workers: int, counts: Sequence[int], n_trials: int, seed: int) -> List[np.ndarray]:
    """One arrived set per trial, its size drawn uniformly from ``counts``."""
    rng = np.random.default_rng([seed, 5, n_workers])
    sizes = rng.choice(np.asarray(counts), size=n_trials)
    return [np.sort(rng.choice(n_workers, size=int(m), replace=False)) for m in sizes]


def _scheme(scheme: str, geometry, n_inputs: int, n_workers: int, lam_enc: float, lam_dec: float):
    return make_scheme(scheme, n_inputs, n_workers, lam_enc, lam_dec, **({"geometry": geometry} if geometry else {}))


def tune_by_arrived(f, x_batches: np.ndarray, base: np.ndarray, n_workers: int, lam_enc: float, lam_dec: float,
                    counts: Sequence[int], dec_grid: Sequence[float], seed: int, scheme: str = NeRCC.name,
                    geometry: str | None = None) -> dict:
    """lam_dec per |F| at fixed lam_enc, and a check: one lam_dec vs the table on a draw with varying |F|.

    The table is fitted with :func:`nercc.coding.evaluate` on arrived sets of each size (one per batch,
    seed A), over lam_dec one decade either side of the joint optimum; the check decodes other arrived sets
    of a uniformly random size among ``counts`` (seed B) on the same held-out batches, once with the joint
    lam_dec and once as a :class:`nercc.coding.CodedSetting` holding the table.
    """
    n_batches, n_inputs = x_batches.shape[:2]
    outputs = coded_outputs(_scheme(scheme, geometry, n_inputs, n_workers, lam_enc, 0.0), f, x_batches)
    grid = sorted(set(refinement_grid(lam_dec, dec_grid, REFINE_PER_DECADE)) | {lam_dec})
    table: Dict[str, float] = {}
    for m in counts:
        arrived = straggler_sets(n_workers, n_workers - m, n_batches, seed + 17)
        mse = {candidate: evaluate(_scheme(scheme, geometry, n_inputs, n_workers, lam_enc, candidate), f, x_batches,
                                   arrived, f_x=base, outputs=outputs, paired=True).mean() for candidate in grid}
        table[str(m)] = min(mse, key=lambda candidate: (mse[candidate], candidate))
    check_sets = _mixed_arrived(n_workers, counts, n_batches, seed + 29)
    fixed = _scheme(scheme, geometry, n_inputs, n_workers, lam_enc, lam_dec)
    by_table = CodedSetting(scheme, n_inputs, n_workers, lam_enc, lam_dec, lam_dec_by_arrived=table,
                            **({"geometry": geometry} if geometry else {}))
    mse_fixed, mse_table = (float(evaluate(scheme, f, x_batches, check_sets, f_x=base, outputs=outputs,
                                           paired=True).mean()) for scheme in (fixed, by_table))
    return {"table": table, "mse_fixed_lam_dec": mse_fixed, "mse_table": mse_table,
            "arrived_counts": [int(c) for c in counts], "check_trials": n_batches,
            "kept": bool(mse_table < (1.0 - KEEP_TABLE_GAIN) * mse_fixed)}


def tune_setting(info, n_inputs: int, n_workers: int, n_stragglers: int, seed: int = 0, threads: int = 2,
                 progress: bool = True, trials: int | None = None, enc_grid: str = DEFAULT_ENC_GRID,
                 dec_grid: str = DEFAULT_DEC_GRID, by_arrived: bool = True, straggler_sets_per_s: int | None = None,
                 refine: int = REFINE_PER_DECADE, scheme: str = NeRCC.name, geometry: str | None = None) -> dict:
    """Tune (lam_enc, lam_dec) for (model, K, N, S) on held-out inputs; returns the profile entry (not saved).

    The joint search is :func:`nercc.coding.tune` (coarse log grid plus 0, then refinement around the best
    lam_dec, lam_enc, lam_dec) on ``trials`` calibration batches of K held-out inputs, each scored against the
    same ``straggler_sets_per_s`` random arrived sets. Then, at the chosen lam_enc, lam_dec per |F|
    (:func:`tune_by_arrived`), kept only if it wins on a separate check draw. ``scheme``: "nercc" or
    "nercc-sys" (the entry then says ``"scheme": "nercc-sys"``; ``geometry`` its parity points, None: default).
    """
    from nercc.coding import tune as coding_tune
    from nercc.models import OnnxModel

    for s in ([n_stragglers] if np.isscalar(n_stragglers) else n_stragglers):  # one count, or several (one pair)
        if not 0 <= s <= n_workers - 2:
            raise ValueError(f"stragglers must be in [0, N - 2] = [0, {n_workers - 2}], got {s}")
    started = time.perf_counter()
    B = trials or DEFAULT_TUNE_TRIALS.get(info.name, 16)
    n_sets = straggler_sets_per_s or DEFAULT_STRAGGLER_SETS.get(info.name, 20)
    f = OnnxModel(info, threads=threads)
    inputs = load_inputs(info, "tune", B * n_inputs, seed)
    # calibration batches: K distinct held-out inputs each (disjoint when the pool is large enough)
    batches = trial_batches(len(inputs.x), n_inputs, B, seed + 1)
    x_batches = inputs.x[batches]
    model = BatchedModel(f, default_batch_size(info.input_dim), progress=False)
    enc, dec = parse_lam_grid(enc_grid), parse_lam_grid(dec_grid)
    result = coding_tune(lambda x: model(x).astype(np.float32), x_batches.reshape(-1, *x_batches.shape[2:]),
                         n_inputs, n_workers, n_stragglers, lam_grid=enc, lam_dec_grid=dec, n_trials=n_sets,
                         seed=seed + 11, progress=progress, refine=refine if len(enc) > 1 else 0,
                         baseline=True, scheme=scheme, geometry=geometry)
    lam_enc, lam_dec = float(result.lam_enc), float(result.lam_dec)
    entry = {} if scheme == NeRCC.name else {"scheme": scheme}
    if geometry is not None:
        entry["geometry"] = geometry
    entry.update({
        "n_inputs": n_inputs, "n_workers": n_workers, "n_stragglers": n_stragglers,
        "lam_enc": lam_enc, "lam_dec": lam_dec,
        "mse": result.mse, "mse_nercc0": result.mse_interp, "mse_bacc": result.mse_bacc,
        "calibration": {"split": inputs.split, "batches": B, "straggler_sets": n_sets, "seed": seed,
                        "pairs_scored": len(result.table), "enc_grid": enc_grid, "dec_grid": dec_grid,
                        "refine_per_decade": refine if len(enc) > 1 else 0,
                        "search": "nercc.coding.tune"},
    })
    if by_arrived:
        x64 = x_batches.astype(np.float64)
        base = model(x64.reshape(-1, *x64.shape[2:])).reshape(B, n_inputs, -1)
        counts = arrived_range(n_inputs, n_workers, n_stragglers)
        check = tune_by_arrived(model, x64, base, n_workers, lam_enc, lam_dec, counts, dec, seed, scheme, geometry)
        entry["by_arrived_check"] = {k: v for k, v in check.items() if k != "table"}
        if check["kept"]:
            entry["lam_dec_by_arrived"] = check["table"]
    entry["f_images"] = model.images
    entry["seconds"] = round(time.perf_counter() - started, 1)
    entry["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return entry


# --------------------------------------------------------------------------------------------- nercc tune


def configure(parser) -> None:
    parser.add_argument("--model", default="lenet5", help="model name in model_repository/")
    parser.add_argument("--scheme", default=NeRCC.name, choices=TUNABLE_SCHEMES,
                        help="the scheme to tune: nercc (default) or nercc-sys (systematic; its own profile entries)")
    parser.add_argument("--workers", "-N", type=int, default=100, help="N, number of workers")
    parser.add_argument("--inputs", "-K", type=int, default=20, help="K, inputs per coded batch")
    parser.add_argument("--stragglers", "-S", default="40",
                        help="straggler count(s) to tune for: '40', '0,10,20' or '0:60:10'")
    parser.add_argument("--trials", "-T", type=int, default=None,
                        help="calibration batches of K held-out inputs (default per model: lenet5 60, repvgg 24, "
                             "efficientnet 8, vit 2)")
    parser.add_argument("--straggler-sets", type=int, default=None,
                        help="random arrived sets, each applied to every batch (default per model: 20-40)")
    parser.add_argument("--enc-grid", default=DEFAULT_ENC_GRID,
                        help="lam_enc grid: numbers and/or lo:hi:per_decade log ranges, comma-separated")
    parser.add_argument("--dec-grid", default=DEFAULT_DEC_GRID, help="lam_dec grid, same syntax")
    parser.add_argument("--refine", type=int, default=REFINE_PER_DECADE,
                        help="refinement points per decade around the coarse optimum, one decade either side (0: none)")
    parser.add_argument("--no-by-arrived", action="store_true", help="do not fit the lam_dec-per-|F| table")
    parser.add_argument("--missing-only", action="store_true",
                        help="skip settings that already have an entry in the profile")
    parser.add_argument("--no-save", action="store_true", help="print the result, do not write tuning.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def tune_argv(model: str, n_workers: int, n_inputs: int, n_stragglers: int, args) -> List[str]:
    argv = ["tune", "--model", model, "--workers", n_workers, "--inputs", n_inputs, "--stragglers", n_stragglers,
            "--seed", args.seed]
    if args.scheme != NeRCC.name:
        argv[1:1] = ["--scheme", args.scheme]
    if args.trials:
        argv += ["--trials", args.trials]
    if args.straggler_sets:
        argv += ["--straggler-sets", args.straggler_sets]
    if args.enc_grid != DEFAULT_ENC_GRID:
        argv += ["--enc-grid", args.enc_grid]
    if args.dec_grid != DEFAULT_DEC_GRID:
        argv += ["--dec-grid", args.dec_grid]
    if args.refine != REFINE_PER_DECADE:
        argv += ["--refine", args.refine]
    if args.no_by_arrived:
        argv.append("--no-by-arrived")
    return argv


def main(args) -> int:
    return exit_code_of("nercc tune", lambda: _tune(args))


def _tune(args) -> int:
    from nercc.coding import profile_entry
    from nercc.models import load_model_info
    from nercc.profiles import load_profile, save_entry

    info = load_model_info(args.model)
    stragglers = parse_int_list(args.stragglers)
    if args.inputs < 2 or args.workers < args.inputs:
        raise ValueError(f"need 2 <= --inputs <= --workers, got K = {args.inputs}, N = {args.workers}")
    for s in stragglers:
        if args.missing_only and profile_entry(load_profile(info.dir), args.inputs, args.workers, s,
                                               args.scheme) is not None:
            print(f"{info.name} N={args.workers} K={args.inputs} S={s}: profile entry exists, skipped")
            continue
        entry = tune_setting(info, args.inputs, args.workers, s, seed=args.seed, threads=args.threads,
                             progress=not args.quiet, trials=args.trials, enc_grid=args.enc_grid,
                             dec_grid=args.dec_grid, by_arrived=not args.no_by_arrived,
                             straggler_sets_per_s=args.straggler_sets, refine=args.refine, scheme=args.scheme)
        entry["command"] = command_line(tune_argv(info.name, args.workers, args.inputs, s, args))
        check = entry.get("by_arrived_check")
        sys_ = "-sys" if args.scheme != NeRCC.name else ""
        print(f"{info.name} {args.scheme} N={args.workers} K={args.inputs} S={s}: lam_enc={entry['lam_enc']:.3g} "
              f"lam_dec={entry['lam_dec']:.3g}  held-out MSE NeRCC{sys_} {entry['mse']:.4g}  NeRCC{sys_}-0 "
              f"{entry['mse_nercc0']:.4g}  BACC{sys_} {entry['mse_bacc']:.4g}  (NeRCC/BACC "
              f"{entry['mse'] / entry['mse_bacc'] if entry['mse_bacc'] else float('nan'):.3f}, {entry['seconds']} s)")
        if check:
            print(f"    lam_dec per |F| in {check['arrived_counts'][0]}..{check['arrived_counts'][-1]}: MSE "
                  f"{check['mse_table']:.4g} vs one lam_dec {check['mse_fixed_lam_dec']:.4g} -> "
                  f"{'kept' if check['kept'] else 'not kept'}")
        if not args.no_save:
            path = save_entry(info.dir, entry)
            print(f"    wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------- sweep


def configure_sweep(parser) -> None:
    parser.add_argument("--model", default="lenet5", help="model name in model_repository/")
    parser.add_argument("--workers", "-N", type=int, default=100)
    parser.add_argument("--inputs", "-K", type=int, default=20)
    parser.add_argument("--stragglers", "-S", type=int, default=40)
    parser.add_argument("--trials", "-T", type=int, default=60)
    parser.add_argument("--enc-grid", default="0,1e-9:1e-2:2", help="lam_enc values (parse_lam_grid syntax)")
    parser.add_argument("--dec-grid", default="0,1e-9:1e0:2", help="lam_dec values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quiet", action="store_true")


def main_sweep(args) -> int:
    """MSE over the full (lam_enc, lam_dec) grid on evaluation (test) inputs: the smoothness-effect data.

    This is an analysis of how smoothing acts, not a selection, so it uses the evaluation inputs; the
    tuned lams in the profile come from held-out inputs.
    """
    return exit_code_of("nercc bench sweep", lambda: _sweep(args))


def sweep_grid(trials: Trials, n_workers: int, arrived: np.ndarray, enc: Sequence[float],
               dec: Sequence[float]) -> List[List[float]]:
    """Mean MSE of NeRCC at every (lam_enc, lam_dec), trial t decoded from arrived set t.

    f runs once per lam_enc (every lam_dec reuses its outputs); one decoder per lam_dec keeps its decoding
    matrices for every lam_enc (they depend on lam_dec and the arrived set only).
    """
    n_inputs = trials.n_inputs
    decoders = {lam_dec: NeRCC(n_inputs, n_workers, 0.0, lam_dec, cache_size=len(arrived) + 1) for lam_dec in dec}
    grid = []
    for lam_enc in enc:
        outputs = trials.worker_outputs(NeRCC(n_inputs, n_workers, lam_enc, 0.0))
        grid.append([float(evaluate(decoders[lam_dec], None, trials.x_trials, arrived, f_x=trials.base,
                                    outputs=outputs, paired=True).mean()) for lam_dec in dec])
    return grid


def _sweep(args) -> int:
    from nercc.models import OnnxModel, load_model_info

    info = load_model_info(args.model)
    K, N, S, T = args.inputs, args.workers, args.stragglers, args.trials
    started = time.perf_counter()
    f = OnnxModel(info, threads=args.threads)
    inputs = load_inputs(info, "eval", T * K, args.seed)
    trials = Trials.draw(f, inputs, K, T, args.seed, default_batch_size(info.input_dim), not args.quiet)
    arrived = straggler_sets(N, S, T, args.seed)
    enc, dec = parse_lam_grid(args.enc_grid), parse_lam_grid(args.dec_grid)
    grid = sweep_grid(trials, N, arrived, enc, dec)
    best_i, best_j = min(((i, j) for i in range(len(enc)) for j in range(len(dec))),
                         key=lambda ij: (grid[ij[0]][ij[1]], enc[ij[0]], dec[ij[1]]))
    best = {"lam_enc": enc[best_i], "lam_dec": dec[best_j], "mse": grid[best_i][best_j]}
    argv = ["bench", "sweep", "--model", info.name, "--workers", N, "--inputs", K, "--stragglers", S,
            "--trials", T, "--enc-grid", args.enc_grid, "--dec-grid", args.dec_grid, "--seed", args.seed]
    bacc_mse = float(trials.score(BACC(K, N), arrived)["mse"].mean())
    report = {
        "model": info.name, "N": N, "K": K, "S": S, "trials": T, "seed": args.seed,
        "command": command_line(argv), "split": inputs.split,
        "lam_enc": enc, "lam_dec": dec, "mse": grid,
        "mse_bacc": bacc_mse, "mse_nercc0": grid[enc.index(0.0)][dec.index(0.0)] if 0.0 in enc and 0.0 in dec else None,
        "best": best,
        "seconds": round(time.perf_counter() - started, 1),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"sweep_{info.name}_N{N}_K{K}_S{S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{info.name} N={N} K={K} S={S}: best lam_enc={best['lam_enc']:.3g} lam_dec={best['lam_dec']:.3g} MSE "
          f"{best['mse']:.5f}; NeRCC-0 {report['mse_nercc0']}; BACC {report['mse_bacc']:.5f}")
    print(f"wrote {path} ({report['seconds']} s)", file=sys.stderr)
    return 0
