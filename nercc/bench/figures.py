"""Figures and tables from bench/results/: MSE/RelAcc vs stragglers, smoothness effect, coded MNIST samples.

`nercc bench figures` reads the JSON written by `nercc bench accuracy` and `nercc bench sweep` and writes:

- ``fig_accuracy.png``: MSE, RelAcc and NeRCC/BACC MSE ratio vs S for BACC, NeRCC-0 and tuned NeRCC, one column
  per model (error bars: one standard deviation over trials);
- ``fig_smoothness.png``: MSE vs lam_dec at fixed lam_enc and vs lam_enc at fixed lam_dec, with the NeRCC-0 and
  BACC levels as horizontal lines;
- ``fig_coded_samples.png``: K MNIST originals and the coded inputs BACC and NeRCC build from them;
- ``README.md``: the Markdown version of the paper's Table 1 (MSE and RelAcc mean ± std per model and scheme at
  representative S), with the exact command behind every number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from nercc.bench.accuracy import DEFAULTS, NERCC0, SCHEME_LABELS, SCHEMES, result_stem
from nercc.bench.experiment import RESULTS_DIR, load_inputs
from nercc.coding import BACC, NeRCC, make_scheme

COLORS = {BACC.name: "#d62728", NERCC0: "#7f7f7f", NeRCC.name: "#1f77b4"}
MARKERS = {BACC.name: "s", NERCC0: "^", NeRCC.name: "o"}
MODEL_TITLES = {
    "lenet5": "LeNet5 / MNIST",
    "repvgg_cifar10": "RepVGG / CIFAR-10",
    "efficientnet_lite0": "EfficientNet-Lite0 / ImageNet",
    "vit_b16": "ViT-B/16 / ImageNet (untrained)",
}
#: A deliberately large lam_enc for the coded-samples figure, to show what encoder smoothing does.
SMOOTH_LAM_ENC = 1e-3
MODEL_ORDER = ("lenet5", "repvgg_cifar10", "efficientnet_lite0", "vit_b16")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def load_accuracy_reports(results_dir: Path) -> List[dict]:
    """The accuracy report of each model at its default (N, K), in MODEL_ORDER, where it exists."""
    reports = []
    for model in MODEL_ORDER:
        d = DEFAULTS[model]
        path = results_dir / f"{result_stem(model, d['workers'], d['inputs'])}.json"
        if path.exists():
            reports.append(json.loads(path.read_text()))
    return reports


def load_other_reports(results_dir: Path) -> List[dict]:
    """Accuracy reports at other (N, K) than the defaults (e.g. the serving settings), largest N first."""
    defaults = {result_stem(m, d["workers"], d["inputs"]) for m, d in DEFAULTS.items()}
    reports = [json.loads(p.read_text()) for p in sorted(results_dir.glob("accuracy_*.json"))
               if p.stem not in defaults]
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(reports, key=lambda r: (order.get(r["model"], 99), -r["N"], -r["K"]))


def _series(report: dict, scheme: str, key: str) -> np.ndarray:
    return np.array([report["results"][str(s)][scheme][key] if report["results"][str(s)][scheme][key] is not None
                     else np.nan for s in report["stragglers"]], dtype=float)


def plot_accuracy(reports: List[dict], path: Path) -> Path:
    plt = _pyplot()
    cols = len(reports)
    fig, axes = plt.subplots(3, cols, figsize=(4.6 * cols + 0.6, 10.5), squeeze=False,
                             gridspec_kw={"height_ratios": [1.2, 1.0, 0.8]})
    for c, rep in enumerate(reports):
        s = np.array(rep["stragglers"], dtype=float)
        width = (s[-1] - s[0]) / max(1, len(s) - 1) * 0.12 if len(s) > 1 else 0.3
        for i, scheme in enumerate(SCHEMES):
            dx = (i - 1) * width
            kw = {"color": COLORS[scheme], "marker": MARKERS[scheme], "capsize": 3, "lw": 1.6, "ms": 5,
                  "label": SCHEME_LABELS[scheme]}
            axes[0, c].errorbar(s + dx, _series(rep, scheme, "mse_mean"), yerr=_series(rep, scheme, "mse_std"), **kw)
            rel = _series(rep, scheme, "relacc_mean")
            if np.all(np.isnan(rel)):  # untrained model: no accuracy to compare; show top-1 agreement with f
                axes[1, c].errorbar(s + dx, _series(rep, scheme, "agreement_mean"),
                                    yerr=_series(rep, scheme, "agreement_std"), **kw)
                axes[1, c].set_ylabel("top-1 agreement with f")
            else:
                axes[1, c].errorbar(s + dx, rel, yerr=_series(rep, scheme, "relacc_std"), **kw)
                axes[1, c].set_ylabel("RelAcc")
        ratio = _series(rep, NeRCC.name, "mse_mean") / _series(rep, BACC.name, "mse_mean")
        ratio0 = _series(rep, NERCC0, "mse_mean") / _series(rep, BACC.name, "mse_mean")
        axes[2, c].plot(s, ratio, color=COLORS[NeRCC.name], marker="o", label="NeRCC / BACC")
        axes[2, c].plot(s, ratio0, color=COLORS[NERCC0], marker="^", label="NeRCC-0 / BACC")
        axes[2, c].axhline(1.0, color=COLORS[BACC.name], lw=1, ls="--")
        axes[2, c].axhline(0.77, color="k", lw=0.8, ls=":", label="paper's best (0.77)")
        axes[2, c].set_ylim(0, max(1.3, float(np.nanmax(ratio0)) * 1.05 if np.isfinite(np.nanmax(ratio0)) else 1.3))
        title = MODEL_TITLES.get(rep["model"], rep["model"])
        axes[0, c].set_title(f"{title}\nN={rep['N']}, K={rep['K']}, {rep['trials']} trials")
        axes[0, c].set_ylabel("MSE (softmax outputs, log)")
        axes[0, c].set_yscale("log", nonpositive="clip")
        axes[2, c].set_ylabel("MSE ratio")
        axes[2, c].set_xlabel("stragglers S")
        for r in range(3):
            axes[r, c].set_xticks(s)
    axes[0, 0].legend(loc="upper left")
    axes[2, 0].legend(loc="lower right", fontsize=9)
    fig.suptitle("Coded prediction accuracy vs stragglers\n(error bars: 1 std over trials)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_smoothness(sweep: dict, path: Path) -> Path:
    plt = _pyplot()
    enc, dec, mse = np.array(sweep["lam_enc"]), np.array(sweep["lam_dec"]), np.array(sweep["mse"])
    best_enc, best_dec = sweep["best"]["lam_enc"], sweep["best"]["lam_dec"]
    i_enc, j_dec = int(np.argmin(np.abs(enc - best_enc))), int(np.argmin(np.abs(dec - best_dec)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    pos_dec, pos_enc = dec > 0, enc > 0
    axes[0].semilogx(dec[pos_dec], mse[i_enc, pos_dec], "o-", color=COLORS[NeRCC.name],
                     label=f"NeRCC, lam_enc = {enc[i_enc]:.3g}")
    if i_enc != 0 and enc[0] == 0:
        axes[0].semilogx(dec[pos_dec], mse[0, pos_dec], ".--", color=COLORS[NeRCC.name], alpha=0.6,
                         label="NeRCC, lam_enc = 0")
    axes[0].set_xlabel("lam_dec")
    axes[0].set_title("decoder smoothing")
    axes[1].semilogx(enc[pos_enc], mse[pos_enc, j_dec], "o-", color=COLORS[NeRCC.name],
                     label=f"NeRCC, lam_dec = {dec[j_dec]:.3g}")
    axes[1].set_xlabel("lam_enc")
    axes[1].set_title("encoder smoothing")
    for ax in axes:
        if sweep.get("mse_nercc0") is not None:
            ax.axhline(sweep["mse_nercc0"], color=COLORS[NERCC0], ls="--", label="NeRCC-0 (lam = 0, 0)")
        ax.axhline(sweep["mse_bacc"], color=COLORS[BACC.name], ls=":", label="BACC")
        ax.set_yscale("log")
        ax.legend(fontsize=9)
    axes[0].set_ylabel("MSE (softmax outputs)")
    fig.suptitle(f"Smoothness effect: {MODEL_TITLES.get(sweep['model'], sweep['model'])}, N={sweep['N']}, "
                 f"K={sweep['K']}, S={sweep['S']}, {sweep['trials']} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def coded_samples(n_inputs: int, n_workers: int, lam_enc: float, seed: int = 0, show: int = 20) -> dict:
    """K MNIST test images and every (N // show)-th coded input of BACC and NeRCC built from them."""
    from nercc.models import load_model_info

    info = load_model_info("lenet5")
    x = load_inputs(info, "eval", n_inputs, seed).x
    step = max(1, n_workers // show)
    picked = np.arange(0, n_workers, step)[:show]
    out = {"originals": x[:, 0], "picked": picked}
    for name, scheme_name, lam in ((BACC.name, BACC.name, 0.0), (NeRCC.name, NeRCC.name, lam_enc),
                                   ("nercc_smooth", NeRCC.name, SMOOTH_LAM_ENC)):
        scheme = make_scheme(scheme_name, n_inputs, n_workers, lam, 0.0)
        out[name] = scheme.encode(x.astype(np.float64))[picked, 0]
    out["betas"] = make_scheme(BACC.name, n_inputs, n_workers).betas[picked]
    return out


def plot_coded_samples(samples: dict, n_workers: int, lam_enc: float, path: Path) -> Path:
    plt = _pyplot()
    rows = [("originals", f"K = {len(samples['originals'])} originals"),
            (BACC.name, "BACC coded"), (NeRCC.name, f"NeRCC coded\n(tuned lam_enc = {lam_enc:.2g})"),
            ("nercc_smooth", f"NeRCC coded\n(lam_enc = {SMOOTH_LAM_ENC:.0e})")]
    cols = max(len(samples["originals"]), len(samples["picked"]))
    lo, hi = float(samples["originals"].min()), float(samples["originals"].max())
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.95 * cols + 2.2, 1.25 * len(rows) + 0.5), squeeze=False)
    for r, (key, label) in enumerate(rows):
        images = samples[key]
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c < len(images):
                ax.imshow(np.clip(images[c], lo, hi), cmap="gray", vmin=lo, vmax=hi)
                if key != "originals":
                    ax.set_title(f"w{samples['picked'][c]}", fontsize=7, pad=2)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"Coded MNIST inputs from the same originals (N = {n_workers}: every "
                 f"{n_workers // len(samples['picked'])}th worker shown; pixels clipped to the originals' range)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- tables


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "n/a"
    if 0 < abs(mean) < 10 ** -digits:  # tiny values (untrained ViT): scientific, not 0.0000
        return f"{mean:.2e} ± {std:.1e}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def representative_s(report: dict) -> List[int]:
    s = report["stragglers"]
    if len(s) <= 4:
        return list(s)
    idx = np.unique(np.round(np.linspace(0, len(s) - 1, 4)).astype(int))
    return [s[i] for i in idx]


