"""Turn the engine logs of ``nercc loadtest`` into numbers, summary.json, report.md and plots.

Input: the per-request JSON-lines logs the engines write (``nercc.loadtest.workload.request_record``: exact latencies,
per-worker round trips, predictions; ``event`` lines with CPU snapshots from /proc).

Definitions (also written into report.md):

- latency of a batch: the client's end-to-end time for one batch of K inputs, from the call to the decoded K
  predictions (``CodedResult.total_ms``), failures included; a batch that got no answer is "never" answered;
- pXX: the XX-th percentile of those latencies (numpy's linear interpolation between order statistics);
- offered load: batches the schedule started per second (its span: first to last arrival); throughput: answered
  batches per second (first arrival to last answer);
- CPU ms per batch: CPU time (user + system, /proc) of the tritonservers and their Python stubs, plus the load
  generator process (which holds the client), between the run's first and last batch, over the batches;
- MSE: mean over inputs of ||f(x_k) - y_hat_k||^2 between the served softmax output y_hat and the local
  onnxruntime model f on the same input; RelAcc: accuracy of the served predictions on the true labels /
  accuracy of f on the same inputs.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from nercc import stats as nstats
from nercc.coding.registry import (
    BACC_NAME,
    BACC_SYS_NAME,
    CODED_SCHEMES,
    HEDGED,
    NERCC_NAME,
    NERCC_SYS_NAME,
    REPLICATION,
    SCHEME_ORDER,
    SCHEMES,
    UNCODED,
)
from nercc.policy import parse_policy

PERCENTILES = (50, 90, 95, 99, 99.9)
SCHEME_LABELS = {name: info.label for name, info in SCHEMES.items()}
SCHEME_COLORS = {UNCODED: "#7f7f7f", REPLICATION: "#1f77b4", HEDGED: "#2ca02c", BACC_NAME: "#ff7f0e",
                 NERCC_NAME: "#d62728", BACC_SYS_NAME: "#8c564b", NERCC_SYS_NAME: "#9467bd"}
#: Engines agree when their p50 and p99 intervals overlap and their p50s (medians) differ by at most this share.
AGREEMENT = 0.20
#: Percentiles that carry a 95 % interval (``p50_ms_ci`` ... in summary.json; nercc.stats.percentile_interval).
CI_PERCENTILES = (50, 99, 99.9)


def pkey(p: float) -> str:
    """Percentile -> summary key: 50 -> 'p50', 99.9 -> 'p99.9'."""
    return f"p{p:g}"


def label(scheme: str) -> str:
    return SCHEME_LABELS.get(scheme, scheme)


# ------------------------------------------------------------------------------------------------ reading
def read_log(path: Path) -> tuple:
    """(request records, event records) of one engine log; unreadable lines are an error, not skipped."""
    requests, events = [], []
    path = Path(path)
    if not path.exists() and Path(str(path) + ".gz").exists():
        path = Path(str(path) + ".gz")  # committed logs are gzipped
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            (events if "event" in record else requests).append(record)
    return requests, events


def latency_percentiles(latencies_ms: Sequence[float]) -> Dict[str, float | None]:
    """Exact percentiles; ``inf`` marks a batch that was never answered, and a percentile that reaches into those
    is None (no latency: that share of batches got no answer at all)."""
    if len(latencies_ms) == 0:
        return {pkey(p): None for p in PERCENTILES}
    with np.errstate(invalid="ignore"):
        values = np.percentile(np.asarray(latencies_ms, dtype=float), PERCENTILES)
    return {pkey(p): round(float(v), 3) if np.isfinite(v) else None for p, v in zip(PERCENTILES, values)}


def latency_intervals(latencies_ms: Sequence[float]) -> Dict[str, list | None]:
    """``{'p50_ms_ci': [lo, hi], 'p99_ms_ci': ..., 'p99.9_ms_ci': ...}``: the distribution-free 95 % interval of
    each percentile (order statistics, binomial ranks: :func:`nercc.stats.quantile_interval`). An end that reaches
    batches never answered, or that the batches cannot bound (a p99.9 from fewer than ~4,000), is None."""
    if len(latencies_ms) == 0:
        return {f"{pkey(p)}_ms_ci": None for p in CI_PERCENTILES}
    return {f"{pkey(p)}_ms_ci": nstats.json_interval(nstats.percentile_interval(latencies_ms, p))
            for p in CI_PERCENTILES}


def answered(record: dict) -> bool:
    """The client returned a result (possibly late); False when it raised (no answer at all)."""
    return "n_arrived" in record


def latency_or_inf(record: dict) -> float:
    return float(record["ms"]) if answered(record) else math.inf


def cpu_per_batch(events: List[dict], n_batches: int, step=None) -> dict:
    """CPU ms per batch between a run's start and end snapshots: servers (+ stubs), the generator process, total."""
    start = [e for e in events if e.get("event") == "cpu" and e.get("phase") == "start" and e.get("step") == step]
    end = [e for e in events if e.get("event") == "cpu" and e.get("phase") == "end" and e.get("step") == step]
    if not start or not end or n_batches <= 0:
        return {"servers": None, "load_generator": None, "total": None}
    s, e = start[0], end[-1]
    process = (e["self_cpu_s"] - s["self_cpu_s"]) * 1e3 / n_batches
    servers = None
    if s.get("servers_cpu_s") is not None and e.get("servers_cpu_s") is not None:
        servers = (e["servers_cpu_s"] - s["servers_cpu_s"]) * 1e3 / n_batches
    total = process + servers if servers is not None else None
    wall = e["wall"] - s["wall"]
    return {"servers": _r(servers), "load_generator": _r(process), "total": _r(total),
            "machine_cores_busy": _r((total if total is not None else process) * n_batches / 1e3 / wall)
            if wall > 0 else None}


