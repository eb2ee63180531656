"""Accuracy of coded prediction (MSE, RelAcc) vs the number of stragglers, for BACC, NeRCC-0 and tuned NeRCC.

Offline reproduction of the NeRCC paper's Table 1 / Fig. 3: the model f runs in-process through onnxruntime
(no servers). For every straggler count S and every trial t:

1. the K inputs of trial t are real test inputs (preprocessed); trial t uses the same K inputs at every S;
2. each scheme encodes them into N coded inputs and f runs on all N of them (once per distinct encoding
   matrix: BACC, NeRCC with lam_enc = 0, NeRCC with each tuned lam_enc; all decoders reuse those outputs);
3. a uniformly random set F of N - S workers "arrives" (the same set for every scheme), each scheme decodes
   K approximate predictions from the outputs of the workers in F;
4. scores: MSE_t = (1/K) sum_k ||f(x_k) - y_hat_k||^2 on softmax outputs, and
   RelAcc_t = accuracy of argmax(y_hat) on trial t / accuracy of the base model f on all T*K evaluation
   inputs (true labels); we also report top-1 agreement with f's own prediction, which stays meaningful
   for untrained models.

Mean and standard deviation over the T trials go to JSON and CSV. Tuned lams come from the model's tuning
profile (``nercc.profiles.lookup`` for an exact (K, N, S) entry) or, where the profile has none, are tuned
on the fly on held-out inputs (see :mod:`nercc.bench.tune`); the JSON says which for every S.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from nercc import tables
from nercc.bench.experiment import (
    RESULTS_DIR,
    Inputs,
    Model,
    Trials,
    command_line,
    default_batch_size,
    load_inputs,
    parse_int_list,
    straggler_sets,
)
from nercc.coding import BACC, CodedSetting, CodingScheme, NeRCC, make_scheme, profile_entry
from nercc.coding import SCHEMES as SCHEME_REGISTRY
from nercc.coding.registry import BACC_SYS_NAME, NERCC0_NAME, NERCC_SYS_NAME

#: NeRCC with lam_enc = lam_dec = 0 (natural cubic interpolation), compared next to the tuned NeRCC.
NERCC0 = NERCC0_NAME
#: The plain variants (the paper's Table 1) and the systematic ones (issue 17), as keys in result files.
PLAIN_VARIANTS = (BACC.name, NERCC0, NeRCC.name)
SYSTEMATIC_VARIANTS = (BACC_SYS_NAME, NERCC_SYS_NAME)
#: Variant keys in result files, in display order, and their names in tables and plots (the plain ones: Table 1).
SCHEMES = PLAIN_VARIANTS
SCHEME_LABELS = {BACC.name: SCHEME_REGISTRY[BACC.name].label, NERCC0: "NeRCC-0",
                 NeRCC.name: SCHEME_REGISTRY[NeRCC.name].label,
                 **{name: SCHEME_REGISTRY[name].label for name in SYSTEMATIC_VARIANTS}}

#: Default settings per model, used by `nercc bench accuracy/all` when an option is not given.
#: LeNet5: 500 trials x K = 20 uses each of the 10,000 MNIST test images exactly once.
#: ImageNet models: only 20 sample images exist (10 for evaluation, 10 held out for tuning) and one forward
#: pass costs ~30 ms (EfficientNet-Lite0) to ~1 s (ViT-B/16) on the shared 2-core machine, so they run small:
#: N = 20, K = 5 (N/K = 4), stragglers up to 60% of N, fewer trials.
DEFAULTS = {
    "lenet5": {"workers": 100, "inputs": 20, "stragglers": [0, 10, 20, 30, 40, 50, 60], "trials": 500},
    "repvgg_cifar10": {"workers": 100, "inputs": 20, "stragglers": [0, 10, 20, 30, 40, 50, 60], "trials": 150},
    "efficientnet_lite0": {"workers": 20, "inputs": 5, "stragglers": [0, 2, 4, 6, 8, 10, 12], "trials": 60},
    "vit_b16": {"workers": 20, "inputs": 5, "stragglers": [0, 2, 4, 6, 8, 10, 12], "trials": 20},
}
FALLBACK_DEFAULTS = {"workers": 100, "inputs": 20, "stragglers": [0, 10, 20, 30, 40, 50, 60], "trials": 50}

def _stats(values: np.ndarray) -> Tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


# --------------------------------------------------------------------------------------------- smoothing


@dataclass
class Smoothing:
    """Tuned NeRCC's (lam_enc, lam_dec) at one straggler count, and where they came from."""

    lam_enc: float
    lam_dec: float
    source: str  # "profile", "tuned on the fly", "given"
    lam_dec_by_arrived: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"lam_enc": self.lam_enc, "lam_dec": self.lam_dec, "source": self.source}
        if self.lam_dec_by_arrived:
            out["lam_dec_by_arrived"] = self.lam_dec_by_arrived
        return out


