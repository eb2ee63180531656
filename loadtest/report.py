"""Turn the Locust runs of ``nercc loadtest`` into numbers, a summary.json, a report.md and plots.

Input per (profile, scheme): the per-request JSON-lines log written by ``loadtest/locustfile.py`` (exact
latencies: Locust's own percentiles are rounded to 2 significant digits) and Locust's ``*_stats.csv``.

Definitions (also written into report.md):

- latency of a request: the client's end-to-end time for one batch of K inputs, from the call to the decoded
  K predictions (``CodedResult.total_ms``), failures included;
- pXX: the XX-th percentile of those latencies (numpy's linear interpolation between order statistics);
- MSE: mean over inputs of ||f(x_k) - y_hat_k||² between the served softmax output y_hat and the local
  onnxruntime model f on the same image;
- RelAcc: accuracy of the served predictions on the true MNIST labels / accuracy of f on the same images;
- compute per input: worker requests per input, as designed (uncoded 1, replication N // K, coded N / K) and as
  measured (mean worker requests sent per batch / K).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99, 99.9)
SCHEME_ORDER = ("uncoded", "replication", "bacc", "nercc")
SCHEME_LABELS = {"uncoded": "uncoded", "replication": "replication", "bacc": "BACC", "nercc": "NeRCC"}
SCHEME_COLORS = {"uncoded": "#7f7f7f", "replication": "#1f77b4", "bacc": "#ff7f0e", "nercc": "#d62728"}
PROFILE_ORDER = ("none", "bimodal", "shifted-exp", "dead-worker")


def pkey(p: float) -> str:
    """Percentile → summary key: 50 → 'p50', 99.9 → 'p99.9'."""
    return f"p{p:g}"


def read_requests(path: Path) -> tuple:
    """(request records, loop records) from a requests log; unreadable lines are an error, not skipped."""
    requests, loop_events = [], []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            (loop_events if "event" in record else requests).append(record)
    return requests, loop_events


def read_locust_stats(path: Path, name: str) -> dict | None:
    """Locust's own row for ``name`` in ``<prefix>_stats.csv`` (requests, failures, its rounded percentiles)."""
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") == name:
                return {
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "p50_ms": float(row["50%"]),
                    "p99_ms": float(row["99%"]),
                    "requests_per_s": float(row["Requests/s"]),
                }
    return None


def latency_percentiles(latencies_ms: Sequence[float]) -> Dict[str, float | None]:
    if len(latencies_ms) == 0:
        return {pkey(p): None for p in PERCENTILES}
    values = np.percentile(np.asarray(latencies_ms, dtype=float), PERCENTILES)
    return {pkey(p): round(float(v), 3) for p, v in zip(PERCENTILES, values)}


class Reference:
    """f and the labels on MNIST test batches, computed locally once per batch index (for MSE / RelAcc)."""

    def __init__(self, model: str, n_inputs: int):
        from nercc.data import load_mnist
        from nercc.models import OnnxModel, load_model_info
        from nercc.preprocessing import preprocess

        info = load_model_info(model)
        if info.dataset != "mnist":
            raise ValueError(f"the load test sends MNIST images; model {model!r} is a {info.dataset} model")
        self.images, self.labels = load_mnist("test")
        self.n_inputs = int(n_inputs)
        self.info = info
        self._preprocess = preprocess
        self.f = OnnxModel(info, threads=1)
        self._cache: Dict[int, np.ndarray] = {}

    def batch(self, index: int) -> tuple:
        start = int(index) * self.n_inputs
        return self.images[start:start + self.n_inputs], self.labels[start:start + self.n_inputs]

    def f_of(self, index: int) -> np.ndarray:
        if index not in self._cache:
            raw, _ = self.batch(index)
            self._cache[index] = self.f(self._preprocess(self.info, raw))
        return self._cache[index]


def accuracy_of(records: Iterable[dict], reference: Reference) -> dict:
    """MSE and RelAcc over the requests that carry predictions."""
    sq_errors, served_hits, base_hits, n = [], 0, 0, 0
    for record in records:
        predictions = record.get("predictions")
        if predictions is None:
            continue
        y_hat = np.asarray(predictions, dtype=float)
        f_x = reference.f_of(int(record["batch"]))
        _, labels = reference.batch(int(record["batch"]))
        if y_hat.shape != f_x.shape:
            continue  # a wrong-shaped answer is already a failure; it has no per-input error
        sq_errors.append(((f_x - y_hat) ** 2).sum(axis=1))
        served_hits += int((y_hat.argmax(axis=1) == labels).sum())
        base_hits += int((f_x.argmax(axis=1) == labels).sum())
        n += len(labels)
    if n == 0:
        return {"mse": None, "rel_acc": None, "accuracy": None, "base_accuracy": None, "n_inputs_checked": 0}
    return {
        "mse": float(np.concatenate(sq_errors).mean()),
        "rel_acc": round(served_hits / base_hits, 5) if base_hits else None,
        "accuracy": round(served_hits / n, 5),
        "base_accuracy": round(base_hits / n, 5),
        "n_inputs_checked": n,
    }


