"""Locust tail-latency benchmark: uncoded vs replication vs BACC vs NeRCC on one Triton cluster per straggler profile.

For each straggler profile (``none``, ``bimodal``, ``shifted-exp``, ``dead-worker``, or ``all`` four) this starts a
local cluster (master + N workers, LocalCluster) or uses the one given by URL, runs Locust headless once per scheme
with the same users, spawn rate and duration (``loadtest/locustfile.py``, one subprocess per scheme), and writes a
report folder: summary.json, report.md, latency CDF plots per profile and p99/p99.9 bars across profiles, plus the
raw per-request logs and Locust CSVs under raw/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from nercc.paths import REPO_ROOT

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SCHEMES = ("uncoded", "replication", "bacc", "nercc")
USER_CLASSES = {"uncoded": "UncodedUser", "replication": "ReplicationUser", "bacc": "BaccUser", "nercc": "NerccUser"}

#: Worker straggler profiles (nercc.serving.stragglers strings). An idle worker answers a LeNet5 request in about
#: 2 ms end to end here, so "20x slower" is +40 ms; dead-worker runs without injected delay and kills a worker.
PROFILES: Dict[str, dict] = {
    "none": {"straggler": "none", "description": "no injected delay"},
    "bimodal": {"straggler": "bimodal:p=0.1,slow_ms=40",
                "description": "10% of worker requests are 20x slower (+40 ms on a ~2 ms request)"},
    "shifted-exp": {"straggler": "shifted-exp:shift_ms=1,scale_ms=4",
                    "description": "every worker request is delayed by 1 ms + an exponential with mean 4 ms"},
    "dead-worker": {"straggler": "none", "description": "one worker is killed (SIGKILL) during each scheme's run"},
}
PROFILE_NAMES = tuple(PROFILES)

QUICK = {"duration": 8.0, "users": 8, "rounds": 1}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="bimodal", choices=PROFILE_NAMES + ("all",),
                        help="straggler profile to run, or all four")
    parser.add_argument("--quick", action="store_true",
                        help=f"short CI-sized run: {QUICK['duration']:g} s per scheme in one round, {QUICK['users']} "
                             "users (one profile in under 3 minutes)")
    parser.add_argument("--model", default="lenet5", help="exported MNIST model to serve")
    parser.add_argument("--workers", type=int, default=12, help="N: worker tritonservers")
    parser.add_argument("--inputs", type=int, default=4, help="K: images per coded batch")
    parser.add_argument("--users", type=int, default=16,
                        help="Locust users per scheme (in total with --together), each with one batch in flight")
    parser.add_argument("--rate-per-user", type=float, default=2.5,
                        help="batches per second each user starts (constant pacing): users x rate is the offered "
                             "load, the same for every scheme; keep it moderate on a small machine so the run "
                             "measures stragglers, not CPU saturation; 0 = closed loop (as fast as answers come)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all at once)")
    parser.add_argument("--duration", type=float, default=40.0,
                        help="seconds of load per scheme (in total over the rounds)")
    parser.add_argument("--together", action="store_true",
                        help="run the schemes at the same time in one Locust process (--users split evenly among "
                             "them) instead of one after another: identical background conditions for all, at the "
                             "price of sharing the workers")
    parser.add_argument("--rounds", type=int, default=8,
                        help="split each scheme's time into this many runs, in alternating scheme order "
                             "(ABCD, DCBA, ...), so slow drifts of a shared machine hit every scheme alike")
    parser.add_argument("--deadline-ms", type=float, default=40.0,
                        help="end-to-end deadline per batch (default: the bimodal straggler's extra delay, so a "
                             "coded batch never waits for a straggler)")
    parser.add_argument("--policy", default="auto",
                        help="coded schemes' policy: first:M | deadline | all | auto (first:M, M = ceil(2N/3))")
    parser.add_argument("--hard-timeout-ms", type=float, default=2000.0,
                        help="longest a batch waits for the answers it needs")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated subset of " + ", ".join(SCHEMES))
    parser.add_argument("--straggler", default=None,
                        help="override the profile's worker straggler string (nercc.serving.stragglers syntax)")
    parser.add_argument("--kill-worker", type=int, default=0, help="dead-worker: index of the worker to kill")
    parser.add_argument("--kill-after", type=float, default=None,
                        help="dead-worker: seconds into each scheme's run to kill it (default: a third of --duration)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workers' straggler delays")
    parser.add_argument("--master-url", default=None, help="use this running master instead of starting a cluster")
    parser.add_argument("--worker-urls", default=None, help="comma-separated worker URLs of a running cluster")
    parser.add_argument("--out", default=None, help="report folder (default: reports/<profile>-<UTC timestamp>/)")
    parser.add_argument("--record-predictions", type=int, default=1,
                        help="keep every n-th request's predictions to measure MSE/RelAcc (0: skip accuracy)")
    parser.add_argument("--tritonserver", default=None, help="tritonserver binary (default: nvidia-pytriton's)")
    parser.add_argument("--master-instances", type=int, default=1,
                        help="model instances of the master's preprocess and encoder: with one, concurrent "
                             "batches queue behind each other's encode")


def _check_args(args) -> List[str]:
    if args.quick:
        args.duration = min(args.duration, QUICK["duration"])
        args.users = min(args.users, QUICK["users"])
        args.rounds = QUICK["rounds"]
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    if args.workers < 2:
        raise ValueError(f"--workers must be >= 2, got {args.workers}")
    if not 2 <= args.inputs <= args.workers:
        raise ValueError(f"--inputs K must be in 2..workers={args.workers}, got {args.inputs}")
    if args.users < 1:
        raise ValueError(f"--users must be >= 1, got {args.users}")
    if args.duration <= 0:
        raise ValueError(f"--duration must be > 0 seconds, got {args.duration}")
    if args.rate_per_user < 0:
        raise ValueError(f"--rate-per-user must be >= 0, got {args.rate_per_user}")
    if not args.deadline_ms > 0:
        raise ValueError(f"--deadline-ms must be > 0, got {args.deadline_ms}")
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown or not schemes:
        raise ValueError(f"--schemes: unknown {unknown or 'empty list'}; choose from {', '.join(SCHEMES)}")
    if args.master_url and not args.worker_urls:
        raise ValueError("--master-url needs --worker-urls")
    if not 0 <= args.kill_worker < args.workers:
        raise ValueError(f"--kill-worker must be in 0..{args.workers - 1}, got {args.kill_worker}")
    if args.together and args.users % len(schemes):
        raise ValueError(f"--together splits --users evenly among {len(schemes)} schemes: {args.users} does not divide")
    return schemes


def resolve_policy(policy: str, n_workers: int) -> str:
    """``auto`` → ``first:M`` with M = ceil(2N/3): decode from the fastest two thirds, never past the deadline."""
    if policy == "auto":
        return f"first:{max(2, math.ceil(2 * n_workers / 3))}"
    return policy


def run_seconds(args) -> float:
    """Length of one Locust run: the scheme's duration split over the rounds (whole seconds, Locust's -t)."""
    return max(1.0, round(args.duration / args.rounds))


def locust_command(args, schemes: List[str], master_url: str | None, worker_urls: List[str], csv_prefix: Path,
                   requests_log: Path) -> List[str]:
    spawn_rate = args.spawn_rate if args.spawn_rate else args.users
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(args.users), "-r", f"{spawn_rate:g}", "-t", f"{run_seconds(args):g}s", "--stop-timeout", "10",
        "--csv", str(csv_prefix), "--csv-full-history", "--loglevel", "WARNING",
        "--worker-urls", ",".join(worker_urls), "--model", args.model, "--n-inputs", str(args.inputs),
        "--deadline-ms", f"{args.deadline_ms:g}", "--policy", args.policy,
        "--hard-timeout-ms", f"{args.hard_timeout_ms:g}", "--requests-log", str(requests_log),
        "--record-predictions", str(args.record_predictions), "--rate-per-user", f"{args.rate_per_user:g}",
    ]
    if master_url:
        command += ["--master-url", master_url]
    return command + [USER_CLASSES[scheme] for scheme in schemes]


def _locust_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc's fork/poller notices would drown Locust's summary
    return env


def run_locust(args, schemes: List[str], master_url, worker_urls, raw_dir: Path, tag: str, on_started=None) -> Path:
    """One headless Locust run of these schemes' user classes; returns the requests log.

    ``on_started(log_path, process)`` runs while Locust is running (the dead-worker kill)."""
    scheme = schemes[0] if len(schemes) == 1 else "together"
    csv_prefix = raw_dir / f"locust_{tag}_{scheme}"
    requests_log = raw_dir / f"requests_{tag}_{scheme}.jsonl"
    if requests_log.exists():
        requests_log.unlink()
    stdout_path = raw_dir / f"locust_{tag}_{scheme}.log"
    command = locust_command(args, schemes, master_url, worker_urls, csv_prefix, requests_log)
    with open(stdout_path, "w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_locust_env(), cwd=REPO_ROOT)
        try:
            if on_started is not None:
                on_started(requests_log, process)
            process.wait(timeout=run_seconds(args) + 180)
        except BaseException:
            process.kill()
            process.wait()
            raise
    # Locust exits 1 when any request failed; that is a result, not a crash. No log at all is a crash.
    if not requests_log.exists() or requests_log.stat().st_size == 0:
        tail = stdout_path.read_text()[-3000:]
        raise RuntimeError(f"locust run for {scheme} produced no requests (exit {process.returncode}); "
                           f"{stdout_path}:\n{tail}")
    return requests_log


def _kill_during_run(cluster, index: int, after_s: float, record: dict):
    """on_started hook: once the first request is logged, wait ``after_s`` and SIGKILL worker ``index``."""

    def hook(requests_log: Path, process: subprocess.Popen) -> None:
        started = time.monotonic()
        while (not requests_log.exists() or requests_log.stat().st_size == 0) and process.poll() is None:
            if time.monotonic() - started > 120:
                return
            time.sleep(0.05)
        time.sleep(after_s)
        if process.poll() is None:
            cluster.kill_worker(index)
            record["killed_at"] = time.time()

    return hook


def _start_cluster(args, straggler: str):
    from nercc.serving import LocalCluster

    return LocalCluster(args.model, n_workers=args.workers, straggler=straggler, seed=args.seed,
                        tritonserver=args.tritonserver, master_instances=args.master_instances).start()


def run_profile(args, profile: str, schemes: List[str], raw_dir: Path, progress) -> dict:
    """Every scheme under one straggler profile; returns the profile block of summary.json (without analysis)."""
    spec = PROFILES[profile]
    straggler = args.straggler or spec["straggler"]
    dead = profile == "dead-worker"
    kill_after = args.kill_after if args.kill_after is not None else run_seconds(args) / 3
    block = {"straggler": straggler, "description": spec["description"], "runs": {s: [] for s in schemes}}
    if dead:
        block.update(killed_worker=args.kill_worker, kill_after_s=kill_after)
    external = bool(args.worker_urls)
    if external and dead:
        raise ValueError("--profile dead-worker kills a worker of a local cluster; it cannot run on given URLs")
    cluster = None
    try:
        for round_index in range(args.rounds):
            order = schemes if round_index % 2 == 0 else schemes[::-1]
            groups = [order] if args.together else [[scheme] for scheme in order]
            for group in groups:
                label = "together" if args.together else group[0]
                progress.set_description(f"{profile} / {label} / round {round_index + 1}")
                if external:
                    master_url, worker_urls = args.master_url, [u.strip() for u in args.worker_urls.split(",") if u]
                else:
                    if cluster is None or dead:  # dead-worker: each run starts with every worker alive
                        if cluster is not None:
                            cluster.stop()
                        cluster = _start_cluster(args, straggler)
                    master_url, worker_urls = cluster.master_url, cluster.worker_urls
                run = {"round": round_index + 1, "schemes": list(group), "started": time.time()}
                hook = _kill_during_run(cluster, args.kill_worker, kill_after, run) if dead else None
                tag = f"{profile}_r{round_index + 1}"
                run["requests_log"] = str(run_locust(args, group, master_url, worker_urls, raw_dir, tag, hook))
                run["locust_csv"] = str(raw_dir / f"locust_{tag}_{'together' if args.together else group[0]}_stats.csv")
                crashed = cluster.check() if cluster is not None else []
                if crashed:  # a dead server turns every later run's numbers into a dead-worker profile: say so
                    run["crashed_servers"] = crashed
                    progress.write(f"WARNING: {profile} / {label} / round {round_index + 1}: "
                                   f"server(s) died during the run: {', '.join(crashed)}")
                for scheme in group:
                    block["runs"][scheme].append(run)
                progress.update(len(group))
    finally:
        if cluster is not None:
            cluster.stop()
    return block


def analyse(args, summary: dict, out_dir: Path) -> Dict[str, str]:
    """Fill in the per-scheme numbers, write the plots; returns {profile or 'p99': plot file name}."""
    from loadtest import report

    reference = None
    if args.record_predictions:
        reference = report.Reference(args.model, args.inputs)
    plots: Dict[str, str] = {}
    for profile, block in summary["profiles"].items():
        block["schemes"] = {}
        latencies = {}
        for scheme, runs in block["runs"].items():
            loaded = []
            for run in runs:
                requests, loop_events = report.read_requests(Path(run["requests_log"]))
                requests = [r for r in requests if r["scheme"] == scheme]  # --together: one log, every scheme
                loaded.append((requests, loop_events, report.read_locust_stats(Path(run["locust_csv"]), scheme)))
            block["schemes"][scheme] = report.summarize_scheme(loaded, scheme, args.workers, args.inputs, reference)
            latencies[scheme] = [report.latency_or_inf(r) for requests, _, _ in loaded for r in requests]
        name = f"latency_cdf_{profile}.png"
        report.plot_cdf(out_dir / name, profile, latencies, args.deadline_ms,
                        f"{args.model}, N = {args.workers}, K = {args.inputs}, {args.users} users — profile "
                        f"'{profile}': {block['description']}")
        plots[profile] = name
    report.plot_p99_bars(out_dir / "p99_by_profile.png", summary)
    plots["p99"] = "p99_by_profile.png"
    return plots


def main(args) -> int:
    from tqdm import tqdm

    from loadtest import report

    schemes = _check_args(args)
    profiles = list(PROFILE_NAMES) if args.profile == "all" else [args.profile]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else REPO_ROOT / "reports" / f"{args.profile}-{stamp}"
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    policy = resolve_policy(args.policy, args.workers)
    summary = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "nercc loadtest " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["loadtest"] else sys.argv[1:]),
        "settings": {
            "model": args.model, "n_workers": args.workers, "n_inputs": args.inputs, "users": args.users,
            "rate_per_user": args.rate_per_user,
            "offered_batches_per_s": args.users * args.rate_per_user if args.rate_per_user else None,
            "spawn_rate": args.spawn_rate or args.users, "duration_s": run_seconds(args) * args.rounds,
            "rounds": args.rounds, "run_s": run_seconds(args), "together": bool(args.together),
            "users_per_scheme": args.users // len(schemes) if args.together else args.users,
            "deadline_ms": args.deadline_ms, "hard_timeout_ms": args.hard_timeout_ms, "coded_policy": policy,
            "replication_copies": args.workers // args.inputs, "seed": args.seed, "cpu_count": os.cpu_count(),
            "cluster": "given URLs" if args.worker_urls else "LocalCluster on this machine",
            "fresh_cluster_per_scheme": "dead-worker" in profiles,
            "notes": [
                "- Every scheme runs on the same N workers under the same straggler profile; the straggler "
                "delays are drawn per worker request from each worker's seeded stream, so schemes see the same "
                "distribution, not the same draws.",
                "- A worker holds its one model instance while it straggles (a slow machine), so requests queued "
                "behind a slow one wait too; coded and replication send N requests per batch, uncoded K, so they "
                "put N / K times more load on the workers.",
                "- All servers and Locust share this machine's few CPU cores with whatever else runs on it: "
                "absolute numbers include CPU contention; compare schemes within a profile.",
            ],
        },
        "profiles": {},
    }
    with tqdm(total=len(profiles) * len(schemes) * args.rounds, unit="run", desc="loadtest") as progress:
        for profile in profiles:
            summary["profiles"][profile] = run_profile(args, profile, schemes, raw_dir, progress)
    plots = analyse(args, summary, out_dir)
    for block in summary["profiles"].values():
        unique = {id(run): run for runs in block["runs"].values() for run in runs}  # --together shares runs
        for run in unique.values():  # paths relative to the report folder, so it can be moved
            run["requests_log"] = os.path.relpath(run["requests_log"], out_dir)
            run["locust_csv"] = os.path.relpath(run["locust_csv"], out_dir)
    summary["plots"] = plots
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report.write_markdown(out_dir / "report.md", summary, plots)
    print(report.summary_table(summary))
    for line in report.target_checks(summary):
        print(line)
    print(f"\nreport: {out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.splitlines()[0])
    configure(parser)
    sys.exit(main(parser.parse_args()))