def resolve_smoothing(info, n_inputs: int, n_workers: int, n_stragglers: int, tune_missing: bool,
                      seed: int, threads: int, progress: bool, scheme: str = NeRCC.name) -> Smoothing:
    """Tuned (lam_enc, lam_dec) of ``scheme`` (nercc or nercc-sys) for (K, N, S): the profile's exact entry, read
    as serving reads it (:class:`nercc.coding.CodedSetting` with N - S answers), else a tuning run on held-out
    inputs (not saved)."""
    from nercc.profiles import load_profile

    profile = load_profile(info.dir)
    entry = profile_entry(profile, n_inputs, n_workers, n_stragglers, scheme)
    if entry is None and tune_missing:
        from nercc.bench.tune import tune_setting

        tuned = tune_setting(info, n_inputs, n_workers, n_stragglers, seed=seed, threads=threads, progress=progress,
                             scheme=scheme)
        return Smoothing(tuned["lam_enc"], tuned["lam_dec"], "tuned on the fly (held-out inputs, not saved)")
    setting = CodedSetting.from_profile(profile, scheme, n_inputs, n_workers, n_stragglers)
    lam_dec = setting.lam_dec_for(n_workers - n_stragglers)
    if entry is None:
        return Smoothing(setting.lam_enc, lam_dec,
                         "profile fallback (no exact entry; nearest entry, default or built-in)")
    return Smoothing(setting.lam_enc, lam_dec, "profile", dict(entry.get("lam_dec_by_arrived") or {}))


def smoothing_per_count(args, info, stragglers: Sequence[int], n_inputs: int, n_workers: int,
                        scheme: str = NeRCC.name) -> Dict[int, Smoothing]:
    """Tuned NeRCC's (or systematic NeRCC's) smoothing at every straggler count: from the command line, else
    :func:`resolve_smoothing`."""
    if args.lam_enc is not None or args.lam_dec is not None:
        given = Smoothing(args.lam_enc or 0.0, args.lam_dec or 0.0, "given on the command line")
        return {s: given for s in stragglers}
    return {s: resolve_smoothing(info, n_inputs, n_workers, s, tune_missing=not args.no_tune, seed=args.seed,
                                 threads=args.threads, progress=not args.quiet, scheme=scheme) for s in stragglers}


def variant_scheme(variant: str, n_inputs: int, n_workers: int, smoothing) -> CodingScheme:
    """The coding scheme behind a result-file variant: BACC, NeRCC-0, NeRCC with the tuned smoothing, or their
    systematic versions. ``smoothing``: a :class:`Smoothing`, or a dict variant -> Smoothing (nercc-sys has its
    own tuned lams; missing: NeRCC's)."""
    if isinstance(smoothing, dict):
        smoothing = smoothing.get(variant, smoothing.get(NeRCC.name))
    if variant == NERCC0:
        return make_scheme(NeRCC.name, n_inputs, n_workers, 0.0, 0.0)
    return make_scheme(variant, n_inputs, n_workers, smoothing.lam_enc, smoothing.lam_dec)


# --------------------------------------------------------------------------------------------- benchmark


def _variants(stragglers: Sequence[int], n_inputs: int, n_workers: int, smoothing: Dict[int, Smoothing],
              desc: str, progress: bool, variants: Sequence[str] = PLAIN_VARIANTS):
    """(S, variant, its coding scheme) for every straggler count and compared variant, under a progress bar.

    ``smoothing[S]``: plain NeRCC's Smoothing, or a dict variant -> Smoothing (systematic NeRCC's own lams)."""
    from nercc.progress import progress_bar

    variants = [v for v in variants if v not in SYSTEMATIC_VARIANTS or n_workers > n_inputs]
    bar = progress_bar([(s, name) for s in stragglers for name in variants], desc=desc, unit="scheme",
               disable=not progress, file=sys.stderr)
    for s, name in bar:
        bar.set_postfix_str(f"S={s} {SCHEME_LABELS[name]}")
        yield s, name, variant_scheme(name, n_inputs, n_workers, smoothing[s])