def _r(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


# ------------------------------------------------------------------------------------------------ accuracy
class Reference:
    """f and the labels on the model's test batches, computed locally once per batch index (for MSE / RelAcc)."""

    def __init__(self, model: str, n_inputs: int):
        from nercc.loadtest.workload import Batches
        from nercc.models import OnnxModel, load_model_info
        from nercc.preprocessing import preprocess

        self.info = load_model_info(model)
        self.batches = Batches(model, n_inputs)
        self.n_inputs = int(n_inputs)
        self._preprocess = preprocess
        self.f = OnnxModel(self.info, threads=1)
        self._cache: Dict[int, np.ndarray] = {}

    def inputs(self, index: int) -> np.ndarray:
        return np.asarray(self._preprocess(self.info, self.batches.get(index)), dtype=np.float32)

    def labels(self, index: int) -> np.ndarray:
        start = int(index) * self.n_inputs
        return self.batches.labels[start:start + self.n_inputs]

    def f_of(self, index: int) -> np.ndarray:
        if index not in self._cache:
            self._cache[index] = self.f(self.inputs(index))
        return self._cache[index]


def accuracy_of(records: Iterable[dict], reference: Reference) -> dict:
    """MSE and RelAcc over the batches that carry predictions."""
    sq_errors, served_hits, base_hits, n = [], 0, 0, 0
    per_batch: List[tuple] = []  # (served hits, base hits) per batch: RelAcc's bootstrap unit
    for record in records:
        predictions = record.get("predictions")
        if predictions is None:
            continue
        y_hat = np.asarray(predictions, dtype=float)
        f_x = reference.f_of(int(record["batch"]))
        labels = reference.labels(int(record["batch"]))
        if y_hat.shape != f_x.shape:
            continue  # a wrong-shaped answer is already a failure; it has no per-input error
        sq_errors.append(((f_x - y_hat) ** 2).sum(axis=1))
        per_batch.append((int((y_hat.argmax(axis=1) == labels).sum()), int((f_x.argmax(axis=1) == labels).sum())))
        served_hits += per_batch[-1][0]
        base_hits += per_batch[-1][1]
        n += len(labels)
    if n == 0:
        return {"mse": None, "rel_acc": None, "rel_acc_ci": None, "accuracy": None, "base_accuracy": None,
                "n_inputs_checked": 0}
    return {
        "mse": float(np.concatenate(sq_errors).mean()),
        "rel_acc": round(served_hits / base_hits, 5) if base_hits else None,
        "rel_acc_ci": rel_acc_interval(per_batch),
        "accuracy": round(served_hits / n, 5),
        "base_accuracy": round(base_hits / n, 5),
        "n_inputs_checked": n,
    }


def rel_acc_interval(per_batch: Sequence[tuple]) -> list | None:
    """95 % interval of RelAcc = sum(served hits) / sum(base hits) from (served, base) hits per batch: a
    bootstrap over batches (a batch's K inputs are decoded together, so the batch is the independent unit;
    :func:`nercc.stats.ratio_of_sums_interval`)."""
    if not per_batch or sum(b for _, b in per_batch) <= 0:
        return None
    served, base = zip(*per_batch)
    return nstats.json_interval(nstats.ratio_of_sums_interval(served, base), 5)


def designed_compute(scheme: str, n_workers: int, n_inputs: int) -> float | None:
    """Worker requests per input by design: uncoded 1, replication N // K, coded N / K; hedged 1 to 2."""
    if scheme == UNCODED:
        return 1.0
    if scheme == REPLICATION:
        return float(n_workers // n_inputs)
    if scheme in CODED_SCHEMES:
        return n_workers / n_inputs
    return None


# ------------------------------------------------------------------------------------------------ one run
def run_stats(records: List[dict], events: List[dict], scheme: str, n_workers: int, n_inputs: int,
              reference: Reference | None, step=None, policy: str | None = None) -> dict:
    """The numbers of one engine run (or one ramp step) of one scheme; with the coded ``policy`` of the run, a
    coded scheme's order-statistic floor too (:func:`floor_stats`)."""
    latencies = [latency_or_inf(r) for r in records]
    finite = [v for v in latencies if math.isfinite(v)]
    failures = [r for r in records if not r["ok"]]
    reasons: Dict[str, int] = {}
    for r in failures:
        reason = "late" if r.get("late") else (r.get("error") or "?").split(":", 1)[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    n = len(records)
    sched = [r["t_sched"] for r in records]
    offered = (n - 1) / (max(sched) - min(sched)) if n > 1 and max(sched) > min(sched) else None
    n_answered = len(finite)
    span = (max(r["t"] for r in records) - min(sched)) if n else 0.0
    throughput = n_answered / span if span > 0 else None
    lags = [r["lag_ms"] for r in records if "lag_ms" in r]
    sent = [r["n_requests"] for r in records if "n_requests" in r]
    arrived = [r["n_arrived"] for r in records if "n_arrived" in r]
    end = [e for e in events if e.get("event") == "cpu" and e.get("phase") == "end" and e.get("step") == step]
    stats = {
        "requests": n,
        "failures": len(failures),
        "failure_reasons": reasons,
        "late": sum(1 for r in records if r.get("late")),
        **{f"{k}_ms": v for k, v in latency_percentiles(latencies).items()},
        **latency_intervals(latencies),
        "unanswered": n - n_answered,
        "mean_ms": _r(np.mean(finite), 3) if finite else None,
        "max_ms": _r(np.max(finite), 3) if finite else None,
        "offered_batches_per_s": _r(offered),
        "throughput_batches_per_s": _r(throughput),
        "throughput_share": _r(throughput / offered, 3) if offered and throughput else None,
        "cpu_ms_per_batch": None,
        "cpu_ms_per_batch_parts": cpu_per_batch(events, n, step),
        "lag_ms": {"p50": _r(np.percentile(lags, 50), 3), "p99": _r(np.percentile(lags, 99), 3),
                   "max": _r(max(lags), 3)} if lags else None,
        "max_in_flight": end[-1].get("max_in_flight") if end else None,
        "compute_per_input": designed_compute(scheme, n_workers, n_inputs),
        "measured_compute_per_input": _r(float(np.mean(sent)) / n_inputs, 3) if sent else None,
        "mean_arrived": _r(float(np.mean(arrived)), 3) if arrived else None,
        # share of predictions that are their input's own worker answer (systematic: own answer in time)
        "exact_share": _r(float(np.mean(exact)) / n_inputs, 4) if (exact := [r["n_exact"] for r in records
                                                                           if "n_exact" in r]) else None,
        # where the time goes (answered batches): encode = master round trip (coded) or local preprocessing,
        # fanout = first worker request sent -> decision to decode, decode = the K x |F| product
        "breakdown_ms": {
            part: {pkey(p): round(float(v), 2) for p, v in zip((50, 99), np.percentile(values, (50, 99)))}
            for part in ("encode_ms", "fanout_ms", "decode_ms")
            if (values := [r[part] for r in records if part in r])
        },
    }
    stats["cpu_ms_per_batch"] = stats["cpu_ms_per_batch_parts"]["total"]
    if policy is not None and scheme in CODED_SCHEMES:
        stats["floor"] = floor_stats(records, scheme, policy, n_workers, n_inputs)
    if reference is not None:
        stats.update(accuracy_of(records, reference))
    return stats


# ------------------------------------------------------------------------------------------------ floor
def systematic_workers_of(scheme: str, n_inputs: int, n_workers: int) -> tuple:
    """The workers that get the inputs unchanged in a systematic scheme (() for the plain ones)."""
    if not getattr(SCHEMES.get(scheme), "systematic", False):
        return ()
    from nercc.coding import make_scheme

    return tuple(int(w) for w in getattr(make_scheme(scheme, n_inputs, n_workers, 0.0, 0.0), "systematic_workers", ()))


def decode_floor_ms(record: dict, policy, systematic_workers: Sequence[int] = ()) -> float:
    """The earliest moment (ms from the call) a coded batch's decode could have started, from its arrivals.

    ``first:M`` / ``first:M@T``: the M-th answer (no rule can decode from fewer). ``exact:M@T``: the last
    systematic answer when every systematic worker answered; else max(T, the M-th answer). A batch with fewer
    than M answers logged (it decoded at the deadline, or raised) has no earlier moment than its own decision:
    its latency less its decode; a batch never answered is +inf. ``policy`` is a :class:`nercc.policy.WaitPolicy`.
    """
    if not answered(record):
        return math.inf
    encode = float(record.get("encode_ms", 0.0))
    arrivals = {int(w): encode + float(ms) for w, ms in record.get("worker_ms", {}).items()}
    times = sorted(arrivals.values())
    own = float(record["ms"]) - float(record.get("decode_ms", 0.0))
    m = policy.m
    if not m or len(times) < m:
        return own
    mth = times[m - 1]
    if policy.kind == "exact":
        if systematic_workers and all(w in arrivals for w in systematic_workers):
            return min(max(arrivals[w] for w in systematic_workers), max(policy.patience_ms or 0.0, mth))
        return max(policy.patience_ms or 0.0, mth)
    return mth


def floor_stats(records: List[dict], scheme: str, policy: str, n_workers: int, n_inputs: int) -> dict | None:
    """p50 / p99 of the per-batch floor (:func:`decode_floor_ms`) and the scheme's p99 / floor p99 (the policy's
    own waste: patience, decode, the client's overhead). None for a policy without an M (all, deadline)."""
    wait = parse_policy(policy, n_workers)
    if not wait.m or not records:
        return None
    systematic = systematic_workers_of(scheme, n_inputs, n_workers) if wait.kind == "exact" else ()
    floors = [decode_floor_ms(r, wait, systematic) for r in records]
    latencies = [latency_or_inf(r) for r in records]
    pf, pl = latency_percentiles(floors), latency_percentiles(latencies)
    ci = latency_intervals(floors)
    return {"policy": policy, "p50_ms": pf["p50"], "p99_ms": pf["p99"], "p50_ms_ci": ci["p50_ms_ci"],
            "p99_ms_ci": ci["p99_ms_ci"],
            "p99_over_floor_p99": _r(pl["p99"] / pf["p99"], 3) if pl["p99"] and pf["p99"] else None,
            "p99_over_floor_p99_ci": _paired_p99_ratio_interval(latencies, floors)}


def _paired_p99_ratio_interval(latencies: List[float], floors: List[float]) -> list | None:
    """Bootstrap interval of p99(latency) / p99(floor) resampling *batches* (each batch's latency and floor
    together: they are the same batch's). None where a p99 reaches unanswered batches."""
    lat, fl = np.asarray(latencies, dtype=float), np.asarray(floors, dtype=float)
    if not (np.isfinite(lat).all() and np.isfinite(fl).all()) or lat.size == 0:
        return None

    def ratio(idx: np.ndarray) -> np.ndarray:
        i = idx.astype(np.intp)
        return np.percentile(lat[i], 99, axis=1) / np.maximum(np.percentile(fl[i], 99, axis=1), 1e-9)

    return nstats.json_interval(nstats.bootstrap_interval(np.arange(lat.size, dtype=float), ratio), 3)


def ramp_summary(log: Path) -> dict:
    """Knee, no-straggler p50 and CPU per batch from one scheme's calibration ramp log."""
    requests, events = read_log(log)
    steps = []
    for event in [e for e in events if e.get("event") == "ramp_step"]:
        step = event["step"]
        records = [r for r in requests if r.get("step") == step]
        latencies = [latency_or_inf(r) for r in records]
        pct = latency_percentiles(latencies)
        steps.append({
            "rate": event["rate"], "passed": bool(event["passed"]), "requests": len(records),
            "throughput_batches_per_s": _r(event["throughput"]), "p50_ms": pct["p50"], "p99_ms": pct["p99"],
            "p50_ms_ci": latency_intervals(latencies)["p50_ms_ci"],
            "cpu_ms_per_batch": cpu_per_batch(events, len(records), step),
        })
    passed = [s for s in steps if s["passed"]]
    light = steps[0] if steps else None
    worker_ms = [float(v) for r in requests if r.get("step") == 0 for v in r.get("worker_ms", {}).values()]
    return {
        "steps": steps,
        "knee_batches_per_s": passed[-1]["rate"] if passed else None,
        "knee_reached": bool(steps) and not steps[-1]["passed"],
        "p50_ms_light": light["p50_ms"] if light else None,
        "p99_ms_light": light["p99_ms"] if light else None,
        "rate_light": light["rate"] if light else None,
        "cpu_ms_per_batch_light": light["cpu_ms_per_batch"] if light else None,
        # one worker request's round trip at the lightest load, no stragglers: what a hedge delay is set from
        "worker_ms_p95_light": _r(np.percentile(worker_ms, 95), 3) if worker_ms else None,
    }


# ------------------------------------------------------------------------------------------------ frontier
def policy_of(settings: dict, scheme: str) -> str:
    """The wait policy a scheme's runs used: ``sys_policy`` for the systematic schemes, else ``coded_policy``."""
    if getattr(SCHEMES.get(scheme), "systematic", False) and settings.get("sys_policy"):
        return settings["sys_policy"]
    return settings["coded_policy"]


def reconstruct_first_m(record: dict, m: int, n_workers: int, deadline_ms: float, min_answers: int = 2,
                        patience_ms: float | None = None, scheme: str = NERCC_NAME, n_inputs: int = 2):
    """(latency ms or None, answer set) that policy first:M (first:M@T with ``patience_ms``) would have had on
    this batch of an ``all`` trace; for a systematic ``scheme`` (K = ``n_inputs``), policy exact:M@T.

    The workers do the same work whatever M is (stragglers are abandoned, not cancelled), so only the client's
    moment of decision changes. The trace's arrival times are replayed through the client's own wait-policy
    state machine (:class:`nercc.client.core.WaitState`, clock in ms from the call), so the replay follows the
    live rules exactly. None when the batch never had enough answers.
    """
    if not answered(record):
        return None, ()
    from nercc.client.core import DECODE, WaitState, plan_requests

    encode_ms = float(record["encode_ms"])
    systematic = getattr(SCHEMES.get(scheme), "systematic", False)
    plan = plan_requests(scheme, n_inputs, n_workers) if systematic else plan_requests(NERCC_NAME, 2, n_workers)
    state = WaitState(plan, policy_kind="exact" if systematic else "first", policy_m=m,
                      min_answers=min(min_answers, m), t_fanout=encode_ms, deadline_t=float(deadline_ms),
                      hard_t=math.inf, patience_t=(patience_ms or 0.0) if systematic else patience_ms)
    arrivals = sorted((encode_ms + float(ms), int(w)) for w, ms in record.get("worker_ms", {}).items())
    now = encode_ms
    for t, worker in arrivals + [(math.inf, None)]:
        wakeup = state.next_wakeup(now)
        while state.final is None and wakeup is not None and wakeup < t:  # the clock's own moments first
            now = wakeup
            state.on_tick(now)
            wakeup = state.next_wakeup(now)
        if state.final is not None or worker is None:
            break
        now = t
        state.on_answer(worker, t)
    if state.final is None or state.final.action != DECODE:
        return None, ()
    return state.decided_t + float(record.get("decode_ms", 0.0)), state.used_workers()


def frontier(records: List[dict], scheme: str, model: str, n_inputs: int, n_workers: int, deadline_ms: float,
             n_stragglers: int, reference: Reference | None, ms: Sequence[int], max_accuracy_batches: int = 400,
             patience_ms: float | None = None, min_answers_is_m: bool = False) -> list:
    """p50/p99/p99.9 and RelAcc of first:M (first:M@T with ``patience_ms``; exact:M@T for a systematic scheme)
    for each M, from one trace run of a coded scheme.

    Accuracy: decode, from exactly the workers first:M would have used, the local model's outputs on the coded
    inputs (the same encoding matrix as the master's encoder), for up to ``max_accuracy_batches`` batches.
    """
    points = []
    encoder = decoders = None
    if reference is not None:
        from nercc.coding import make_scheme
        from nercc.paths import model_dir
        from nercc.profiles import lookup

        lam_enc = 0.0 if not SCHEMES[scheme].smoothing else lookup(model_dir(model), n_inputs, n_workers,
                                                      n_stragglers=n_stragglers, scheme=scheme)[0]

        def decoder(n_arrived: int):
            lam_dec = 0.0 if not SCHEMES[scheme].smoothing else lookup(model_dir(model), n_inputs, n_workers,
                                                          n_arrived=n_arrived, scheme=scheme)[1]
            return make_scheme(scheme, n_inputs, n_workers, lam_enc, lam_dec)

        encoder, decoders = decoder(n_workers - n_stragglers), {}
    coded_outputs: Dict[int, np.ndarray] = {}
    for m in ms:
        latencies, per_batch, sq = [], [], []
        for i, record in enumerate(records):
            latency, used = reconstruct_first_m(record, m, n_workers, deadline_ms, patience_ms=patience_ms,
                                                min_answers=m if min_answers_is_m else 2, scheme=scheme,
                                                n_inputs=n_inputs)
            latencies.append(math.inf if latency is None else latency)
            if reference is None or latency is None or i >= max_accuracy_batches:
                continue
            index = int(record["batch"])
            if index not in coded_outputs:
                coded = np.asarray(encoder.encode(reference.inputs(index).astype(np.float64)), dtype=np.float32)
                coded_outputs[index] = reference.f(coded).astype(np.float64)
            if len(used) not in decoders:
                decoders[len(used)] = decoder(len(used))
            y_hat = np.asarray(decoders[len(used)].decode(coded_outputs[index][list(used)], list(used)))
            f_x = reference.f_of(index)
            labels = reference.labels(index)
            per_batch.append((int((y_hat.argmax(axis=1) == labels).sum()), int((f_x.argmax(axis=1) == labels).sum())))
            sq.append(((f_x - y_hat) ** 2).sum(axis=1))
        pct = latency_percentiles(latencies)
        base_hits = sum(b for _, b in per_batch)
        late = sum(1 for lat in latencies if lat > deadline_ms)
        points.append({"m": m, "p50_ms": pct["p50"], "p99_ms": pct["p99"], "p99.9_ms": pct["p99.9"],
                       **latency_intervals(latencies),
                       "late_share": _r(late / len(latencies), 4) if latencies else None,
                       "late_share_ci": nstats.json_interval(nstats.wilson_interval(late, len(latencies)), 4)
                       if latencies else None,
                       "rel_acc": round(sum(h for h, _ in per_batch) / base_hits, 5) if base_hits else None,
                       "rel_acc_ci": rel_acc_interval(per_batch),
                       "mse": float(np.concatenate(sq).mean()) if sq else None, "batches": len(records)})
    return points


# ------------------------------------------------------------------------------------------------ analysis
def analyse(summary: dict, out_dir: Path, record_predictions: bool = True) -> None:
    """Fill in per-profile scheme numbers, the engine comparison, the targets, the frontier and the plots (in
    ``summary``). With repeats (``summary['repeats']``) every repeat's blocks get their own numbers and targets,
    and ``summary['profiles']`` gets the pooled numbers (:func:`pool_blocks`)."""
    st = summary["settings"]
    n, k = st["n_workers"], st["n_inputs"]
    raw = out_dir / "raw"
    reference = Reference(st["model"], k) if record_predictions else None
    headline_engine = st["engines"][0]
    plots: Dict[str, str] = {}
    latencies_of: Dict[str, Dict[str, list]] = {}
    if summary.get("repeats"):
        loaded_by_profile: Dict[str, list] = {}
        for repeat in summary["repeats"]:
            for profile, block in repeat["profiles"].items():
                loaded = analyse_block(block, raw, st, reference, profile)
                loaded_by_profile.setdefault(profile, []).append((block, loaded))
        summary["profiles"] = {}
        for profile, pairs in loaded_by_profile.items():
            summary["profiles"][profile], latencies_of[profile] = pool_blocks(pairs, st, reference, profile)
    else:
        for profile, block in summary["profiles"].items():
            loaded = analyse_block(block, raw, st, reference, profile)
            latencies_of[profile] = {scheme: [latency_or_inf(r) for r in records]
                                     for scheme, records in loaded.get(headline_engine, {}).items()}
    for profile, block in summary["profiles"].items():
        latencies = latencies_of.get(profile, {})
        block["frontier"] = {}
        for run in [r for r in block.get("runs", []) if r["kind"] == "trace"]:
            coded_policy = parse_policy(policy_of(st, run["scheme"]), n)
            coded_m = coded_policy.m
            requests, _ = read_log(raw / run["requests_log"])
            ms = list(range(max(2, k), n + 1))
            block["frontier"][run["scheme"]] = frontier(
                requests, run["scheme"], st["model"], k, n, st["deadline_ms"],
                n - coded_m if coded_m else 0, reference, ms, patience_ms=coded_policy.patience_ms,
                min_answers_is_m=st.get("min_answers") == "policy")
        if not latencies:
            continue
        name = f"latency_cdf_{profile}.png"
        plot_cdf(out_dir / name, latencies, st["deadline_ms"],
                 f"{st['model']}, N = {n}, K = {k}, {st['offered_batches_per_s']:g} batches/s offered "
                 f"({headline_engine} engine" + (f", {len(summary['repeats'])} repeats pooled"
                                                 if summary.get("repeats") else "")
                 + f") — '{profile}': {block['description']}")
        plots[f"cdf_{profile}"] = name
        if block["frontier"]:
            name = f"frontier_{profile}.png"
            plot_frontier(out_dir / name, block, st, profile)
            plots[f"frontier_{profile}"] = name
    if summary.get("sweep"):
        sweep = summary["sweep"]
        sweep["points"] = []
        for run in sweep["runs"]:
            requests, events = read_log(raw / run["requests_log"])
            stats = run_stats(requests, events, run["scheme"], n, k, None)
            sweep["points"].append({"scheme": run["scheme"], "rate": run["rate"], **{
                key: stats[key] for key in ("p50_ms", "p99_ms", "p99.9_ms", "p50_ms_ci", "p99_ms_ci", "p99.9_ms_ci",
                                            "offered_batches_per_s",
                                            "throughput_batches_per_s", "cpu_ms_per_batch", "failures", "requests")}})
        plot_sweep(out_dir / "latency_vs_load.png", summary)
        plots["sweep"] = "latency_vs_load.png"
    if summary.get("calibration"):
        plot_ramp(out_dir / "capacity_ramp.png", summary)
        plots["ramp"] = "capacity_ramp.png"
    summary["plots"] = plots


def analyse_block(block: dict, raw: Path, st: dict, reference: Reference | None, profile: str) -> Dict[str, dict]:
    """One profile of one repeat: per-scheme numbers per engine (``engines``; ``schemes``: the headline
    engine's), the engine comparison and the targets. Returns {engine: {scheme: request records}}."""
    n, k = st["n_workers"], st["n_inputs"]
    headline_engine = st["engines"][0]
    block["schemes"], block["engines"] = {}, {}
    loaded: Dict[str, dict] = {}
    for run in block.get("runs", []):
        if run["kind"] != "main":
            continue
        requests, events = read_log(raw / run["requests_log"])
        stats = run_stats(requests, events, run["scheme"], n, k, reference, policy=policy_of(st, run["scheme"]))
        block["engines"].setdefault(run["engine"], {})[run["scheme"]] = stats
        loaded.setdefault(run["engine"], {})[run["scheme"]] = requests
        if run["engine"] == headline_engine:
            block["schemes"][run["scheme"]] = dict(stats, engine=run["engine"])
    _compare_and_target(block, profile, {scheme: [latency_or_inf(r) for r in records]
                                         for scheme, records in loaded.get(headline_engine, {}).items()})
    return loaded


def _compare_and_target(block: dict, profile: str, latencies: Dict[str, list]) -> None:
    if len(block["engines"]) > 1:
        block["engine_comparison"] = compare_engines(block["engines"])
        for scheme, row in block["engine_comparison"].items():
            block["schemes"][scheme]["engine_agreement"] = row
    if profile == TARGET_PROFILE:
        block["targets"] = evaluate_targets(block["schemes"], latencies, block.get("engine_comparison"))


#: Figures of a run that are rates or costs over the whole run, not over its batches: pooled as the median of the
#: repeats (the batches of several runs have no common span or CPU snapshot).
PER_RUN_KEYS = ("offered_batches_per_s", "throughput_batches_per_s", "throughput_share", "cpu_ms_per_batch",
                "max_in_flight", "measured_compute_per_input", "mean_arrived")
#: Figures whose spread over the repeats the report shows.
SPREAD_KEYS = ("p50_ms", "p99_ms", "p99.9_ms", "rel_acc")


def _median(values):
    vals = [float(v) for v in values if v is not None]
    return _r(float(np.median(vals)), 3) if vals else None


def pool_blocks(pairs: List[tuple], st: dict, reference: Reference | None, profile: str) -> tuple:
    """The pooled block of one profile over the repeats, and its headline latencies per scheme.

    Percentiles, RelAcc and their intervals: over every repeat's batches together; rates and CPU
    (:data:`PER_RUN_KEYS`): the median of the repeats; ``spread``: each repeat's p50 / p99 / p99.9 / RelAcc with
    min, median, max. Targets: each repeat's verdict (``per_repeat``) and the overall one
    (:func:`nercc.stats.combine_verdicts`: a target that flips between repeats, or is undecided in one, is
    undecided); the engine check is met only when the engines agree in every repeat.
    """
    n, k = st["n_workers"], st["n_inputs"]
    headline_engine = st["engines"][0]
    blocks = [b for b, _ in pairs]
    first = blocks[0]
    pooled = {"straggler": first.get("straggler"), "description": first.get("description", ""),
              "runs": [r for b in blocks for r in b.get("runs", [])], "repeats": len(blocks),
              "schemes": {}, "engines": {}}
    latencies: Dict[str, list] = {}
    engines = [e for e in st["engines"] if any(e in loaded for _, loaded in pairs)]
    for engine in engines:
        schemes = [s for s in SCHEME_ORDER if any(s in loaded.get(engine, {}) for _, loaded in pairs)]
        schemes += [s for _, loaded in pairs for s in loaded.get(engine, {}) if s not in schemes]
        for scheme in dict.fromkeys(schemes):
            records = [r for _, loaded in pairs for r in loaded.get(engine, {}).get(scheme, [])]
            per = [b["engines"][engine][scheme] for b in blocks if scheme in b.get("engines", {}).get(engine, {})]
            stats = run_stats(records, [], scheme, n, k, reference, policy=policy_of(st, scheme))
            for key in PER_RUN_KEYS:
                stats[key] = _median(p.get(key) for p in per)
            stats["cpu_ms_per_batch_parts"] = {part: _median(p["cpu_ms_per_batch_parts"].get(part) for p in per)
                                               for part in ("servers", "load_generator", "total")}
            stats["spread"] = {key: {"values": [p.get(key) for p in per], "min": _min(p.get(key) for p in per),
                                     "median": _median(p.get(key) for p in per),
                                     "max": _max(p.get(key) for p in per)} for key in SPREAD_KEYS}
            stats["repeats"] = len(per)
            pooled["engines"].setdefault(engine, {})[scheme] = stats
            if engine == headline_engine:
                pooled["schemes"][scheme] = dict(stats, engine=engine)
                latencies[scheme] = [latency_or_inf(r) for r in records]
    _compare_and_target(pooled, profile, latencies)
    if any("engine_comparison" in b for b in blocks):
        pooled["engine_comparison_by_repeat"] = [b.get("engine_comparison") for b in blocks]
    if "targets" in pooled:
        for target in pooled["targets"]:
            per_repeat = [next((t["verdict"] for t in b.get("targets", []) if t["key"] == target["key"]), None)
                          for b in blocks]
            target["pooled_verdict"] = target["verdict"]
            target["per_repeat"] = per_repeat
            known = [v for v in per_repeat if v is not None]
            if target["key"] == "engines_agree":
                target["verdict"] = "met" if known and all(v == "met" for v in known) else "not met"
            else:
                target["verdict"] = nstats.combine_verdicts(known)
    return pooled, latencies


def _min(values):
    vals = [float(v) for v in values if v is not None]
    return min(vals) if vals else None


def _max(values):
    vals = [float(v) for v in values if v is not None]
    return max(vals) if vals else None


def compare_engines(engines: Dict[str, Dict[str, dict]]) -> Dict[str, dict]:
    """Per scheme: both engines' p50/p99 with their 95 % intervals and ratio (locust / asyncio). They **agree**
    when the p50 intervals overlap, the p99 intervals overlap, and the medians (p50) differ by at most 20 %."""
    a, b = "asyncio", "locust"
    out = {}
    for scheme in [s for s in SCHEME_ORDER if s in engines.get(a, {}) and s in engines.get(b, {})]:
        row = {}
        for p in ("p50_ms", "p99_ms"):
            va, vb = engines[a][scheme][p], engines[b][scheme][p]
            ca, cb = engines[a][scheme].get(p + "_ci"), engines[b][scheme].get(p + "_ci")
            row[p] = {a: va, b: vb, "ratio": _r(vb / va, 3) if va and vb else None, f"{a}_ci": ca, f"{b}_ci": cb,
                      "overlap": nstats.intervals_overlap(ca, cb)}
        ratio = row["p50_ms"]["ratio"]
        row["medians_within"] = ratio is not None and abs(ratio - 1) <= AGREEMENT
        row["agree"] = row["medians_within"] and row["p50_ms"]["overlap"] and row["p99_ms"]["overlap"]
        for part in ("cpu_ms_per_batch_parts",):
            row["load_generator_cpu_ms_per_batch"] = {a: engines[a][scheme][part]["load_generator"],
                                                      b: engines[b][scheme][part]["load_generator"]}
        out[scheme] = row
    return out


# ------------------------------------------------------------------------------------------------ targets
#: The issue's targets on the headline profile: (key, scheme, figure, other scheme or None, bound, direction).
#: A ratio target compares scheme's figure / other's figure with the bound; RelAcc compares the figure itself.
TARGETS = (
    ("nercc_p99_vs_uncoded", NERCC_NAME, "p99", UNCODED, 0.5, "below"),
    ("nercc_p99.9_vs_replication", NERCC_NAME, "p99.9", REPLICATION, 1.0, "below"),
    ("nercc_p99.9_vs_hedged", NERCC_NAME, "p99.9", HEDGED, 1.0, "below"),
    ("nercc_rel_acc", NERCC_NAME, "rel_acc", None, 0.97, "above"),
    # issue 17: systematic NeRCC, exact when on time
    ("nercc-sys_p99_vs_uncoded", NERCC_SYS_NAME, "p99", UNCODED, 0.5, "below"),
    ("nercc-sys_p99.9_vs_replication", NERCC_SYS_NAME, "p99.9", REPLICATION, 1.0, "below"),
    ("nercc-sys_p99.9_vs_hedged", NERCC_SYS_NAME, "p99.9", HEDGED, 1.0, "below"),
    ("nercc-sys_p50_vs_replication", NERCC_SYS_NAME, "p50", REPLICATION, 1.1, "below"),
    ("nercc-sys_rel_acc", NERCC_SYS_NAME, "rel_acc", None, 0.995, "above"),
)
TARGET_PROFILE = "bimodal"


def evaluate_targets(schemes: Dict[str, dict], latencies: Dict[str, Sequence[float]],
                     comparison: Dict[str, dict] | None = None) -> List[dict]:
    """The targets of one run (one repeat): each with its point figure, 95 % interval and verdict
    (:func:`nercc.stats.verdict`: met / not met / undecided when the interval straddles the line).

    A ratio of percentiles of two schemes gets a bootstrap interval over both runs' batches
    (:func:`nercc.stats.percentile_ratio_interval`); RelAcc its batch-bootstrap interval. The throughput share
    is a rate over the whole run, not a sample statistic: its verdict is the figure against the line. The engine
    check is met when the engines agree (intervals overlap, medians within 20 %) for every scheme.
    """
    out = []
    for key, scheme, figure, other, bound, direction in TARGETS:
        if scheme not in schemes or (other is not None and other not in schemes):
            continue
        s = schemes[scheme]
        if other is None:
            value, interval = s.get(figure), s.get(figure + "_ci")
            if value is None:
                continue
            text = f"{label(scheme)} {_nice_figure(figure)} >= {bound:g}" if direction == "above" else \
                f"{label(scheme)} {_nice_figure(figure)} <= {bound:g}"
            numbers = nstats.format_with_interval(value, interval, 3, none="–")
        else:
            va, vb = s.get(f"{figure}_ms"), schemes[other].get(f"{figure}_ms")
            value = (_as_ms(va) / _as_ms(vb)) if vb is not None else None
            value = None if value is None or not math.isfinite(value) else round(value, 3)
            interval = None
            if scheme in latencies and other in latencies:
                interval = nstats.json_interval(nstats.percentile_ratio_interval(
                    latencies[scheme], latencies[other], float(figure[1:])), 3)
            text = (f"{label(scheme)} {figure} <= " + (f"{bound:g} x " if bound != 1.0 else "")
                    + f"{label(other)}'s {figure}")
            numbers = (f"{nstats.format_with_interval(va, s.get(f'{figure}_ms_ci'))} vs "
                       f"{nstats.format_with_interval(vb, schemes[other].get(f'{figure}_ms_ci'))} ms, ratio "
                       f"{nstats.format_with_interval(value, interval, 2, none='unbounded')}")
        out.append({"key": key, "target": text, "value": value, "interval": interval, "bound": bound,
                    "direction": direction, "verdict": nstats.verdict(interval, bound, direction),
                    "numbers": numbers})
    shares = {sc: v.get("throughput_share") for sc, v in schemes.items()}
    if shares:
        worst = min(shares, key=lambda sc: shares[sc] or 0.0)
        ok = all((v or 0) >= 0.95 for v in shares.values())
        out.append({"key": "throughput_share", "target": "every scheme's throughput >= 0.95 x offered",
                    "value": shares[worst], "interval": None, "bound": 0.95, "direction": "above",
                    "verdict": "met" if ok else "not met",
                    "numbers": ", ".join(f"{label(sc)} {_fmt(v, 3)}" for sc, v in shares.items())
                    + f" (lowest: {label(worst)}; a rate over the whole run, no sampling interval)"})
    if comparison:
        bad = [sc for sc, row in comparison.items() if not row["agree"]]
        out.append({"key": "engines_agree", "target": "Locust and asyncio engines agree for every scheme (p50 and "
                    "p99 intervals overlap, medians within 20%)", "value": None, "interval": None, "bound": None,
                    "direction": None, "verdict": "not met" if bad else "met",
                    "numbers": ("disagree: " + ", ".join(label(sc) for sc in bad)) if bad else "all agree"})
    return out


def _nice_figure(figure: str) -> str:
    return {"rel_acc": "RelAcc"}.get(figure, figure)


def _as_ms(value) -> float:
    return math.inf if value is None else float(value)


def format_target(t: dict) -> str:
    """One target line; with repeats: the pooled numbers, each repeat's verdict and the overall one."""
    if t.get("per_repeat"):
        per = ", ".join(v or "–" for v in t["per_repeat"])
        return (f"- {t['target']}: pooled {t['numbers']} (pooled verdict: {t['pooled_verdict']}); per repeat: {per} "
                f"— **{t['verdict']}**.")
    return f"- {t['target']}: {t['numbers']} — **{t['verdict']}**."


def target_checks(summary: dict) -> List[str]:
    """The issue's targets for the headline profile (bimodal): each with the measured numbers, their 95 %
    intervals and met / not met / undecided (from the interval, never from the point estimate)."""
    block = summary["profiles"].get(TARGET_PROFILE)
    if not block:
        return []
    targets = block.get("targets")
    if targets is None:
        targets = evaluate_targets(block.get("schemes", {}), {}, block.get("engine_comparison"))
    return [format_target(t) for t in targets]


# ------------------------------------------------------------------------------------------------ text
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


def _ci(stats: dict, key: str) -> str:
    """A latency cell with its 95 % interval, '17.4 [16.9, 18.0]' (``key`` like 'p99_ms'); an end the batches
    cannot bound or that reaches unanswered batches prints 'never'."""
    return nstats.format_with_interval(stats.get(key), stats.get(key + "_ci"))


def _ci_acc(stats: dict, key: str = "rel_acc") -> str:
    return nstats.format_with_interval(stats.get(key), stats.get(key + "_ci"), 3, none="–")


def headline_table(summary: dict) -> str:
    lines = [
        "| profile | scheme | batches | failures | p50 ms | p99 ms | p99.9 ms | offered /s | throughput /s | "
        "CPU ms/batch | RelAcc | MSE | exact % | compute/input |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for profile, block in summary["profiles"].items():
        for scheme in [sc for sc in SCHEME_ORDER if sc in block["schemes"]]:
            s = block["schemes"][scheme]
            lines.append(
                f"| {profile} | {label(scheme)} | {s['requests']} | {s['failures']} | {_ci(s, 'p50_ms')} | "
                f"{_ci(s, 'p99_ms')} | {_ci(s, 'p99.9_ms')} | {_fmt(s['offered_batches_per_s'])} | "
                f"{_fmt(s['throughput_batches_per_s'])} | {_fmt(s['cpu_ms_per_batch'])} | {_ci_acc(s)} | "
                f"{_fmt(s.get('mse'), 4)} | "
                f"{_fmt(100 * s['exact_share']) if s.get('exact_share') is not None and scheme in CODED_SCHEMES else '–'} | "
                f"{_fmt(s['compute_per_input'], 2) if s['compute_per_input'] else _fmt(s['measured_compute_per_input'], 2)} |")
    return "\n".join(lines)


def engine_table(summary: dict) -> str:
    lines = ["| profile | scheme | asyncio p50 | Locust p50 | ratio | asyncio p99 | Locust p99 | ratio | agree | "
             "generator CPU ms/batch asyncio / Locust |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    any_rows = False
    for profile, block in summary["profiles"].items():
        for scheme, row in (block.get("engine_comparison") or {}).items():
            any_rows = True
            p50, p99 = row["p50_ms"], row["p99_ms"]
            gen = row["load_generator_cpu_ms_per_batch"]
            lines.append(f"| {profile} | {label(scheme)} | {_engine_cell(p50, 'asyncio')} | "
                         f"{_engine_cell(p50, 'locust')} | {_fmt(p50['ratio'], 2)} | {_engine_cell(p99, 'asyncio')} | "
                         f"{_engine_cell(p99, 'locust')} | {_fmt(p99['ratio'], 2)} | {_agree_cell(row)} | "
                         f"{_fmt(gen['asyncio'])} / {_fmt(gen['locust'])} |")
    return "\n".join(lines) if any_rows else ""


def _engine_cell(cell: dict, engine: str) -> str:
    return nstats.format_with_interval(cell[engine], cell.get(f"{engine}_ci"))


def _agree_cell(row: dict) -> str:
    """'yes', or '**no**' with why: the intervals do not overlap, or the medians differ by more than 20 %."""
    if row["agree"]:
        return "yes"
    why = [f"{p[:-3]} intervals apart" for p in ("p50_ms", "p99_ms") if not row[p].get("overlap", True)]
    if not row.get("medians_within", True):
        why.append("medians > 20% apart")
    return "**no**" + (f" ({', '.join(why)})" if why else "")


def repeats_table(summary: dict) -> str:
    """Every repeat's headline numbers (with intervals) per profile and scheme."""
    repeats = summary.get("repeats") or []
    if not repeats:
        return ""
    lines = ["| profile | scheme | repeat | batches | p50 ms | p99 ms | p99.9 ms | RelAcc | late |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for profile in summary["profiles"]:
        for scheme in [sc for sc in SCHEME_ORDER if sc in summary["profiles"][profile]["schemes"]]:
            for repeat in repeats:
                s = repeat["profiles"].get(profile, {}).get("schemes", {}).get(scheme)
                if s is None:
                    continue
                lines.append(f"| {profile} | {label(scheme)} | {repeat['repeat']} | {s['requests']} | {_ci(s, 'p50_ms')} | "
                             f"{_ci(s, 'p99_ms')} | {_ci(s, 'p99.9_ms')} | {_ci_acc(s)} | {s['late']} |")
    return "\n".join(lines)


def spread_table(summary: dict) -> str:
    """Per profile and scheme: min / median / max over the repeats of p50, p99, p99.9 and RelAcc."""
    if not summary.get("repeats"):
        return ""
    lines = ["| profile | scheme | p50 ms min / median / max | p99 ms | p99.9 ms | RelAcc |", "|---|---|---|---|---|---|"]

    def cell(spread, digits=1):
        return " / ".join(_fmt(spread[x], digits) if spread[x] is not None else "never" for x in ("min", "median", "max"))

    for profile, block in summary["profiles"].items():
        for scheme in [sc for sc in SCHEME_ORDER if sc in block["schemes"]]:
            sp = block["schemes"][scheme].get("spread") or {}
            if not sp:
                continue
            lines.append(f"| {profile} | {label(scheme)} | {cell(sp['p50_ms'])} | {cell(sp['p99_ms'])} | "
                         f"{cell(sp['p99.9_ms'])} | {cell(sp['rel_acc'], 3)} |")
    return "\n".join(lines)


def floor_table(summary: dict) -> str:
    """Coded schemes: p50 / p99 of the order-statistic floor (earliest possible decode) and p99 / floor p99."""
    lines = ["| profile | scheme | policy | floor p50 ms | floor p99 ms | p99 ms | p99 / floor p99 |",
             "|---|---|---|---:|---:|---:|---:|"]
    rows = 0
    for profile, block in summary["profiles"].items():
        for scheme in [sc for sc in SCHEME_ORDER if sc in block["schemes"]]:
            s = block["schemes"][scheme]
            f = s.get("floor")
            if not f:
                continue
            rows += 1
            lines.append(f"| {profile} | {label(scheme)} | `{f['policy']}` | {_ci(f, 'p50_ms')} | {_ci(f, 'p99_ms')} | "
                         f"{_ci(s, 'p99_ms')} | "
                         f"{nstats.format_with_interval(f['p99_over_floor_p99'], f.get('p99_over_floor_p99_ci'), 2, '–')} |")
    return "\n".join(lines) if rows else ""


def calibration_table(summary: dict) -> str:
    cal = summary.get("calibration")
    if not cal:
        return ""
    lines = ["| scheme | knee (batches/s) | p50 ms (lightest step) | p99 ms | CPU ms/batch: servers | generator + client | "
             "total |", "|---|---:|---:|---:|---:|---:|---:|"]
    for scheme in [s for s in SCHEME_ORDER if s in cal["schemes"]]:
        c = cal["schemes"][scheme]
        cpu = c.get("cpu_ms_per_batch_light") or {}
        knee = _fmt(c["knee_batches_per_s"]) + ("" if c.get("knee_reached") or c["knee_batches_per_s"] is None
                                                else " (ramp top, no knee seen)")
        if c.get("lowered"):
            knee += f" (ramp lowered {len(c['lowered'])}x to `{c.get('ramp')}`)"
        if c.get("no_knee"):
            knee = f"none: {c['no_knee']}"
        lines.append(f"| {label(scheme)} | {knee} | {_ms(c['p50_ms_light'])} | {_ms(c['p99_ms_light'])} | "
                     f"{_fmt(cpu.get('servers'))} | {_fmt(cpu.get('load_generator'))} | {_fmt(cpu.get('total'))} |")
    return "\n".join(lines)


def frontier_table(summary: dict) -> str:
    lines = ["| profile | scheme | M | p50 ms | p99 ms | p99.9 ms | RelAcc | late share |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = 0
    for profile, block in summary["profiles"].items():
        for scheme, points in (block.get("frontier") or {}).items():
            for p in points:
                rows += 1
                lines.append(f"| {profile} | {label(scheme)} | {p['m']} | {_ci(p, 'p50_ms')} | {_ci(p, 'p99_ms')} | "
                             f"{_ci(p, 'p99.9_ms')} | {_ci_acc(p)} | {_ci_acc(p, 'late_share')} |")
    return "\n".join(lines) if rows else ""


def console_text(summary: dict) -> str:
    parts = [headline_table(summary)]
    if spread_table(summary):
        parts += ["", f"spread over {len(summary['repeats'])} repeats:", spread_table(summary)]
    if floor_table(summary):
        parts += ["", "order-statistic floor:", floor_table(summary)]
    if engine_table(summary):
        parts += ["", "engines:", engine_table(summary)]
    if calibration_table(summary):
        parts += ["", "calibration (no stragglers):", calibration_table(summary)]
    parts += ["", *target_checks(summary)]
    return "\n".join(parts)


INTERVAL_WORDS = (
    "Each latency percentile is shown as `point [lo, hi]`: the point is numpy's percentile of the batches' "
    "latencies, [lo, hi] its distribution-free 95 % interval (order statistics with binomial ranks; `never` when an "
    "end falls among unanswered batches or the batches are too few to bound it: a p99.9 needs ~4,000). RelAcc's "
    "interval is a bootstrap over batches.")
VERDICT_WORDS = (
    "Verdicts come from the 95 % interval, never the point: **met** when the whole interval is on the right side of "
    "the line, **not met** when it is all on the wrong side, **undecided** when it straddles the line (this run "
    "cannot tell; more batches or repeats narrow it). Ratios of two schemes' percentiles: bootstrap over both "
    "runs' batches.")


def _markdown_setting(summary: dict) -> list:
    """report.md's title and its Setting section: model, load, deadline, policies, what fails a batch."""
    st = summary["settings"]
    return [
        f"# nercc load test: {st['model']}, " + ", ".join(label(s) for s in st["schemes"]),
        "",
        f"Created {summary['created']} by `{summary['command']}`.",
        "",
        "## Setting",
        f"- Model **{st['model']}**, K = {st['n_inputs']} test inputs per batch, N = {st['n_workers']} worker "
        f"tritonservers + 1 master (encoder), all on this machine ({st['cpu_count']} CPU cores).",
        f"- Load: open loop, Poisson arrivals, **{st['offered_batches_per_s']:g} batches/s** for every scheme and "
        f"engine — {st['load_choice']}. {st['batches_per_run']} batches per run"
        + (f" ({st['locust_batches']} for Locust)" if "locust" in st["engines"] and len(st["engines"]) > 1
           and st.get("locust_batches") != st["batches_per_run"] else "")
        + f"; engines: {', '.join(st['engines'])} (headline numbers: {st['engines'][0]}); Locust with "
        f"{st['locust_users']} users, each a Poisson stream of rate / users.",
        f"- Deadline **{st['deadline_ms']:g} ms** — {st['deadline_choice']}. Coded policy `{st['coded_policy']}` "
        f"({_policy_words(st)})"
        + (f"; systematic schemes `{st['sys_policy']}` (exact as soon as every own answer is in, else the late "
           f"inputs recovered at T from the answers in — {st.get('sys_policy_choice')})"
           if any(getattr(SCHEMES.get(s), 'systematic', False) for s in st["schemes"]) and st.get("sys_policy")
           else "")
        + "; uncoded waits for its K workers, "
        f"replication (r = N // K = {st['replication_copies']}) for the first copy of each input"
        + (f", hedged sends a second copy of an input to another worker once its first is later than the hedge "
           f"delay ({_fmt(st.get('hedge_ms'))} ms — {st.get('hedge_choice')})" if HEDGED in st["schemes"] else "")
        + (". Coded inputs encoded in the client (`encode=local`)" if st.get("encode") == "local" else "") + ".",
        "- A batch **fails** when the client raised (too few answers within the hard timeout), when it is late "
        "(an answer it needed came after the deadline) or when its predictions are not finite.",
        "",
    ]


def _markdown_details(summary: dict) -> list:
    """report.md's calibration, frontier, per-profile plots and load sweep sections."""
    plots = summary.get("plots", {})
    lines = []
    if calibration_table(summary):
        lines += ["### Calibration: capacity and cost per batch, no stragglers", "",
                  f"Ramp `{summary['calibration']['ramp']}` (START,FACTOR,MAX,STEP_S), asyncio engine. Knee: the "
                  "highest step whose throughput stayed >= 0.95 x offered and p50 <= 2 x the lightest step's. CPU "
                  "from /proc at the lightest step: servers = every tritonserver and its Python stubs; generator "
                  "+ client = the load-generator process.", "", calibration_table(summary), ""]
        if "ramp" in plots:
            lines += [f"![capacity ramp]({plots['ramp']})", ""]
    if frontier_table(summary):
        family = _policy_family(summary["settings"])
        lines += [f"### Accuracy-latency frontier over M in {family}", "",
                  "From one trace run per coded scheme at the same load with policy `all` (every worker's arrival "
                  f"time kept): {family}'s decision moment and answer set are replayed per batch, and its accuracy is "
                  "decoded from exactly those workers (local model on the same coded inputs). The workers' work does "
                  "not depend on M (stragglers are abandoned, not cancelled).", "", frontier_table(summary), ""]
    for profile, block in summary["profiles"].items():
        lines += [f"### Profile `{profile}`: {block['description']}", "", f"Worker straggler string: "
                  f"`{block['straggler']}`." + (" A fresh cluster for every run; the worker is killed during it, "
                                                 "the batches before the kill count too."
                                                 if profile == "dead-worker" else ""), ""]
        for key in (f"cdf_{profile}", f"frontier_{profile}"):
            if key in plots:
                lines += [f"![{key}]({plots[key]})", ""]
    if "sweep" in plots:
        lines += ["## Latency vs offered load", "", f"![latency vs load]({plots['sweep']})", ""]
    return lines


def write_markdown(path: Path, summary: dict) -> None:
    st = summary["settings"]
    lines = _markdown_setting(summary) + ["## Results", ""]
    failure = summary.get("failure")
    if failure:
        lines += [f"**Incomplete run**: phase `{failure['phase']}` failed ({failure['error']}; exit code "
                  f"{failure['exit_code']}). The numbers below are from the phases before it: "
                  f"{', '.join(summary.get('phases_done', [])) or 'none'}.", ""]
    if st.get("no_knee"):
        lines += ["**No knee**: " + "; ".join(f"{label(sc)}: {why}" for sc, why in st["no_knee"].items())
                  + f". The run went on at {st['offered_batches_per_s']:g} batches/s.", ""]
    repeats = summary.get("repeats") or []
    if repeats:
        lines += [f"**{len(repeats)} repeats** of the measured phase, each on fresh clusters (one calibration). "
                  "The headline table pools every repeat's batches (percentiles and intervals over all of them; rates "
                  "and CPU: the median of the repeats); each repeat's own numbers and the spread follow.", ""]
    lines += [INTERVAL_WORDS, "", headline_table(summary), ""]
    checks = target_checks(summary)
    if checks:
        lines += [f"### Targets (profile {TARGET_PROFILE})", "", VERDICT_WORDS, "", *checks, ""]
    if repeats:
        lines += ["### Every repeat", "", repeats_table(summary), "", "### Spread over the repeats", "",
                  spread_table(summary), ""]
    if floor_table(summary):
        lines += ["### The order-statistic floor: the policy's own waste", "",
                  "Per coded batch, the earliest moment its decode could have started, from the per-worker arrival "
                  "times in the log: the M-th answer for `first:M` / `first:M@T`; for `exact:M@T` the last "
                  "systematic answer when every systematic worker answered (or max(T, M-th) if sooner), else "
                  "max(T, M-th). p99 / floor p99 near 1: the policy waits no longer than the order statistics force; "
                  "above 1: patience, decode and client overhead.", "", floor_table(summary), ""]
    if engine_table(summary):
        lines += ["### Engine cross-check (same load, same cluster; ratio = Locust / asyncio)", "",
                  "Agree = the p50 intervals overlap, the p99 intervals overlap, and the medians (p50) differ by at "
                  "most 20 %." + (" Pooled over the repeats here; the engine target above is met only when they "
                                  "agree in every repeat." if repeats else ""), "",
                  engine_table(summary), ""]
        for i, comparison in enumerate(summary["profiles"].get(TARGET_PROFILE, {}).get("engine_comparison_by_repeat")
                                       or [], 1):
            if comparison:
                bad = [label(sc) for sc, row in comparison.items() if not row["agree"]]
                lines.append(f"- repeat {i}: " + ("engines agree for every scheme" if not bad else
                                                  "disagree: " + ", ".join(bad)))
        lines.append("")
    lines += _markdown_details(summary)
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------ plots
_MS_TICKS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ms_ticks(axis, lo: float, hi: float, which: str = "x") -> None:
    """Log axis in ms with plain 1-2-5 labels."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ticks = [t for t in _MS_TICKS if lo <= t <= hi] or [lo, hi]
    target = axis.xaxis if which == "x" else axis.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(lambda v, _pos: f"{v:g}")
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


def _log_y_grid(ax) -> None:
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def _save(fig, path: Path, title: str | None = None) -> None:
    """Title, tight layout, PNG at 110 dpi, figure closed (every figure of the report ends so)."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _setting_title(settings: dict, profile: str) -> str:
    return f"{settings['model']}, N = {settings['n_workers']}, K = {settings['n_inputs']}, profile '{profile}'"


def _ordered(keys) -> list:
    return [s for s in SCHEME_ORDER if s in keys] + [s for s in keys if s not in SCHEME_ORDER]


def plot_cdf(path: Path, latencies: Dict[str, Sequence[float]], deadline_ms: float, title: str) -> None:
    """CDF per scheme on a log time axis (left) and its tail, 1 - CDF on log-log (right)."""
    plt = _pyplot()
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.8))
    for scheme in _ordered(latencies):
        every = np.sort(np.asarray(latencies[scheme], dtype=float))
        values = every[np.isfinite(every)]
        if values.size == 0:
            continue
        p = latency_percentiles(every)
        style = dict(color=SCHEME_COLORS.get(scheme), lw=2, label=f"{label(scheme)} (p99 {_ms(p['p99'])}, "
                     f"p99.9 {_ms(p['p99.9'])} ms)")
        ax.step(values, np.arange(1, values.size + 1) / every.size, where="post", **style)
        tail.step(values, 1.0 - np.arange(values.size) / every.size, where="post", **style)
        for q, level in ((99, 1e-2), (99.9, 1e-3)):  # the 95 % interval of p99 / p99.9 where a reader compares
            lo, hi = nstats.percentile_interval(every, q)
            if math.isfinite(lo):
                end = hi if math.isfinite(hi) else values[-1] * 1.2
                tail.plot([lo, end], [level, level], color=style["color"], lw=5, alpha=0.35, solid_capstyle="butt")
                if not math.isfinite(hi):  # the batches cannot bound it: an open end
                    tail.plot([end], [level], ">", color=style["color"], ms=6, alpha=0.6)
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
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("latency CDF")
    tail.set_yscale("log")
    tail.set_ylabel("fraction of batches taking x or longer (log)")
    for level, name in ((1e-2, "p99"), (1e-3, "p99.9")):
        tail.axhline(level, color="k", ls="--", lw=0.8, alpha=0.6)
        tail.text(lo, level, f" {name}", va="bottom", fontsize=8)
    tail.set_title("tail (1 - CDF); bars on the p99 / p99.9 lines: 95 % intervals (>: no upper end)")
    _save(fig, path, title)


def _policy_words(settings: dict) -> str:
    """What the coded policy of the run does, in words, with why it was chosen when the report knows."""
    policy = parse_policy(settings["coded_policy"], settings["n_workers"])
    if policy.kind != "first":
        words = {"all": "wait for every answer", "deadline": "wait for every answer until the deadline"}[policy.kind]
    elif policy.patience_ms is None:
        words = "decode as soon as M answers are in, never wait past the deadline"
    else:
        words = (f"decode from every answer when all come within {policy.patience_ms:g} ms, else at "
                 f"{policy.patience_ms:g} ms from those in once M = {policy.m} are, else at the M-th; never past "
                 "the deadline")
    why = settings.get("policy_choice")
    return words + (f" — {why}" if why and why != "given by --policy" else "")


def _policy_family(settings: dict, scheme: str | None = None) -> str:
    """``first:M`` / ``first:M@T`` (``exact:M@T`` for a systematic scheme, with the run's T): the policies the
    frontier replays for ``scheme`` (default: the plain coded schemes')."""
    policy = parse_policy(policy_of(settings, scheme) if scheme else settings["coded_policy"], settings["n_workers"])
    return f"{policy.kind}:M" if policy.patience_ms is None else f"{policy.kind}:M@{policy.patience_ms:g}"


def plot_frontier(path: Path, block: dict, settings: dict, profile: str) -> None:
    """p99 and p99.9 vs RelAcc: a curve over M per coded scheme, the baselines as points."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    values = []
    for ax, key, name in ((axes[0], "p99_ms", "p99"), (axes[1], "p99.9_ms", "p99.9")):
        for scheme, points in block["frontier"].items():
            pts = [(p["rel_acc"], p[key], p["m"]) for p in points if p["rel_acc"] is not None and p[key] is not None]
            if not pts:
                continue
            xs, ys, ms = zip(*pts)
            values += ys
            ok = [p for p in points if p["rel_acc"] is not None and p[key] is not None]
            ax.errorbar(xs, ys, xerr=_err(xs, [p.get("rel_acc_ci") for p in ok]),
                        yerr=_err(ys, [p.get(key + "_ci") for p in ok]), fmt="-o", color=SCHEME_COLORS.get(scheme),
                        label=f"{label(scheme)} {_policy_family(settings, scheme)} (trace)", ms=4, elinewidth=0.8, capsize=2)
            for x, y, m in pts:
                ax.annotate(f"M={m}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for scheme in _ordered(block["schemes"]):
            s = block["schemes"][scheme]
            if s.get(key) is None:
                continue
            values.append(s[key])
            marker = "*" if scheme in CODED_SCHEMES else "s"
            x = s.get("rel_acc") if s.get("rel_acc") is not None else 1.0
            ax.errorbar([x], [s[key]], xerr=_err([x], [s.get("rel_acc_ci")]), yerr=_err([s[key]], [s.get(key + "_ci")]),
                        fmt=marker, color=SCHEME_COLORS.get(scheme), ms=11 if marker == "*" else 8, mec="k",
                        elinewidth=0.8, capsize=2,
                        label=f"{label(scheme)}" + (f" {policy_of(settings, scheme)} (live)" if marker == "*" else ""))
        ax.axhline(settings["deadline_ms"], color="k", ls=":", lw=1)
        ax.set_xlabel("RelAcc (accuracy of served predictions / accuracy of f)")
        ax.set_title(f"{name} latency vs accuracy")
        _log_y_grid(ax)
    if values:
        lo, hi = min(values) / 1.5, max(max(values), settings["deadline_ms"]) * 1.5
        axes[0].set_ylim(lo, hi)
        _ms_ticks(axes[0], lo, hi, "y")
    axes[0].set_ylabel("latency per batch (ms, log; bars: 95 % intervals)")
    axes[0].legend(fontsize=7, loc="best")
    _save(fig, path, f"{_setting_title(settings, profile)}: {block['description']}; deadline "
                     f"{settings['deadline_ms']:g} ms (dotted)")


def _err(values: Sequence[float], intervals: Sequence) -> np.ndarray:
    """matplotlib's (2, n) error-bar lengths from [lo, hi] intervals; an unknown or unbounded end draws no bar."""
    out = np.zeros((2, len(values)))
    for i, (v, ci) in enumerate(zip(values, intervals)):
        if ci:
            lo, hi = ci
            out[0, i] = max(0.0, v - lo) if lo is not None else 0.0
            out[1, i] = max(0.0, hi - v) if hi is not None else 0.0
    return out


def plot_sweep(path: Path, summary: dict) -> None:
    """p50 / p99 / p99.9 vs offered load per scheme (the standard serving figure)."""
    plt = _pyplot()
    points = summary["sweep"]["points"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    for ax, key in zip(axes, ("p50_ms", "p99_ms", "p99.9_ms")):
        for scheme in _ordered({p["scheme"] for p in points}):
            pts = sorted((p["offered_batches_per_s"] or p["rate"], p[key], p.get(key + "_ci")) for p in points
                         if p["scheme"] == scheme and p[key] is not None)
            if pts:
                xs, ys, cis = zip(*pts)
                ax.errorbar(xs, ys, yerr=_err(ys, cis), fmt="-o", color=SCHEME_COLORS.get(scheme), label=label(scheme),
                            ms=4, elinewidth=0.8, capsize=2)
        ax.set_xlabel("offered load (batches/s)")
        ax.set_title(key.replace("_ms", ""))
        _log_y_grid(ax)
        ax.axhline(summary["settings"]["deadline_ms"], color="k", ls=":", lw=1)
    axes[0].set_ylabel("latency per batch (ms, log)")
    axes[0].legend(fontsize=8)
    _save(fig, path, f"{_setting_title(summary['settings'], summary['sweep']['profile'])}, "
                     f"{summary['sweep']['engine']} engine")


def plot_ramp(path: Path, summary: dict) -> None:
    """Calibration: throughput and p50 vs offered load per scheme, the knees marked."""
    plt = _pyplot()
    cal = summary["calibration"]["schemes"]
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(12, 4.6))
    top = 0.0
    for scheme in _ordered(cal):
        steps = cal[scheme]["steps"]
        if not steps:
            continue
        rates = [s["rate"] for s in steps]
        top = max(top, max(rates))
        color = SCHEME_COLORS.get(scheme)
        ax.plot(rates, [s["throughput_batches_per_s"] for s in steps], "-o", color=color, label=label(scheme), ms=4)
        p50s = [s["p50_ms"] for s in steps]
        lat.errorbar(rates, p50s, yerr=_err([v or 0.0 for v in p50s], [s.get("p50_ms_ci") for s in steps]), fmt="-o",
                     color=color, label=label(scheme), ms=4, elinewidth=0.8, capsize=2)
        knee = cal[scheme]["knee_batches_per_s"]
        if knee:
            ax.axvline(knee, color=color, ls=":", lw=1)
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="throughput = offered")
    chosen = summary["settings"].get("offered_batches_per_s")
    for axis in (ax, lat):
        if chosen:
            axis.axvline(chosen, color="k", lw=1.5, alpha=0.5)
        axis.set_xscale("log")
        axis.set_xlabel("offered load (batches/s, log)")
        axis.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("throughput (batches/s)")
    ax.set_title("capacity ramp (dotted: knees; grey: chosen load)")
    lat.set_yscale("log")
    lat.set_ylabel("p50 latency (ms, log)")
    lat.set_title("p50 vs offered load, no stragglers (bars: 95 % intervals)")
    ax.legend(fontsize=8)
    _save(fig, path)