def table1(reports: List[dict]) -> str:
    """Markdown Table 1: per model, per scheme: MSE and RelAcc (mean ± std) at representative S."""
    out = []
    for rep in reports:
        s_list = representative_s(rep)
        title = MODEL_TITLES.get(rep["model"], rep["model"])
        out.append(f"### {title}: N = {rep['N']}, K = {rep['K']}, {rep['trials']} trials, base accuracy "
                   f"{rep['base_accuracy']:.4f} on the {rep['trials'] * rep['K']} evaluation draws "
                   f"({rep.get('eval_inputs_distinct', '?')} distinct {rep['eval_split']} inputs)\n")
        if not rep.get("trained", True):
            out.append("*Untrained weights (no offline checkpoint): accuracy is meaningless; MSE and top-1 agreement "
                       "with f still measure how well coding approximates f.*\n")
        # RelAcc needs a base accuracy; for an untrained model show top-1 agreement with f instead
        acc_key = "relacc" if rep["base_accuracy"] > 0 else "agreement"
        acc_name = "RelAcc" if acc_key == "relacc" else "top-1 agreement"
        header = "| scheme | " + " | ".join(f"MSE, S = {s}" for s in s_list) + " | " + \
                 " | ".join(f"{acc_name}, S = {s}" for s in s_list) + " |"
        out += [header, "|" + "---|" * (1 + 2 * len(s_list))]
        for scheme in SCHEMES:
            cells = [_fmt(rep["results"][str(s)][scheme]["mse_mean"], rep["results"][str(s)][scheme]["mse_std"], 4)
                     for s in s_list]
            cells += [_fmt(rep["results"][str(s)][scheme][f"{acc_key}_mean"],
                           rep["results"][str(s)][scheme][f"{acc_key}_std"], 3) for s in s_list]
            out.append(f"| {SCHEME_LABELS[scheme]} | " + " | ".join(cells) + " |")
        ratios = [rep["results"][str(s)][NeRCC.name]["mse_mean"] / rep["results"][str(s)][BACC.name]["mse_mean"]
                  for s in s_list]
        out.append("| NeRCC / BACC MSE | " + " | ".join(f"**{r:.3f}**" for r in ratios) + " |" + " |" * len(s_list))
        out.append("")
        all_ratios = [rep["results"][str(s)][NeRCC.name]["mse_mean"] / rep["results"][str(s)][BACC.name]["mse_mean"]
                      for s in rep["stragglers"]]
        out.append("All S: NeRCC / BACC MSE = " + ", ".join(
            f"{s}: {r:.3f}" for s, r in zip(rep["stragglers"], all_ratios)) + ".  ")
        lams = "; ".join(f"S={s}: ({v['lam_enc']:.3g}, {v['lam_dec']:.3g})" for s, v in rep["lams"].items())
        sources = sorted({v["source"] for v in rep["lams"].values()})
        out.append(f"Tuned NeRCC (lam_enc, lam_dec): {lams} — source: {', '.join(sources)}.  ")
        out.append(f"Command: `{rep['command']}` ({rep['seconds']} s, {rep['f_images']} model evaluations, "
                   f"{rep['created']}).\n")
    return "\n".join(out)