def _score_row(scores: Dict[str, np.ndarray], base_acc: float) -> dict:
    """Mean and standard deviation over trials of MSE, accuracy, RelAcc and agreement."""
    mse_mean, mse_std = _stats(scores["mse"])
    acc_mean, acc_std = _stats(scores["acc"])
    agree_mean, agree_std = _stats(scores["agree"])
    return {
        "mse_mean": mse_mean, "mse_std": mse_std,
        "relacc_mean": acc_mean / base_acc if base_acc > 0 and acc_mean is not None else None,
        "relacc_std": acc_std / base_acc if base_acc > 0 and acc_std is not None else None,
        "acc_mean": acc_mean, "acc_std": acc_std,
        "agreement_mean": agree_mean, "agreement_std": agree_std,
    }


def run_benchmark(f: Model, inputs: Inputs, n_inputs: int, n_workers: int, stragglers: Sequence[int],
                  smoothing: Dict[int, Smoothing], n_trials: int, seed: int, batch_size: int,
                  progress: bool = True, variants: Sequence[str] = PLAIN_VARIANTS) -> dict:
    """The benchmark core (no file I/O): returns the ``results`` and ``base`` parts of the JSON.

    ``smoothing[S]`` gives tuned NeRCC's lams at S (or a dict variant -> Smoothing). All schemes see the same
    trials and arrived sets. Systematic variants also report the recovered inputs (those whose own worker
    straggled): ``recovered_mse`` (pooled), ``recovered_relacc``, ``recovered_fraction``, ``exact_batches``.
    """
    from nercc.bench.systematic import summarize, systematic_scores


    if n_inputs < 2 or n_workers < n_inputs:
        raise ValueError(f"need 2 <= K <= N, got K = {n_inputs}, N = {n_workers}")
    if n_trials < 1:
        raise ValueError(f"trials must be >= 1, got {n_trials}")
    trials = Trials.draw(f, inputs, n_inputs, n_trials, seed, batch_size, progress)
    base_acc = float(np.mean(trials.base_top1 == trials.labels))
    results: Dict[str, dict] = {}
    for s, name, scheme in _variants(stragglers, n_inputs, n_workers, smoothing, "decode", progress, variants):
        arrived = straggler_sets(n_workers, s, n_trials, seed)
        row = _score_row(trials.score(scheme, arrived), base_acc)
        if scheme.systematic:
            rec = summarize(systematic_scores(scheme, trials, arrived), n_inputs, base_acc)
            row.update({key: rec[key] for key in ("recovered_mse", "recovered_relacc", "recovered_inputs",
                                                  "recovered_fraction", "exact_batches")})
        if isinstance(scheme, NeRCC):
            row["lam_enc"], row["lam_dec"] = scheme.lam_enc, scheme.lam_dec
        results.setdefault(str(s), {})[name] = row
    return {
        "base_accuracy": base_acc,
        "results": results,
        "f_calls": trials.model.calls,
        "f_images": trials.model.images,
        "f_seconds": round(trials.model.seconds, 2),
        "eval_inputs_distinct": int(len(np.unique(trials.batches))),
    }


# --------------------------------------------------------------------------------------------- files


def accuracy_argv(model: str, cfg: dict, seed: int, extra: Sequence[str] = ()) -> List[str]:
    """The explicit `nercc bench accuracy` arguments that reproduce a run (no reliance on defaults)."""
    return ["bench", "accuracy", "--model", model, "--workers", cfg["n_workers"], "--inputs", cfg["n_inputs"],
            "--stragglers", ",".join(str(s) for s in cfg["stragglers"]), "--trials", cfg["trials"],
            "--seed", seed, *extra]


def result_stem(model: str, n_workers: int, n_inputs: int) -> str:
    return f"accuracy_{model}_N{n_workers}_K{n_inputs}"


