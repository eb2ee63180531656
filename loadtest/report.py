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
import math
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
    """Exact percentiles; ``inf`` marks a request that was never answered, and a percentile that reaches into
    those is None (no latency: that fraction of batches got no answer at all)."""
    if len(latencies_ms) == 0:
        return {pkey(p): None for p in PERCENTILES}
    with np.errstate(invalid="ignore"):
        values = np.percentile(np.asarray(latencies_ms, dtype=float), PERCENTILES)
    return {pkey(p): round(float(v), 3) if np.isfinite(v) else None for p, v in zip(PERCENTILES, values)}


def answered(record: dict) -> bool:
    """The client returned a result (possibly late or malformed); False when it raised (no answer at all)."""
    return "n_arrived" in record


def latency_or_inf(record: dict) -> float:
    return float(record["ms"]) if answered(record) else math.inf


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


def _span_s(records: List[dict]) -> float:
    """Seconds from the first request's start to the last one's end."""
    if not records:
        return 0.0
    return max(r["t"] for r in records) - min(r["t"] - r["ms"] / 1e3 for r in records)


def summarize_scheme(runs: List[tuple], scheme: str, n_workers: int, n_inputs: int,
                     reference: Reference | None) -> dict:
    """Numbers for one scheme from its runs: a list of (request records, loop events, Locust's row or None)."""
    records = [r for run_records, _, _ in runs for r in run_records]
    loop_events = [e for _, run_events, _ in runs for e in run_events]
    latencies = [latency_or_inf(r) for r in records]
    finite = [v for v in latencies if math.isfinite(v)]
    failures = [r for r in records if not r["ok"]]
    reasons: Dict[str, int] = {}
    for r in failures:
        reason = "late" if r.get("late") else (r.get("error") or "?").split(":", 1)[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    duration_s = sum(_span_s(run_records) for run_records, _, _ in runs)
    sent = [r["n_requests"] for r in records if "n_requests" in r]
    arrived = [r["n_arrived"] for r in records if "n_arrived" in r]
    summary = {
        "requests": len(records),
        "failures": len(failures),
        "failure_reasons": reasons,
        "late": sum(1 for r in records if r.get("late")),
        **{f"{k}_ms": v for k, v in latency_percentiles(latencies).items()},
        "unanswered": len(records) - len(finite),
        "mean_ms": round(float(np.mean(finite)), 3) if finite else None,  # over answered batches
        "max_ms": round(float(np.max(finite)), 3) if finite else None,
        "throughput_batches_per_s": round(len(records) / duration_s, 2) if duration_s > 0 else None,
        "compute_per_input": designed_compute(scheme, n_workers, n_inputs),
        "measured_compute_per_input": round(float(np.mean(sent)) / n_inputs, 3) if sent else None,
        "mean_arrived": round(float(np.mean(arrived)), 3) if arrived else None,
        "max_in_flight": max((e.get("max_in_flight", 0) for e in loop_events), default=None),
        # where the time goes (answered batches): encode = master round trip (coded) or local preprocessing,
        # fanout = first worker request sent -> decision to decode, decode = the K x |F| product
        "breakdown_ms": {
            part: {pkey(p): round(float(v), 2) for p, v in zip((50, 99), np.percentile(values, (50, 99)))}
            for part in ("encode_ms", "fanout_ms", "decode_ms")
            if (values := [r[part] for r in records if part in r])
        },
    }
    if reference is not None:
        summary.update(accuracy_of(records, reference))
    rows = [row for _, _, row in runs if row is not None]
    if rows:
        summary["locust"] = {
            "requests": sum(row["requests"] for row in rows),
            "failures": sum(row["failures"] for row in rows),
            "per_run": rows,
        }
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


def _ms(value) -> str:
    """A latency cell: None means the percentile falls among batches that were never answered."""
    return "never" if value is None else f"{value:.1f}"


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
                f"{_ms(s['p50_ms'])} | {_ms(s['p90_ms'])} | {_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | "
                f"{_ms(s['p99.9_ms'])} | {_fmt(s['throughput_batches_per_s'])} | {_fmt(s.get('mse'), 4)} | "
                f"{_fmt(s.get('rel_acc'), 3)} | {s['compute_per_input']:g} |"
            )
    return "\n".join(lines)