def write_readme(reports: List[dict], others: List[dict], sweep: dict | None, figures: Dict[str, str],
                 out_dir: Path) -> Path:
    lines = [
        "# Accuracy results (generated)",
        "",
        "Written by `nercc bench figures` from the JSON files in this folder; `nercc bench all` regenerates "
        "everything. How to read the numbers: [docs/bench.md](../../docs/bench.md).",
        "",
        "MSE = mean over the K inputs of a trial of ||f(x_k) - y_hat_k||² on softmax outputs; RelAcc = decoded "
        "top-1 accuracy on a trial / accuracy of the uncoded model on all evaluation inputs. Mean ± standard "
        "deviation over trials. NeRCC-0 = NeRCC with lam_enc = lam_dec = 0; NeRCC = tuned lams from the model's "
        "tuning profile (tuned on held-out inputs, never the evaluation inputs).",
        "",
        "## Table 1 (reproduction)",
        "",
        table1(reports),
    ]
    if others:
        lines += ["## Other settings (serving: `make demo` uses N = 12, K = 4; the serving tests N = 6, K = 2)", "",
                  table1(others)]
    if sweep:
        lines += ["## Smoothness sweep", "",
                  f"{sweep['model']} N = {sweep['N']}, K = {sweep['K']}, S = {sweep['S']}, {sweep['trials']} trials "
                  f"({sweep['split']} inputs): best (lam_enc, lam_dec) = ({sweep['best']['lam_enc']:.3g}, "
                  f"{sweep['best']['lam_dec']:.3g}) with MSE {sweep['best']['mse']:.5f}; NeRCC-0 "
                  f"{sweep['mse_nercc0']:.5f}; BACC {sweep['mse_bacc']:.5f}.  ",
                  f"Command: `{sweep['command']}`.", ""]
    lines += ["## Figures", ""]
    for name, desc in figures.items():
        lines += [f"- [{name}]({name}): {desc}"]
    if (out_dir / "coding_cost.json").exists():
        lines += ["", "Coding cost (time to build matrices, encode, decode vs a plain matmul): "
                  "[coding_cost.json](coding_cost.json), from `nercc bench cost` (see docs/coding.md)."]
    lines.append("")
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------------------------- command