def write_results(report: dict, out_dir: Path) -> Tuple[Path, Path]:
    """``<stem>.json`` (everything) and ``<stem>.csv`` (one row per S and scheme)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(report["model"], report["N"], report["K"])
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    columns = ["model", "N", "K", "S", "scheme", "mse_mean", "mse_std", "relacc_mean", "relacc_std",
               "acc_mean", "agreement_mean", "lam_enc", "lam_dec", "trials", "seed"]
    if any(name in by for by in report["results"].values() for name in SYSTEMATIC_VARIANTS):
        columns += ["recovered_mse", "recovered_relacc", "recovered_fraction", "exact_batches"]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for s, by_scheme in report["results"].items():
            for name in [n for n in PLAIN_VARIANTS + SYSTEMATIC_VARIANTS if n in by_scheme]:
                row = by_scheme[name]
                writer.writerow({"model": report["model"], "N": report["N"], "K": report["K"], "S": s,
                                 "scheme": SCHEME_LABELS[name], "trials": report["trials"], "seed": report["seed"],
                                 **{c: row.get(c, "") for c in columns if c in row}})
    return json_path, csv_path


def _mse_cell(row: dict) -> str:
    if row["mse_mean"] >= 1e-4:
        return f"{row['mse_mean']:.5f}±{row['mse_std']:.5f}"
    return f"{row['mse_mean']:.3e}±{row['mse_std']:.1e}"


def format_table(report: dict) -> str:
    """Plain-text summary: one line per S with each scheme's MSE and RelAcc and NeRCC/BACC."""
    header = (["S"] + [f"{SCHEME_LABELS[n]} MSE" for n in SCHEMES] + [f"{SCHEME_LABELS[n]} RelAcc" for n in SCHEMES]
              + ["NeRCC/BACC"])
    rows = []
    for s, row in report["results"].items():
        rel = [f"{row[n]['relacc_mean']:.4f}" if row[n]["relacc_mean"] is not None else "n/a" for n in SCHEMES]
        ratio = row[NeRCC.name]["mse_mean"] / row[BACC.name]["mse_mean"]
        rows.append([s] + [_mse_cell(row[n]) for n in SCHEMES] + rel + [f"{ratio:.3f}"])
    title = (f"{report['model']}  N={report['N']} K={report['K']} trials={report['trials']} "
             f"base accuracy {report['base_accuracy']:.4f}")
    text = title + "\n" + tables.format_table(rows, header)
    if any(n in row for row in report["results"].values() for n in SYSTEMATIC_VARIANTS):
        text += "\n" + format_systematic_table(report)
    return text


def format_systematic_table(report: dict) -> str:
    """Systematic next to plain, per S: whole-batch MSE / RelAcc, the recovered inputs' MSE / RelAcc, their
    share, batches with no input recovered, and recovered-input MSE / plain NeRCC's per-input MSE."""
    header = ["S", "NeRCC MSE", "NeRCC RelAcc"]
    for n in SYSTEMATIC_VARIANTS:
        label = SCHEME_LABELS[n]
        header += [f"{label} MSE", f"{label} RelAcc", f"{label} rec MSE", f"{label} rec RelAcc"]
    header += ["recovered share", "exact batches", "NeRCC-sys rec / NeRCC"]
    rows = []
    for s, row in report["results"].items():
        plain = row[NeRCC.name]
        cells = [s, f"{plain['mse_mean']:.5f}", f"{plain['relacc_mean']:.4f}"]
        for n in SYSTEMATIC_VARIANTS:
            r = row.get(n)
            if r is None:
                cells += ["-"] * 4
                continue
            cells += [f"{r['mse_mean']:.5f}", f"{r['relacc_mean']:.4f}",
                      f"{r['recovered_mse']:.5f}" if r.get("recovered_mse") is not None else "-",
                      f"{r['recovered_relacc']:.4f}" if r.get("recovered_relacc") is not None else "-"]
        sys_row = row.get(NERCC_SYS_NAME) or {}
        rec = sys_row.get("recovered_mse")
        cells += [f"{sys_row.get('recovered_fraction', 0):.3f}", f"{sys_row.get('exact_batches', 0):.3f}",
                  f"{rec / plain['mse_mean']:.2f}" if rec is not None and plain["mse_mean"] else "-"]
        rows.append(cells)
    return "systematic vs plain (rec = the inputs whose own worker straggled)\n" + tables.format_table(rows, header)


# --------------------------------------------------------------------------------------------- command


