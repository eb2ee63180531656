"""Simulate nercc serving at any N: latency percentiles and expected RelAcc per scheme, calibrated from a real run.

A discrete-event model of one open-loop client population, the master and N workers (FIFO queue + one
model instance each), with the client's schemes and wait policies. Service times come from a real run's
per-request latencies (``--calibration``, recorded by ``--measure``), encode/decode cost is measured with
nercc.coding at the simulated (N, K), and every coded batch carries the RelAcc the accuracy benchmark measured
for its number of missing answers. See docs/simulate.md.

Examples:
  nercc simulate --workers 100 --inputs 20 --straggler bimodal:p=0.3,slow_ms=40 --rate 5 --out /tmp/sim
  nercc simulate --measure --out bench/results/scale/real_N12       # real LocalCluster run (calibrate + measure)
  nercc simulate --validate bench/results/scale/real_N12/summary.json --out /tmp/val
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from nercc.coding.registry import CODED_SCHEMES, HEDGED, SYSTEMATIC_SCHEMES
from nercc.paths import display_path
from nercc.simulate.model import DEFAULT_CALIBRATION, SCHEMES

#: every scheme of the registry (systematic ones: their accuracy tables need `nercc bench accuracy --systematic`)
SIMULATED_SCHEMES = tuple(SCHEMES)

VALIDATED = ("p50_ms", "p99_ms", "p99.9_ms")
SIM_BATCHES = 20_000  # simulated batches per scheme
MEASURE_BATCHES = 600  # real batches per scheme (--measure): ~1 minute at 10 batches/s, a p99 on ~6 batches


def default_policy(n_workers: int) -> str:
    """first:M with M = N - N // 3: the loadtest's first:8 at N = 12."""
    return f"first:{max(2, n_workers - n_workers // 3)}"