def configure(parser) -> None:
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder with the JSON results")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs and README.md (default: --results)")
    parser.add_argument("--sweep", default="sweep_lenet5_N100_K20_S40.json",
                        help="sweep JSON (in --results) for the smoothness figure")
    parser.add_argument("--samples-inputs", type=int, default=20, help="K for the coded-samples figure")
    parser.add_argument("--samples-workers", type=int, default=100, help="N for the coded-samples figure")


def main(args) -> int:
    from nercc.models import load_model_info
    from nercc.profiles import lookup

    results_dir = Path(args.results)
    out = Path(args.out) if args.out else results_dir
    out.mkdir(parents=True, exist_ok=True)
    figures: Dict[str, str] = {}
    reports = load_accuracy_reports(results_dir)
    if reports:
        p = plot_accuracy(reports, out / "fig_accuracy.png")
        figures[p.name] = "MSE, RelAcc and NeRCC/BACC MSE ratio vs stragglers, one column per model"
        print(f"wrote {p}")
    else:
        print(f"no accuracy results in {results_dir}; run `nercc bench accuracy` first")
    sweep = None
    sweep_path = results_dir / args.sweep
    if sweep_path.exists():
        sweep = json.loads(sweep_path.read_text())
        p = plot_smoothness(sweep, out / "fig_smoothness.png")
        figures[p.name] = f"MSE vs lam_dec and vs lam_enc ({sweep['command']})"
        print(f"wrote {p}")
    K, N = args.samples_inputs, args.samples_workers
    lam_enc, _ = lookup(load_model_info("lenet5").dir, K, N, int(0.4 * N))
    samples = coded_samples(K, N, lam_enc)
    p = plot_coded_samples(samples, N, lam_enc, out / "fig_coded_samples.png")
    figures[p.name] = f"{K} MNIST test images and the coded inputs of BACC and NeRCC (N = {N})"
    print(f"wrote {p}")
    readme = write_readme(reports, load_other_reports(results_dir), sweep, figures, out)
    print(f"wrote {readme}")
    return 0