def configure(parser) -> None:
    parser.add_argument("--model", default="lenet5", help="model name in model_repository/")
    parser.add_argument("--workers", "-N", type=int, default=None, help="N, number of workers (default per model)")
    parser.add_argument("--inputs", "-K", type=int, default=None, help="K, inputs per coded batch (default per model)")
    parser.add_argument("--stragglers", "-S", default=None,
                        help="straggler counts, '0,10,20' or '0:60:10' (default per model)")
    parser.add_argument("--trials", "-T", type=int, default=None, help="trials per straggler count (default per model)")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs and straggler sets")
    parser.add_argument("--lam-enc", type=float, default=None,
                        help="use this lam_enc for tuned NeRCC at every S instead of the profile")
    parser.add_argument("--lam-dec", type=float, default=None,
                        help="use this lam_dec for tuned NeRCC at every S instead of the profile")
    parser.add_argument("--no-tune", action="store_true",
                        help="where the profile has no exact (K, N, S) entry, use its nearest entry instead of tuning")
    parser.add_argument("--batch-size", type=int, default=None, help="images per onnxruntime call")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON and CSV")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--systematic", action="store_true",
                        help="also score systematic BACC and NeRCC (nercc-sys with its own tuned lams): whole batches "
                             "and the recovered inputs, next to the plain schemes")
    parser.add_argument("--byzantine", "-A", type=int, default=0, metavar="A",
                        help="instead of the straggler sweep: A arrived workers answer finite wrong values; "
                             "report MSE clean / straggling / Byzantine with and without robust decoding")
    parser.add_argument("--attack", default=",".join(DEFAULT_ATTACKS),
                        help=f"with --byzantine: comma list of wrong-answer kinds ({', '.join(ATTACKS)})")
    parser.add_argument("--robust-threshold", type=float, default=None,
                        help="with --byzantine: outlier threshold of robust decoding (default: the library's)")


def settings(args) -> dict:
    """Per-model defaults filled in where the command line left options out; validated."""
    d = DEFAULTS.get(args.model, FALLBACK_DEFAULTS)
    n_workers = args.workers if args.workers is not None else d["workers"]
    n_inputs = args.inputs if args.inputs is not None else d["inputs"]
    stragglers = parse_int_list(args.stragglers) if args.stragglers is not None else list(d["stragglers"])
    trials = args.trials if args.trials is not None else d["trials"]
    if n_inputs < 2:
        raise ValueError(f"--inputs (K) must be >= 2, got {n_inputs}")
    if n_workers < n_inputs:
        raise ValueError(f"--workers (N) must be >= --inputs (K) = {n_inputs}, got {n_workers}")
    if not stragglers:
        raise ValueError("--stragglers is empty")
    bad = [s for s in stragglers if not 0 <= s <= n_workers - n_inputs]
    if bad:
        raise ValueError(f"--stragglers must lie in [0, N - K] = [0, {n_workers - n_inputs}], got {bad}")
    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    return {"n_workers": n_workers, "n_inputs": n_inputs, "stragglers": stragglers, "trials": trials}


@dataclass
class PreparedRun:
    """What both kinds of `nercc bench accuracy` run need: settings, model, f, smoothing per S, inputs."""

    cfg: dict
    info: object
    f: Model
    smoothing: Dict[int, Smoothing]
    inputs: Inputs
    batch_size: int
    started: float


def _prepare(args) -> PreparedRun:
    from nercc.models import OnnxModel, load_model_info

    cfg = settings(args)
    K, N, T = cfg["n_inputs"], cfg["n_workers"], cfg["trials"]
    info = load_model_info(args.model)
    f = OnnxModel(info, threads=args.threads)
    started = time.perf_counter()
    smoothing = smoothing_per_count(args, info, cfg["stragglers"], K, N)
    inputs = load_inputs(info, "eval", T * K, args.seed)
    return PreparedRun(cfg, info, f, smoothing, inputs, args.batch_size or default_batch_size(info.input_dim),
                       started)