def exact_policy_for(policy: str, n_workers: int, service) -> str:
    """The systematic schemes' policy beside a plain coded ``policy``: exact:M@T with the same M (first:M's, else
    N - N // 3) and T = the calibrated p99 of one worker round trip (by then every answer that is not a
    straggler has come)."""
    from nercc.policy import parse_policy

    parsed = parse_policy(policy, n_workers)
    m = parsed.m if parsed.m is not None else max(2, n_workers - n_workers // 3)
    t = service.one_request_quantile(0.99, "coded")
    return f"exact:{m}@{t:.1f}"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("--workers", type=int, default=12, help="N workers (default 12)")
    parser.add_argument("--inputs", type=int, default=4, help="K inputs per batch (default 4)")
    parser.add_argument("--straggler", default="bimodal:p=0.1,slow_ms=40",
                        help="straggler profile, nercc.serving.stragglers syntax (default bimodal:p=0.1,slow_ms=40)")
    parser.add_argument("--rate", type=float, default=10.0, help="offered batches per second, Poisson (default 10)")
    parser.add_argument("--batches", type=int, default=None,
                        help=f"simulated batches per scheme (default {SIM_BATCHES}; the real run of --measure "
                             "takes --measure-batches)")
    parser.add_argument("--schemes", default=",".join(SIMULATED_SCHEMES),
                        help=f"comma list of {', '.join(SIMULATED_SCHEMES)}")
    parser.add_argument("--policy", default=None,
                        help="coded wait policy: deadline | first:M | all (default first:M, M = N - N//3)")
    parser.add_argument("--exact-policy", default=None,
                        help="systematic schemes' policy, e.g. exact:M@T (default: --policy; measured at N = 100, "
                             "p = 0.3 in docs/simulate.md)")
    parser.add_argument("--deadline-ms", type=float, default=30.0, help="end-to-end deadline (default 30)")
    parser.add_argument("--hard-timeout-ms", type=float, default=2000.0, help="(default 2000)")
    parser.add_argument("--hedge-ms", type=float, default=None,
                        help="hedged: second copy after this many ms (default: p95 of one worker request)")
    parser.add_argument("--model", default="lenet5", help="accuracy tables of this model (default lenet5)")
    parser.add_argument("--calibration", default=None, help=f"calibration JSON (default {display_path(DEFAULT_CALIBRATION)})")
    parser.add_argument("--independent-round-trips", action="store_true",
                        help="draw each worker round trip independently from the calibration pool instead of "
                             "per real batch (docs/simulate.md: which tail assumption)")
    parser.add_argument("--engine", choices=("fast", "simpy"), default="fast",
                        help="fast (vectorized, checked against SimPy in the tests) or simpy (reference, slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate", default=None, metavar="SUMMARY_JSON",
                        help="compare with a measured summary.json (from --measure or nercc loadtest): its "
                             "settings (N, K, load, deadline, policy) and profile replace the flags above")
    parser.add_argument("--measure", action="store_true",
                        help="do the REAL run instead: LocalCluster + CodedClient, calibration (no stragglers) "
                             "then the profile under test; writes OUT/calibration.json and OUT/summary.json. "
                             "Run it alone on an otherwise idle machine, e.g. "
                             "tools/exclusive nercc simulate --measure ...")
    parser.add_argument("--sequential", action="store_true",
                        help="--measure: one cluster at a time (calibration, then the profile) when two do not fit")
    parser.add_argument("--measure-batches", type=int, default=MEASURE_BATCHES,
                        help=f"--measure: real batches per scheme under the straggler profile (default "
                             f"{MEASURE_BATCHES}; --batches is the simulated count and does not apply)")
    parser.add_argument("--calibration-batches", type=int, default=200,
                        help="--measure: real batches per scheme for the calibration (default 200)")
    parser.add_argument("--out", required=True, help="output folder (summary.json)")


def _check(args) -> Optional[str]:
    if args.workers < 1 or args.inputs < 1 or args.inputs > args.workers:
        return f"need 1 <= --inputs <= --workers, got K={args.inputs}, N={args.workers}"
    if args.measure and args.batches is not None:
        return (f"--batches is the simulated count; the real run (--measure) takes --measure-batches "
                f"(got --batches {args.batches})")
    if args.batches is None:
        args.batches = SIM_BATCHES
    if args.batches < 10:
        return f"--batches must be >= 10, got {args.batches}"
    if args.measure_batches < 10:
        return f"--measure-batches must be >= 10, got {args.measure_batches}"
    if args.calibration_batches < 10:
        return f"--calibration-batches must be >= 10, got {args.calibration_batches}"
    if not (args.rate > 0 and math.isfinite(args.rate)):
        return f"--rate must be a positive number, got {args.rate}"
    bad = [s for s in args.schemes.split(",") if s.strip() not in SIMULATED_SCHEMES]
    if bad:
        return f"unknown scheme(s) {', '.join(bad)}; use {', '.join(SIMULATED_SCHEMES)}"
    return None


def _profile_name(straggler) -> str:
    return str(straggler).split(":", 1)[0]


def run_simulation(n_workers: int, n_inputs: int, straggler: str, rate: float, n_batches: int,
                   schemes: List[str], policy: str, deadline_ms: float, hard_timeout_ms: float,
                   hedge_ms: Optional[float], model: str, calibration, engine: str, seed: int,
                   progress: bool = True, independent: bool = False,
                   exact_policy: Optional[str] = None) -> Dict[str, Dict]:
    """``policy`` for the plain coded schemes; ``exact_policy`` for the systematic ones (None: the same
    ``policy``; `exact:M@T` is theirs alone, :func:`exact_policy_for` gives one)."""
    from nercc.progress import progress_bar
    from nercc.simulate.core import simulate
    from nercc.simulate.model import AccuracyTable, CodingCost, ServiceModel, SimSettings

    service = calibration if isinstance(calibration, ServiceModel) else ServiceModel.load(calibration)
    service.independent = independent
    accuracy = AccuracyTable.find(model, n_workers, n_inputs)
    cost = CodingCost()
    for scheme in schemes:  # time the coding first, on a quiet process (after 10^7-element runs it read 10x high)
        if scheme in CODED_SCHEMES:
            cost.measure(scheme, n_workers, n_inputs)
    out = {}
    if exact_policy is None:
        exact_policy = policy
    for scheme in progress_bar(schemes, desc="simulate", disable=not progress, leave=False):
        settings = SimSettings(scheme, n_workers, n_inputs, straggler, rate=rate, n_batches=n_batches,
                               policy=exact_policy if scheme in SYSTEMATIC_SCHEMES else policy,
                               deadline_ms=deadline_ms, hard_timeout_ms=hard_timeout_ms,
                               hedge_ms=hedge_ms, seed=seed)
        out[scheme] = simulate(settings, service, accuracy, engine=engine, cost=cost)
    return out


def validation(simulated: Dict[str, Dict], measured: Dict[str, Dict]) -> Dict:
    table = {}
    for scheme, sim in simulated.items():
        meas = measured.get(scheme)
        if meas is None:
            continue
        row = {}
        for key in VALIDATED + ("rel_acc",):
            s, m = sim.get(key), meas.get(key)
            err = None if s is None or m in (None, 0) else round((s - m) / m, 4)
            row[key] = {"simulated": s, "measured": m, "rel_error": err}
        table[scheme] = row
    worst = [abs(r[k]["rel_error"]) for r in table.values() for k in ("p50_ms", "p99_ms")
             if r[k]["rel_error"] is not None]
    return {"schemes": table, "max_abs_rel_error_p50_p99": round(max(worst), 4) if worst else None}


def _measured_profile(data: Dict, straggler: str) -> tuple:
    from nercc.serving.stragglers import parse_straggler

    profiles = data.get("profiles", {})
    want = str(parse_straggler(straggler))
    for name, prof in profiles.items():
        if str(parse_straggler(prof.get("straggler", "none"))) == want:
            return name, prof
    if len(profiles) == 1:
        return next(iter(profiles.items()))
    raise SystemExit(f"nercc simulate: {', '.join(profiles)} in the measured file; none has straggler {want!r}")


def _print_table(schemes: Dict[str, Dict], title: str) -> None:
    print(title)
    print(f"  {'scheme':12s} {'p50':>8s} {'p99':>8s} {'p99.9':>8s} {'RelAcc':>7s} {'compute':>8s} {'late':>6s}")
    for name, r in schemes.items():
        def f(v):
            return "   fail" if v is None else f"{v:8.2f}"
        rel = r.get("rel_acc")
        print(f"  {name:12s} {f(r['p50_ms'])} {f(r['p99_ms'])} {f(r['p99.9_ms'])} "
              f"{'    n/a' if rel is None else f'{rel:7.4f}'} {r['measured_compute_per_input']:8.2f} "
              f"{r['late'] / max(r['requests'], 1):6.1%}")


def main(args) -> int:
    problem = _check(args)
    if problem:
        print(f"nercc simulate: {problem}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    policy = args.policy or default_policy(args.workers)
    schemes = [s.strip() for s in args.schemes.split(",")]
    command = "nercc simulate " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["simulate"] else None
    if args.measure:
        from nercc.simulate.measure import measure

        summary = measure(out_dir, args.workers, args.inputs, args.straggler, args.rate, args.measure_batches,
                          args.calibration_batches, policy, args.deadline_ms, args.seed, schemes,
                          args.sequential)
        summary["command"] = command
        with open(out_dir / "summary.json", "w") as fh:
            json.dump(summary, fh, indent=1)
        _print_table(summary["profiles"]["measured"]["schemes"], f"measured ({args.straggler}), {out_dir}")
        return 0

    n, k, straggler, rate, deadline = args.workers, args.inputs, args.straggler, args.rate, args.deadline_ms
    measured = None
    if args.validate:
        with open(args.validate) as fh:
            data = json.load(fh)
        st = data.get("settings", {})
        n, k = int(st.get("n_workers", n)), int(st.get("n_inputs", k))
        rate = float(st.get("offered_batches_per_s", rate))
        deadline = float(st.get("deadline_ms", deadline))
        policy = st.get("coded_policy", policy)
        name, prof = _measured_profile(data, straggler)
        straggler = prof.get("straggler", straggler)
        measured = prof["schemes"]
        schemes = [s for s in schemes if s in measured]
        if args.hedge_ms is None and measured.get(HEDGED, {}).get("hedge_ms") is not None:
            args.hedge_ms = float(measured[HEDGED]["hedge_ms"])  # the delay the real client used
    try:
        t0 = time.perf_counter()
        results = run_simulation(n, k, straggler, rate, args.batches, schemes, policy, deadline,
                                 args.hard_timeout_ms, args.hedge_ms, args.model,
                                 args.calibration, args.engine, args.seed,
                                 independent=args.independent_round_trips, exact_policy=args.exact_policy)
        seconds = time.perf_counter() - t0
    except (ValueError, FileNotFoundError) as exc:
        print(f"nercc simulate: {exc}", file=sys.stderr)
        return 2
    summary = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "settings": {"simulated": True, "engine": args.engine, "model": args.model, "n_workers": n,
                     "n_inputs": k, "offered_batches_per_s": rate, "batches": args.batches,
                     "deadline_ms": deadline, "hard_timeout_ms": args.hard_timeout_ms, "coded_policy": policy,
                     "systematic_policy": {s: r.get("policy") for s, r in results.items()
                                           if s in SYSTEMATIC_SCHEMES} or None,
                     "replication_copies": n // k, "calibration": display_path(args.calibration or DEFAULT_CALIBRATION),
                     "round_trips": "independent" if args.independent_round_trips else "per real batch",
                     "seed": args.seed, "seconds": round(seconds, 2)},
        "profiles": {_profile_name(straggler): {"straggler": str(straggler), "schemes": results}},
    }
    title = f"simulated N={n} K={k} {straggler} at {rate:g} batches/s, coded {policy}, deadline {deadline:g} ms"
    _print_table(results, title)
    if measured is not None:
        summary["validation"] = {"measured": display_path(args.validate), **validation(results, measured)}
        print("validation (simulated vs measured, relative error):")
        for scheme, row in summary["validation"]["schemes"].items():
            cells = []
            for key in VALIDATED:
                c = row[key]
                err = "n/a" if c["rel_error"] is None else f"{c['rel_error']:+.0%}"
                cells.append(f"{key[:-3]} {c['simulated']}/{c['measured']} ({err})")
            print(f"  {scheme:12s} " + "  ".join(cells))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"wrote {out_dir / 'summary.json'} ({seconds:.1f} s)")
    return 0