def designed_compute(scheme: str, n_workers: int, n_inputs: int) -> float:
    """Worker requests per input by design: uncoded 1, replication N // K, coded N / K."""
    if scheme == "uncoded":
        return 1.0
    if scheme == "replication":
        return float(n_workers // n_inputs)
    return n_workers / n_inputs


def summarize_scheme(records: List[dict], loop_events: List[dict], scheme: str, n_workers: int, n_inputs: int,
                     reference: Reference | None, locust_row: dict | None) -> dict:
    latencies = [r["ms"] for r in records]
    failures = [r for r in records if not r["ok"]]
    reasons: Dict[str, int] = {}
    for r in failures:
        reason = (r.get("error") or "?").split(":", 1)[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    duration_s = (max(r["t"] for r in records) - min(r["t"] - r["ms"] / 1e3 for r in records)) if records else 0.0
    sent = [r["n_requests"] for r in records if "n_requests" in r]
    summary = {
        "requests": len(records),
        "failures": len(failures),
        "failure_reasons": reasons,
        "late": sum(1 for r in records if r.get("late")),
        **{f"{k}_ms": v for k, v in latency_percentiles(latencies).items()},
        "mean_ms": round(float(np.mean(latencies)), 3) if latencies else None,
        "max_ms": round(float(np.max(latencies)), 3) if latencies else None,
        "throughput_batches_per_s": round(len(records) / duration_s, 2) if duration_s > 0 else None,
        "compute_per_input": designed_compute(scheme, n_workers, n_inputs),
        "measured_compute_per_input": round(float(np.mean(sent)) / n_inputs, 3) if sent else None,
        "mean_arrived": round(float(np.mean([r["n_arrived"] for r in records if "n_arrived" in r])), 3)
        if any("n_arrived" in r for r in records) else None,
        "max_in_flight": max((e.get("max_in_flight", 0) for e in loop_events), default=None),
    }
    if reference is not None:
        summary.update(accuracy_of(records, reference))
    if locust_row is not None:
        summary["locust"] = locust_row
    return summary


# ------------------------------------------------------------------------------------------------ report.md
def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(summary: dict) -> str:
    """The side-by-side table: one row per (profile, scheme)."""
    lines = [
        "| profile | scheme | requests | failures | p50 ms | p90 ms | p95 ms | p99 ms | p99.9 ms | batches/s | "
        "MSE | RelAcc | compute/input |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for profile, block in summary["profiles"].items():
        for scheme, s in block["schemes"].items():
            lines.append(
                f"| {profile} | {SCHEME_LABELS.get(scheme, scheme)} | {s['requests']} | {s['failures']} | "
                f"{_fmt(s['p50_ms'])} | {_fmt(s['p90_ms'])} | {_fmt(s['p95_ms'])} | {_fmt(s['p99_ms'])} | "
                f"{_fmt(s['p99.9_ms'])} | {_fmt(s['throughput_batches_per_s'])} | {_fmt(s.get('mse'), 4)} | "
                f"{_fmt(s.get('rel_acc'), 3)} | {s['compute_per_input']:g} |"
            )
    return "\n".join(lines)


def target_checks(summary: dict) -> List[str]:
    """The issue's targets, each stated with the measured numbers and met / not met."""
    out = []
    bimodal = summary["profiles"].get("bimodal", {}).get("schemes", {})
    if {"nercc", "uncoded", "replication"} <= set(bimodal):
        ne, un, rep = bimodal["nercc"], bimodal["uncoded"], bimodal["replication"]
        if None not in (ne["p99_ms"], un["p99_ms"], rep["p99_ms"]):
            ratio = ne["p99_ms"] / un["p99_ms"]
            out.append(
                f"- bimodal, NeRCC p99 <= 0.5 x uncoded p99: {ne['p99_ms']:.1f} ms vs {un['p99_ms']:.1f} ms "
                f"(ratio {ratio:.2f}) — **{'met' if ratio <= 0.5 else 'not met'}**."
            )
            out.append(
                f"- bimodal, NeRCC p99 below replication p99: {ne['p99_ms']:.1f} ms vs {rep['p99_ms']:.1f} ms — "
                f"**{'met' if ne['p99_ms'] < rep['p99_ms'] else 'not met'}**; p99.9: {_fmt(ne['p99.9_ms'])} ms vs "
                f"{_fmt(rep['p99.9_ms'])} ms (uncoded {_fmt(un['p99.9_ms'])} ms)."
            )
        if ne.get("rel_acc") is not None:
            out.append(f"- bimodal, NeRCC RelAcc >= 0.95: {ne['rel_acc']:.3f} — "
                       f"**{'met' if ne['rel_acc'] >= 0.95 else 'not met'}**.")
    none = summary["profiles"].get("none", {}).get("schemes", {})
    if {"nercc", "uncoded"} <= set(none) and none["uncoded"]["p50_ms"]:
        ratio = none["nercc"]["p50_ms"] / none["uncoded"]["p50_ms"]
        out.append(
            f"- no stragglers, NeRCC p50 within 1.5 x uncoded p50: {none['nercc']['p50_ms']:.1f} ms vs "
            f"{none['uncoded']['p50_ms']:.1f} ms (ratio {ratio:.2f}) — **{'met' if ratio <= 1.5 else 'not met'}**."
        )
    return out


def _sentences(profile: str, block: dict, settings: dict) -> List[str]:
    """One sentence per number, per scheme."""
    n, k = settings["n_workers"], settings["n_inputs"]
    out = []
    for scheme, s in block["schemes"].items():
        label = SCHEME_LABELS.get(scheme, scheme)
        if not s["requests"]:
            out.append(f"- **{label}** completed no request.")
            continue
        reasons = ", ".join(f"{c} {r}" for r, c in s["failure_reasons"].items()) or "none"
        text = (
            f"- **{label}** sent {s['requests']} batches of K = {k} in {settings['duration_s']:g} s with "
            f"{settings['users']} users ({_fmt(s['throughput_batches_per_s'])} batches/s); {s['failures']} failed "
            f"(reasons: {reasons}). Half of the batches took at most {_fmt(s['p50_ms'])} ms (p50), 9 in 10 at "
            f"most {_fmt(s['p90_ms'])} ms (p90), 19 in 20 at most {_fmt(s['p95_ms'])} ms (p95), 99 in 100 at most "
            f"{_fmt(s['p99_ms'])} ms (p99) and 999 in 1000 at most {_fmt(s['p99.9_ms'])} ms (p99.9); the slowest "
            f"took {_fmt(s['max_ms'])} ms."
        )
        if s.get("mse") is not None:
            text += (
                f" Its predictions differ from the local model's by a mean squared error of {_fmt(s['mse'], 5)} "
                f"per input (softmax outputs, {s['n_inputs_checked']} inputs checked) and are right as often as "
                f"the local model's times {_fmt(s['rel_acc'], 3)} (RelAcc; accuracy {_fmt(s['accuracy'], 4)} vs "
                f"{_fmt(s['base_accuracy'], 4)})."
            )
        text += (
            f" Each input cost {s['compute_per_input']:g} worker requests by design "
            f"({'1' if scheme == 'uncoded' else (f'N // K = {n} // {k}' if scheme == 'replication' else f'N / K = {n} / {k}')}; "
            f"measured {_fmt(s['measured_compute_per_input'], 2)})."
        )
        out.append(text)
    return out


def write_markdown(path: Path, summary: dict, plots: Dict[str, str]) -> None:
    st = summary["settings"]
    lines = [
        "# nercc load test: tail latency of uncoded, replication, BACC and NeRCC",
        "",
        f"Created {summary['created']} by `{summary['command']}`.",
        "",
        "## Setting",
        f"- Model **{st['model']}** on MNIST test images, K = {st['n_inputs']} images per batch, N = "
        f"{st['n_workers']} worker tritonservers + 1 master (encoder), all on this machine ({st['cpu_count']} CPU "
        f"cores shared with everything else running on it).",
        f"- Locust, closed loop: {st['users']} users (spawn rate {st['spawn_rate']:g}/s), each sends its next batch "
        f"as soon as the previous one is answered; {st['duration_s']:g} s per scheme, schemes one after another "
        f"on the same cluster{'' if st['fresh_cluster_per_scheme'] is False else ' (dead-worker: a fresh cluster per scheme)'}.",
        f"- Deadline {st['deadline_ms']:g} ms per batch (hard timeout {st['hard_timeout_ms']:g} ms); coded "
        f"policy `{st['coded_policy']}` (decode as soon as M answers are in, never wait past the deadline); "
        f"uncoded waits for its K workers, replication (r = N // K = {st['n_workers'] // st['n_inputs']}) for the "
        f"first copy of each input.",
        "- A request **fails** when the client raised (fewer answers than it needs within the hard timeout), "
        "when the result is late (an answer it needed arrived after the deadline) or when the predictions are "
        "not K finite rows.",
        "- Latencies are the client's end-to-end time per batch (call → K decoded predictions), written for "
        "every request by the locustfile; percentiles are exact over all requests, failures included.",
        "",
        "## Results",
        "",
        summary_table(summary),
        "",
    ]
    checks = target_checks(summary)
    if checks:
        lines += ["### Targets", "", *checks, ""]
    for profile, block in summary["profiles"].items():
        lines += [f"### Profile `{profile}`: {block['description']}", ""]
        lines += [f"Worker straggler profile: `{block['straggler']}`."
                  + (f" Worker {block['killed_worker']} was killed (SIGKILL) {block['kill_after_s']:g} s into each "
                     "scheme's run." if block.get("killed_worker") is not None else ""), ""]
        lines += _sentences(profile, block, st)
        if profile in plots:
            lines += ["", f"![latency CDF, {profile}]({plots[profile]})"]
        lines.append("")
    if "p99" in plots:
        lines += ["## p99 and p99.9 by profile", "", f"![p99 by profile]({plots['p99']})", ""]
    lines += ["## How to read this", "", *st.get("notes", []), ""]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------ plots
def plot_cdf(path: Path, profile: str, latencies: Dict[str, Sequence[float]], deadline_ms: float, title: str) -> None:
    """CDF per scheme on a log time axis (left) and its tail, 1 - CDF on log-log (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.8))
    for scheme in [s for s in SCHEME_ORDER if s in latencies] + [s for s in latencies if s not in SCHEME_ORDER]:
        values = np.sort(np.asarray(latencies[scheme], dtype=float))
        if values.size == 0:
            continue
        cdf = np.arange(1, values.size + 1) / values.size
        style = dict(color=SCHEME_COLORS.get(scheme), lw=2, label=f"{SCHEME_LABELS.get(scheme, scheme)} "
                     f"(p99 {np.percentile(values, 99):.0f} ms)")
        ax.step(values, cdf, where="post", **style)
        tail.step(values, 1.0 - cdf + 1.0 / values.size, where="post", **style)
    for axis in (ax, tail):
        axis.set_xscale("log")
        axis.axvline(deadline_ms, color="k", ls=":", lw=1)
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xlabel("end-to-end latency per batch (ms, log scale)")
    ax.text(deadline_ms, 0.02, f" deadline {deadline_ms:g} ms", fontsize=8)
    ax.set_ylabel("fraction of batches answered within x")
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title("latency CDF")
    tail.set_yscale("log")
    tail.set_ylabel("fraction of batches slower than x (log)")
    for level, name in ((1e-2, "p99"), (1e-3, "p99.9")):
        tail.axhline(level, color="k", ls="--", lw=0.8, alpha=0.6)
        tail.text(tail.get_xlim()[0], level, f" {name}", va="bottom", fontsize=8)
    tail.set_title("tail (1 - CDF)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_p99_bars(path: Path, summary: dict) -> None:
    """Grouped bars: p99 (solid) and p99.9 (hatched, behind) per profile and scheme, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(summary["profiles"])
    schemes = [s for s in SCHEME_ORDER if any(s in summary["profiles"][p]["schemes"] for p in profiles)]
    width = 0.8 / max(len(schemes), 1)
    fig, ax = plt.subplots(figsize=(2.6 + 2.2 * len(profiles), 4.8))
    for j, scheme in enumerate(schemes):
        xs = np.arange(len(profiles)) + (j - (len(schemes) - 1) / 2) * width
        p99 = [summary["profiles"][p]["schemes"].get(scheme, {}).get("p99_ms") or np.nan for p in profiles]
        p999 = [summary["profiles"][p]["schemes"].get(scheme, {}).get("p99.9_ms") or np.nan for p in profiles]
        color = SCHEME_COLORS.get(scheme)
        ax.bar(xs, p999, width * 0.92, color=color, alpha=0.35, hatch="//", edgecolor=color)
        ax.bar(xs, p99, width * 0.92, color=color, label=SCHEME_LABELS.get(scheme, scheme))
        for x, v in zip(xs, p99):
            if np.isfinite(v):
                ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(profiles)))
    ax.set_xticklabels(profiles)
    ax.set_xlabel("straggler profile")
    ax.set_ylabel("latency per batch (ms, log scale)")
    deadline = summary["settings"]["deadline_ms"]
    ax.axhline(deadline, color="k", ls=":", lw=1)
    ax.text(-0.45, deadline, f"deadline {deadline:g} ms", fontsize=8, va="bottom")
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch

    handles.append(Patch(facecolor="#bbbbbb", hatch="//", edgecolor="#777777", alpha=0.6))
    labels.append("p99.9 (hatched, behind)")
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    n, k = summary["settings"]["n_workers"], summary["settings"]["n_inputs"]
    ax.set_title(f"p99 (solid) and p99.9 (hatched) per batch, {summary['settings']['model']}, N = {n}, K = {k}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