def _as_ms(value) -> float:
    """For comparisons: a percentile among never-answered batches is infinitely slow."""
    return math.inf if value is None else float(value)


def target_checks(summary: dict) -> List[str]:
    """The issue's targets, each stated with the measured numbers and met / not met."""
    out = []
    bimodal = summary["profiles"].get("bimodal", {}).get("schemes", {})
    if {"nercc", "uncoded", "replication"} <= set(bimodal):
        ne, un, rep = bimodal["nercc"], bimodal["uncoded"], bimodal["replication"]
        ratio = _as_ms(ne["p99_ms"]) / _as_ms(un["p99_ms"])
        out.append(
            f"- bimodal, NeRCC p99 <= 0.5 x uncoded p99: {_ms(ne['p99_ms'])} ms vs {_ms(un['p99_ms'])} ms "
            f"(ratio {ratio:.2f}) — **{'met' if ratio <= 0.5 else 'not met'}**."
        )
        out.append(
            f"- bimodal, NeRCC p99 below replication p99: {_ms(ne['p99_ms'])} ms vs {_ms(rep['p99_ms'])} ms — "
            f"**{'met' if _as_ms(ne['p99_ms']) < _as_ms(rep['p99_ms']) else 'not met'}**; p99.9: "
            f"{_ms(ne['p99.9_ms'])} ms vs {_ms(rep['p99.9_ms'])} ms (uncoded {_ms(un['p99.9_ms'])} ms)."
        )
        if ne.get("rel_acc") is not None:
            out.append(f"- bimodal, NeRCC RelAcc >= 0.95: {ne['rel_acc']:.3f} — "
                       f"**{'met' if ne['rel_acc'] >= 0.95 else 'not met'}**.")
    none = summary["profiles"].get("none", {}).get("schemes", {})
    if {"nercc", "uncoded"} <= set(none) and none["uncoded"]["p50_ms"]:
        ratio = _as_ms(none["nercc"]["p50_ms"]) / none["uncoded"]["p50_ms"]
        out.append(
            f"- no stragglers, NeRCC p50 within 1.5 x uncoded p50: {_ms(none['nercc']['p50_ms'])} ms vs "
            f"{_ms(none['uncoded']['p50_ms'])} ms (ratio {ratio:.2f}) — **{'met' if ratio <= 1.5 else 'not met'}**."
        )
    return out