def run(args) -> dict:
    """Everything `nercc bench accuracy` does except printing; returns the report (also written to files)."""
    prepared = _prepare(args)
    cfg, info, inputs, smoothing = prepared.cfg, prepared.info, prepared.inputs, prepared.smoothing
    K, N, T = cfg["n_inputs"], cfg["n_workers"], cfg["trials"]
    variants = PLAIN_VARIANTS
    if getattr(args, "systematic", False):
        variants = PLAIN_VARIANTS + SYSTEMATIC_VARIANTS
        sys_smoothing = smoothing_per_count(args, info, cfg["stragglers"], K, N, scheme=NERCC_SYS_NAME)
        smoothing = {s: {NeRCC.name: smoothing[s], NERCC_SYS_NAME: sys_smoothing[s]} for s in cfg["stragglers"]}
    core = run_benchmark(prepared.f, inputs, K, N, cfg["stragglers"], smoothing, T, args.seed, prepared.batch_size,
                         not args.quiet, variants)
    report = {
        "model": info.name, "dataset": info.dataset, "trained": bool(info.trained), "weights": info.weights,
        "N": N, "K": K, "trials": T, "seed": args.seed, "stragglers": cfg["stragglers"],
        "command": command_line(accuracy_argv(info.name, cfg, args.seed, extra_flags(args))),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eval_split": inputs.split,
        "metrics": {
            "mse": "mean over the K inputs of ||f(x_k) - y_hat_k||^2 on softmax outputs; mean/std over trials",
            "relacc": "accuracy of argmax(y_hat) on a trial / accuracy of f on all T*K evaluation inputs",
            "agreement": "fraction of inputs where argmax(y_hat) equals f's own top-1",
        },
        "lams": {str(s): (choice[NeRCC.name] if isinstance(choice, dict) else choice).to_json()
                 for s, choice in smoothing.items()},
        **({"lams_systematic": {str(s): choice[NERCC_SYS_NAME].to_json() for s, choice in smoothing.items()}}
           if variants != PLAIN_VARIANTS else {}),
        **core,
        "base_accuracy_reference": (info.accuracy or {}).get("top1"),
        "seconds": round(time.perf_counter() - prepared.started, 1),
    }
    return report


def extra_flags(args) -> List[str]:
    """Non-default flags that change results (for the recorded command)."""
    out: List[str] = []
    if args.lam_enc is not None:
        out += ["--lam-enc", repr(args.lam_enc)]
    if args.lam_dec is not None:
        out += ["--lam-dec", repr(args.lam_dec)]
    if args.no_tune:
        out.append("--no-tune")
    if getattr(args, "systematic", False):
        out.append("--systematic")
    return out


def run_byzantine_command(args) -> dict:
    """`nercc bench accuracy --byzantine A`: the Byzantine comparison (report also written to JSON)."""
    prepared = _prepare(args)
    cfg, info, inputs, smoothing = prepared.cfg, prepared.info, prepared.inputs, prepared.smoothing
    K, N, T = cfg["n_inputs"], cfg["n_workers"], cfg["trials"]
    attacks = [a.strip() for a in args.attack.split(",") if a.strip()]
    core = run_byzantine(prepared.f, inputs, K, N, cfg["stragglers"], smoothing, args.byzantine, attacks, T,
                         args.seed, prepared.batch_size, threshold=args.robust_threshold, progress=not args.quiet)
    extra = extra_flags(args) + ["--byzantine", str(args.byzantine), "--attack", ",".join(attacks)]
    if args.robust_threshold is not None:
        extra += ["--robust-threshold", repr(args.robust_threshold)]
    return {
        "model": info.name, "N": N, "K": K, "trials": T, "seed": args.seed, "stragglers": cfg["stragglers"],
        "command": command_line(accuracy_argv(info.name, cfg, args.seed, extra)),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": {
            "clean": "MSE, S stragglers, every arrived answer honest, plain decode",
            "clean_robust": "the same answers decoded with robust decoding (its cost when nobody lies)",
            "straggling": "MSE when the A Byzantine workers simply do not answer (S + A stragglers)",
            "robust/plain": "MSE with A arrived answers replaced by the attack, with and without robust decoding",
            "caught_fraction": "trials where robust decoding dropped every wrong answer",
        },
        "lams": {str(s): choice.to_json() for s, choice in smoothing.items()},
        "byzantine": core,
        "seconds": round(time.perf_counter() - prepared.started, 1),
    }


def main(args) -> int:
    if args.byzantine:
        if args.byzantine < 0:
            raise ValueError(f"--byzantine must be >= 0, got {args.byzantine}")
        report = run_byzantine_command(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"byzantine_{report['model']}_N{report['N']}_K{report['K']}_A{args.byzantine}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(format_byzantine_table(report))
        print(f"wrote {path} ({report['seconds']} s)")
        return 0
    report = run(args)
    json_path, csv_path = write_results(report, Path(args.out))
    print(format_table(report))
    for s, choice in report["lams"].items():
        print(f"  S={s}: tuned NeRCC lam_enc={choice['lam_enc']:.3g} lam_dec={choice['lam_dec']:.3g} "
              f"({choice['source']})")
    print(f"wrote {json_path} and {csv_path} ({report['seconds']} s)")
    return 0


# --------------------------------------------------------------------------------------------- Byzantine workers

#: Ways a Byzantine worker answers (finite, wrong), given the honest answers ``y`` (A, C) of the A workers,
#: the answers of every worker of the trial ``all_y`` (N, C) and a generator. All values are finite.
ATTACKS: Dict[str, Callable] = {
    # a plausible softmax vector for another input: right range, sums to 1
    "dirichlet": lambda y, all_y, rng: rng.dirichlet(np.ones(y.shape[-1]), size=y.shape[0]),
    # stuck at one class (a model that always says "3")
    "onehot": lambda y, all_y, rng: np.eye(y.shape[-1])[rng.integers(0, y.shape[-1], size=y.shape[0])],
    # the honest answer plus unit noise (a flaky GPU)
    "gaussian": lambda y, all_y, rng: y + rng.standard_normal(y.shape),
    # huge values (overflowed accumulators, a wrong scale)
    "large": lambda y, all_y, rng: 1e6 * rng.standard_normal(y.shape),
    # another worker's honest answer (a mix-up of requests): plausible and in range
    "swap": lambda y, all_y, rng: all_y[rng.integers(0, all_y.shape[0], size=y.shape[0])],
}
DEFAULT_ATTACKS = tuple(ATTACKS)


def byzantine_sets(arrived: np.ndarray, n_byzantine: int, seed: int) -> np.ndarray:
    """(T, A) worker indices answering wrong: A distinct ones among each trial's arrived workers (seeded)."""
    rng = np.random.default_rng([seed, 5, arrived.shape[1], n_byzantine])
    return np.stack([np.sort(rng.choice(row, size=n_byzantine, replace=False)) for row in arrived])


def run_byzantine(f: Model, inputs: Inputs, n_inputs: int, n_workers: int, stragglers: Sequence[int],
                  smoothing: Dict[int, Smoothing], n_byzantine: int, attacks: Sequence[str], n_trials: int,
                  seed: int, batch_size: int, threshold: float | None = None, progress: bool = True) -> dict:
    """MSE of each scheme with A of the arrived workers answering finite wrong values (no file I/O).

    For every S and scheme, on the same trials: ``clean`` (S stragglers, plain decode), ``clean_robust``
    (the same with robust decoding: its cost when nobody lies), ``straggling`` (the A workers simply do not
    answer: S + A stragglers, plain decode) and, per attack, ``robust`` and ``plain`` decodes of the answers
    with A wrong ones, plus how often robust decoding dropped exactly the wrong workers.
    """

    from nercc.coding.robust import DEFAULT_THRESHOLD

    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    if n_byzantine < 1:
        raise ValueError(f"byzantine workers must be >= 1, got {n_byzantine}")
    bad = [s for s in stragglers if n_workers - s - n_byzantine < n_inputs]
    if bad:
        raise ValueError(f"with {n_byzantine} Byzantine workers, stragglers must leave at least K = {n_inputs} "
                         f"honest answers: S <= {n_workers - n_inputs - n_byzantine}, got {bad}")
    trials = Trials.draw(f, inputs, n_inputs, n_trials, seed, batch_size, progress)
    results: Dict[str, dict] = {}
    for s, name, scheme in _variants(stragglers, n_inputs, n_workers, smoothing, "byzantine", progress):
        arrived = straggler_sets(n_workers, s, n_trials, seed)
        liars = byzantine_sets(arrived, n_byzantine, seed + s)
        results.setdefault(str(s), {})[name] = _byzantine_row(scheme, trials, arrived, liars, attacks, threshold,
                                                              seed, s)
    return {"results": results, "threshold": threshold, "n_byzantine": n_byzantine, "attacks": list(attacks),
            "f_images": trials.model.images, "f_seconds": round(trials.model.seconds, 2)}


def _byzantine_row(scheme: CodingScheme, trials: Trials, arrived: np.ndarray, liars: np.ndarray,
                   attacks: Sequence[str], threshold: float, seed: int, n_stragglers: int) -> dict:
    """One (S, scheme) row of :func:`run_byzantine`: mean MSEs over the trials and the caught fractions."""
    from nercc.coding import mean_squared_error
    from nercc.coding.robust import outlier_score, robust_decode

    outputs = trials.worker_outputs(scheme)
    n_trials = len(arrived)
    rows = {m: np.empty(n_trials) for m in ("clean", "clean_robust", "straggling")}
    false_drops = 0
    clean_scores = np.empty(n_trials)  # the detector's statistic on honest batches: what a threshold must clear
    per_attack = {a: {"robust": np.empty(n_trials), "plain": np.empty(n_trials), "caught": 0, "located": 0,
                      "score": np.empty(n_trials)} for a in attacks}
    for t in range(n_trials):
        arr, base = arrived[t], trials.base[t]
        y = outputs[t, arr]
        rows["clean"][t] = mean_squared_error(scheme.decode(y, arr), base)
        clean_r = robust_decode(scheme, y, arr, threshold=threshold)
        rows["clean_robust"][t] = mean_squared_error(clean_r.predictions, base)
        false_drops += len(clean_r.dropped)
        clean_scores[t] = outlier_score(scheme, y, arr)[1]
        honest = np.setdiff1d(arr, liars[t])
        rows["straggling"][t] = mean_squared_error(scheme.decode(outputs[t, honest], honest), base)
        where = np.searchsorted(arr, liars[t])
        for a in attacks:
            rng = np.random.default_rng([seed, 6, t, n_stragglers, list(ATTACKS).index(a)])
            y_bad = y.copy()
            y_bad[where] = ATTACKS[a](y[where], outputs[t], rng)
            per_attack[a]["plain"][t] = mean_squared_error(scheme.decode(y_bad, arr), base)
            r = robust_decode(scheme, y_bad, arr, threshold=threshold)
            per_attack[a]["robust"][t] = mean_squared_error(r.predictions, base)
            per_attack[a]["caught"] += int(set(liars[t].tolist()) <= set(r.dropped))
            suspect, per_attack[a]["score"][t] = outlier_score(scheme, y_bad, arr)
            per_attack[a]["located"] += int(suspect in liars[t])
    row = {m: float(v.mean()) for m, v in rows.items()}
    row["clean_false_drops_per_trial"] = false_drops / n_trials
    row["clean_score_p50_p95_p99"] = [round(float(q), 3) for q in np.percentile(clean_scores, [50, 95, 99])]
    # located: the most suspect answer is a wrong one; score: the detector's statistic (threshold it to drop)
    row["attacks"] = {a: {"robust": float(v["robust"].mean()), "plain": float(v["plain"].mean()),
                          "caught_fraction": v["caught"] / n_trials, "located_fraction": v["located"] / n_trials,
                          "score_p5_p50": [round(float(q), 3) for q in np.percentile(v["score"], [5, 50])]}
                      for a, v in per_attack.items()}
    return row


def format_byzantine_table(report: dict) -> str:
    """One line per (S, scheme, attack): clean, clean robust, straggling, Byzantine robust / plain, ratios."""
    a = report["byzantine"]["n_byzantine"]
    title = (f"{report['model']}  N={report['N']} K={report['K']} trials={report['trials']}  "
             f"A={a} Byzantine worker(s), threshold {report['byzantine']['threshold']}")
    header = ["S", "scheme", "attack", "clean", "clean+rob", "straggling", "byz+robust", "byz plain", "rob/strag",
              "clean cost", "caught", "located", "score honest p95/p99", "score attacked p5/p50"]
    rows = []
    for s, by_scheme in report["byzantine"]["results"].items():
        for name in SCHEMES:
            row = by_scheme[name]
            for attack, v in row["attacks"].items():
                rows.append([s, SCHEME_LABELS[name], attack, f"{row['clean']:.3e}", f"{row['clean_robust']:.3e}",
                             f"{row['straggling']:.3e}", f"{v['robust']:.3e}", f"{v['plain']:.3e}",
                             f"{v['robust'] / row['straggling']:.2f}", f"{row['clean_robust'] / row['clean'] - 1:+.1%}",
                             f"{v['caught_fraction']:.0%}", f"{v.get('located_fraction', float('nan')):.0%}",
                             "/".join(f"{q:.2f}" for q in row.get("clean_score_p50_p95_p99", [np.nan] * 3)[1:]),
                             "/".join(f"{q:.2f}" for q in v.get("score_p5_p50", [np.nan] * 2))])
    return title + "\n" + tables.format_table(rows, header, align=">" + "<<" + ">" * 11)