def _within(value, what: str) -> str:
    return f"{what} at most {value:.1f} ms" if value is not None else f"{what}: not all of them were answered"


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
        unanswered = f"; {s['unanswered']} got no answer at all" if s.get("unanswered") else ""
        text = (
            f"- **{label}** sent {s['requests']} batches of K = {k} in {settings['duration_s']:g} s with "
            f"{settings.get('users_per_scheme', settings['users'])} users ({_fmt(s['throughput_batches_per_s'])} batches/s); {s['failures']} failed "
            f"(reasons: {reasons}){unanswered}. "
            f"{_within(s['p50_ms'], 'Half of the batches took')} (p50), {_within(s['p90_ms'], '9 in 10')} (p90), "
            f"{_within(s['p95_ms'], '19 in 20')} (p95), {_within(s['p99_ms'], '99 in 100')} (p99) and "
            f"{_within(s['p99.9_ms'], '999 in 1000')} (p99.9); the slowest answered batch took {_fmt(s['max_ms'])} ms."
        )
        parts = s.get("breakdown_ms") or {}
        if {"encode_ms", "fanout_ms", "decode_ms"} <= set(parts):
            where = "the master's encode round trip" if scheme in ("bacc", "nercc") else "local preprocessing"
            text += (
                f" Of that time, {where} took {parts['encode_ms']['p50']:.1f} ms at p50 and "
                f"{parts['encode_ms']['p99']:.1f} ms at p99, waiting for the workers {parts['fanout_ms']['p50']:.1f} / "
                f"{parts['fanout_ms']['p99']:.1f} ms and decoding {parts['decode_ms']['p50']:.2f} / "
                f"{parts['decode_ms']['p99']:.2f} ms."
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


def _load_sentence(st: dict) -> str:
    fresh = " (dead-worker: a fresh cluster for every run)" if st.get("fresh_cluster_per_scheme") else ""
    if st.get("rate_per_user"):
        per_scheme = st.get("users_per_scheme", st["users"]) * st["rate_per_user"]
        how = (f"each starts a batch every {1 / st['rate_per_user']:.2g} s (constant pacing, random phase; offered "
               f"load {per_scheme:g} batches/s per scheme, the same for every scheme) and has at most one in flight")
    else:
        how = "closed loop: each sends its next batch as soon as the previous one is answered"
    rounds = st.get("rounds", 1)
    if st.get("together"):
        return (f"- Locust: {st['users']} users split evenly among the schemes ({st['users_per_scheme']} each, one "
                f"Locust process, **all schemes at the same time** on the same cluster{fresh}); {how}; "
                f"{st['duration_s']:g} s in {rounds} run(s).")
    order = (f" in {rounds} rounds of {st['run_s']:g} s with the scheme order reversed every other round"
             if rounds > 1 else "")
    return (f"- Locust: {st['users']} users (spawn rate {st['spawn_rate']:g}/s); {how}; {st['duration_s']:g} s per "
            f"scheme{order}, schemes one after another on the same cluster{fresh}.")


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
        _load_sentence(st),
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
                  + (f" Worker {block['killed_worker']} was killed (SIGKILL) {block['kill_after_s']:g} s after the first request of each "
                     "run; the batches before the kill are in the numbers too." if block.get("killed_worker") is not None else ""), ""]
        lines += _sentences(profile, block, st)
        if profile in plots:
            lines += ["", f"![latency CDF, {profile}]({plots[profile]})"]
        lines.append("")
    if "p99" in plots:
        lines += ["## p99 and p99.9 by profile", "", f"![p99 by profile]({plots['p99']})", ""]
    lines += ["## How to read this", "", *st.get("notes", []), ""]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------ plots
_MS_TICKS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _ms_ticks(axis, lo: float, hi: float, which: str = "x") -> None:
    """Log axis in ms with plain 1-2-5 labels (matplotlib's minor labels like '3x10^0' overlap)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ticks = [t for t in _MS_TICKS if lo <= t <= hi] or [lo, hi]
    target = axis.xaxis if which == "x" else axis.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(lambda v, _pos: f"{v:g}")
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


def plot_cdf(path: Path, profile: str, latencies: Dict[str, Sequence[float]], deadline_ms: float, title: str) -> None:
    """CDF per scheme on a log time axis (left) and its tail, 1 - CDF on log-log (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.8))
    for scheme in [s for s in SCHEME_ORDER if s in latencies] + [s for s in latencies if s not in SCHEME_ORDER]:
        every = np.sort(np.asarray(latencies[scheme], dtype=float))  # inf: never answered
        values = every[np.isfinite(every)]
        if values.size == 0:
            continue
        cdf = np.arange(1, values.size + 1) / every.size  # never-answered batches keep the curve below 1
        p99 = latency_percentiles(every)["p99"]
        style = dict(color=SCHEME_COLORS.get(scheme), lw=2, label=f"{SCHEME_LABELS.get(scheme, scheme)} "
                     f"(p99 {'never' if p99 is None else f'{p99:.0f} ms'})")
        ax.step(values, cdf, where="post", **style)
        tail.step(values, 1.0 - np.arange(values.size) / every.size, where="post", **style)  # share >= x
    finite = [v for vs in latencies.values() for v in vs if np.isfinite(v)]
    lo, hi = (min(finite) * 0.8, max(max(finite), deadline_ms) * 1.25) if finite else (1.0, 1000.0)
    for axis in (ax, tail):
        axis.set_xscale("log")
        axis.set_xlim(lo, hi)
        _ms_ticks(axis, lo, hi, "x")
        axis.axvline(deadline_ms, color="k", ls=":", lw=1)
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xlabel("end-to-end latency per batch (ms, log scale)")
    ax.text(deadline_ms, 0.5, f"deadline {deadline_ms:g} ms ", fontsize=8, rotation=90, ha="right", va="center")
    ax.set_ylabel("fraction of batches answered within x")
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title("latency CDF")
    tail.set_yscale("log")
    tail.set_ylabel("fraction of batches taking x or longer (log)")
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
    never = []  # (x, color) of p99s that fall among never-answered batches
    fig, ax = plt.subplots(figsize=(max(7.0, 2.6 + 2.2 * len(profiles)), 5.0))
    for j, scheme in enumerate(schemes):
        xs = np.arange(len(profiles)) + (j - (len(schemes) - 1) / 2) * width
        p99 = [summary["profiles"][p]["schemes"].get(scheme, {}).get("p99_ms") or np.nan for p in profiles]
        p999 = [summary["profiles"][p]["schemes"].get(scheme, {}).get("p99.9_ms") or np.nan for p in profiles]
        color = SCHEME_COLORS.get(scheme)
        ax.bar(xs, p999, width * 0.92, color=color, alpha=0.35, hatch="//", edgecolor=color)
        ax.bar(xs, p99, width * 0.92, color=color, label=SCHEME_LABELS.get(scheme, scheme))
        for x, v, profile in zip(xs, p99, profiles):
            if np.isfinite(v):
                ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
            elif summary["profiles"][profile]["schemes"].get(scheme, {}).get("requests"):
                never.append((x, color))
    ax.set_yscale("log")
    shown = [v for p in profiles for sc in summary["profiles"][p]["schemes"].values()
             for v in (sc.get("p99_ms"), sc.get("p99.9_ms")) if v]
    deadline = summary["settings"]["deadline_ms"]
    lo, top = (min(shown) / 2, max(max(shown), deadline) * 2) if shown else (1.0, 1000.0)
    ax.set_ylim(lo, top)
    _ms_ticks(ax, lo, top, "y")
    for x, color in never:  # a p99 among unanswered batches: a faint full-height bar that says so
        ax.bar(x, top - lo, width * 0.92, bottom=lo, color=color, alpha=0.12, edgecolor=color, ls="--")
        ax.text(x, math.sqrt(lo * top), "p99: no answer", color=color, rotation=90, ha="center", va="center",
                fontsize=8, fontweight="bold")
    ax.set_xlim(-0.5, len(profiles) - 0.5)
    ax.set_xticks(np.arange(len(profiles)))
    ax.set_xticklabels(profiles)
    ax.set_xlabel("straggler profile")
    ax.set_ylabel("latency per batch (ms, log scale)")
    ax.axhline(deadline, color="k", ls=":", lw=1)
    ax.text(0.005, deadline, f"deadline {deadline:g} ms", fontsize=8, va="bottom", ha="left",
            transform=ax.get_yaxis_transform())
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch

    handles.append(Patch(facecolor="#bbbbbb", hatch="//", edgecolor="#777777", alpha=0.6))
    labels.append("p99.9 (hatched, behind)")
    ax.legend(handles, labels, fontsize=8, loc="upper left", ncol=2)
    n, k = summary["settings"]["n_workers"], summary["settings"]["n_inputs"]
    ax.set_title(f"p99 (solid) and p99.9 (hatched) latency per batch\n{summary['settings']['model']}, N = {n}, "
                 f"K = {k}, {summary['settings']['users']} users")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
