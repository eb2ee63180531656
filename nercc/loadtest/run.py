"""Tail-latency benchmark: uncoded / replication / hedged / BACC / NeRCC on one Triton cluster, under stragglers, below
saturation, measured by two load engines (Locust and a plain asyncio open-loop generator) that must agree.

A run: (1) calibrate on a straggler-free cluster: a short capacity ramp per scheme (open-loop Poisson load rising
until throughput falls behind or p50 doubles: the knee, load generator included) and CPU ms per batch from /proc;
(2) choose the offered load (a fraction of the lowest knee) and the deadline (a multiple of the coded path's own
no-straggler p50), printing both and why; (3) per straggler profile, start a cluster with that profile and run each
scheme at that load with each engine (``--engine``), then, for the coded schemes, one trace run whose per-worker
arrival times give the accuracy-latency frontier over M in ``first:M``; (4) write summary.json, report.md and
plots (latency CDFs, frontier per profile, latency vs load with ``--rates``) into the report folder.
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

from nercc.coding.registry import (
    BACC_NAME,
    CODED_SCHEMES,
    HEDGED,
    NERCC_NAME,
    NERCC_SYS_NAME,
    REPLICATION,
    SYSTEMATIC_SCHEMES,
    UNCODED,
)
from nercc.loadtest.workload import user_class_name
from nercc.paths import REPO_ROOT, display_path
from nercc.policy import parse_policy

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
ENGINES = ("asyncio", "locust")

#: Worker straggler profiles (nercc.serving.stragglers strings). An idle LeNet5 worker answers in about 1-2 ms
#: here, so +40 ms is a 20x slowdown; dead-worker runs without injected delay and SIGKILLs a worker mid-run.
PROFILES: Dict[str, dict] = {
    "none": {"straggler": "none", "description": "no injected delay"},
    "bimodal": {"straggler": "bimodal:p=0.1,slow_ms=40",
                "description": "10% of worker requests are delayed by +40 ms"},
    "bimodal-0.2": {"straggler": "bimodal:p=0.2,slow_ms=40",
                    "description": "20% of worker requests are delayed by +40 ms"},
    "bimodal-0.3": {"straggler": "bimodal:p=0.3,slow_ms=40",
                    "description": "30% of worker requests are delayed by +40 ms"},
    "slow-workers": {"straggler": "slow-workers:count=2,slow_ms=40",
                     "description": "workers 0 and 1 of 12 are always slow: +40 ms on every request"},
    "dead-worker": {"straggler": "none", "description": "one worker is killed (SIGKILL) a third into each run"},
    "shifted-exp": {"straggler": "shifted-exp:shift_ms=1,scale_ms=4",
                    "description": "every worker request is delayed by 1 ms + an exponential with mean 4 ms"},
}
PROFILE_NAMES = tuple(PROFILES)
#: `--profile all`: the issue's set.
ALL_PROFILES = ("bimodal", "bimodal-0.2", "bimodal-0.3", "slow-workers", "dead-worker")

#: Per model: the calibration ramp (START,FACTOR,MAX,STEP_S) and batches per run; heavier models get less load.
MODEL_DEFAULTS = {
    "lenet5": {"ramp": "8,1.5,300,2", "batches": 1000},
    "repvgg_cifar10": {"ramp": "4,1.5,150,3", "batches": 600},
    "efficientnet_lite0": {"ramp": "0.5,1.5,12,8,10", "batches": 40},
}
FALLBACK_DEFAULTS = {"ramp": "2,1.5,200,3", "batches": 400}

QUICK = {"batches": 150, "ramp": "8,2,64,1.5", "frontier_batches": 100}


def _configure_batch_rules(parser: argparse.ArgumentParser) -> None:
    """Deadline, wait policy, hedge delay and encoding: when a batch stops waiting and how it is coded."""
    parser.add_argument("--deadline-ms", type=float, default=None,
                        help="end-to-end deadline (SLO) per batch (default: --deadline-factor x the coded path's "
                             "no-straggler p50 measured by the calibration)")
    parser.add_argument("--deadline-factor", type=float, default=2.5, help="default deadline / coded no-straggler p50")
    parser.add_argument("--policy", default="auto",
                        help="coded schemes' policy: first:M | first:M@T | deadline | all | auto (first:M@T, M = N // 2 + 1, "
                             "T = 1.3 x the coded path's no-straggler p50 from the calibration)")
    parser.add_argument("--sys-policy", default="auto",
                        help="systematic schemes' policy (nercc-sys, bacc-sys): exact:M@T | first:M[@T] | deadline | "
                             "all | auto (exact:M@T, M = N // 2 + 1, T = 1.3 x the systematic path's no-straggler "
                             "p50 from the calibration)")
    parser.add_argument("--min-answers", default="policy",
                        help="coded schemes: fewest answers a batch decodes from; 'policy' = the M of first:M (with "
                             "fewer by the deadline the batch waits for the M-th and is late); a number; 0 = the "
                             "client's default (2)")
    parser.add_argument("--hard-timeout-ms", type=float, default=2000.0,
                        help="longest a batch waits for the answers it needs")
    parser.add_argument("--hedge-ms", type=float, default=None,
                        help="hedged: hedge delay (default: the p95 of one worker request's round trip measured by the "
                             "calibration, no stragglers; the client's own estimate would learn the stragglers' delay)")
    parser.add_argument("--encode", default="server", choices=("server", "local"),
                        help="coded schemes: encode on the master's Triton encoder (default) or in the client")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = exit_codes_text() + ". See docs/loadtest.md."
    parser.add_argument("--profile", default="bimodal",
                        help="straggler profile(s), comma-separated, or 'all' (" + ", ".join(ALL_PROFILES) + "); "
                             "known: " + ", ".join(PROFILE_NAMES))
    parser.add_argument("--engine", default="both", choices=ENGINES + ("both",),
                        help="load engine: Locust, the asyncio open-loop generator, or both at the same load "
                             "(the report then compares them; the headline numbers are the asyncio engine's)")
    parser.add_argument("--model", default="lenet5", help="exported model to serve (lenet5, repvgg_cifar10, "
                                                          "efficientnet_lite0); batches from its dataset")
    parser.add_argument("--workers", type=int, default=12, help="N: worker tritonservers")
    parser.add_argument("--inputs", type=int, default=4, help="K: inputs per batch")
    parser.add_argument("--rate", type=float, default=None,
                        help="offered load in batches/s, the same for every scheme and engine (default: "
                             "--load-fraction x the lowest knee of the calibration ramp)")
    parser.add_argument("--load-fraction", type=float, default=0.15,
                        help="default load as a share of the lowest scheme's knee (well below saturation: the knee "
                             "is where p50 doubles, and on 2 cores Poisson bursts already queue the coded path's "
                             "fan-out for CPU at 0.3 x it)")
    parser.add_argument("--rates", default=None,
                        help="comma-separated offered loads to sweep (batches/s, asyncio engine, first profile): "
                             "p50/p99/p99.9 vs load per scheme")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches per scheme and engine run (default per model: lenet5 1000); p99.9 needs 1000+")
    parser.add_argument("--locust-batches", type=int, default=None,
                        help="batches per Locust run with --engine both (default: --batches, the same as the asyncio "
                             "engine's); its p50/p99 intervals are compared with the asyncio engine's")
    _configure_batch_rules(parser)
    parser.add_argument("--schemes", default=None, help="comma-separated subset (default: every scheme the client has)")
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="run the measured phase R times, each on fresh clusters (calibration once); every repeat's "
                             "logs in raw/repeat-R/; the report gives each repeat, the spread, the pooled figures with "
                             "95 %% intervals, and a target that flips between repeats as undecided")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="skip the ramp (needs --rate and --deadline-ms); no knee, no no-straggler cost table")
    parser.add_argument("--ramp", default=None, help="calibration ramp START,FACTOR,MAX,STEP_S (default per model)")
    parser.add_argument("--no-frontier", action="store_true", help="skip the coded schemes' first:M trace runs")
    parser.add_argument("--frontier-batches", type=int, default=None,
                        help="batches of each coded scheme's trace run (default: 0.3 x --batches)")
    parser.add_argument("--users", type=int, default=None,
                        help="Locust users (default max(32, 2 x rate)): each runs a Poisson stream of rate / users")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI-sized: {QUICK['batches']} batches per run, a short ramp, {QUICK['frontier_batches']}-"
                             "batch traces")
    parser.add_argument("--straggler", default=None, help="override the profile's worker straggler string")
    parser.add_argument("--kill-worker", type=int, default=0, help="dead-worker: index of the worker to kill")
    parser.add_argument("--kill-after", type=float, default=None,
                        help="dead-worker: seconds into each run to kill it (default: a third of the run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workers' straggler delays")
    parser.add_argument("--master-url", default=None, help="use this running master instead of starting a cluster")
    parser.add_argument("--worker-urls", default=None, help="comma-separated worker gRPC URLs of a running cluster")
    parser.add_argument("--master-http-url", default=None, help="HTTP URL of that master (Locust's native transport)")
    parser.add_argument("--worker-http-urls", default=None,
                        help="comma-separated worker HTTP URLs, same order (Locust's native transport; without "
                             "them Locust drives the gRPC client through a thread bridge)")
    parser.add_argument("--locust-workers", type=int, default=0, metavar="W",
                        help="Locust engine in distributed mode: a master and W worker processes (locust --processes W) "
                             "share the users and the offered load; 0: one process")
    parser.add_argument("--urls-file", default=None,
                        help="urls.json of a running cluster (nercc serve --urls-file, or servers on other hosts)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="the engines expose the client's Prometheus metrics on this port while they run (0: off)")
    from nercc.client.tls import add_client_tls_options

    add_client_tls_options(parser)
    parser.add_argument("--out", default=None, help="report folder (default: reports/<model>-<profile>-<UTC time>/)")
    parser.add_argument("--record-predictions", type=int, default=1,
                        help="keep every n-th batch's predictions to measure MSE/RelAcc (0: skip accuracy)")
    parser.add_argument("--tritonserver", default=None, help="tritonserver binary (default: nvidia-pytriton's)")
    parser.add_argument("--master-instances", type=int, default=1, help="model instances of the master's models")


# ------------------------------------------------------------------------------------------------ arguments
def _split(text) -> List[str]:
    return [s.strip() for s in str(text or "").split(",") if s.strip()]


def _check_numbers(args, batches: int) -> None:
    """The numeric options' ranges (a ValueError naming the flag)."""
    if batches < 10:
        raise ValueError(f"--batches must be >= 10, got {batches}")
    if not 1 <= args.repeat <= 20:
        raise ValueError(f"--repeat must be in 1..20, got {args.repeat}")
    if args.rate is not None and not args.rate > 0:
        raise ValueError(f"--rate must be > 0 batches/s, got {args.rate}")
    if not 0 < args.load_fraction <= 1:
        raise ValueError(f"--load-fraction must be in (0, 1], got {args.load_fraction}")
    if args.deadline_ms is not None and not args.deadline_ms > 0:
        raise ValueError(f"--deadline-ms must be > 0, got {args.deadline_ms}")
    if not args.deadline_factor > 1:
        raise ValueError(f"--deadline-factor must be > 1, got {args.deadline_factor}")


def _check_cluster_and_policies(args, profiles) -> None:
    """Where the cluster comes from (URLs, TLS, a killable local worker) and the policies; fills the URLs of
    --urls-file into ``args``."""
    if args.no_calibrate and (args.rate is None or args.deadline_ms is None):
        raise ValueError("--no-calibrate needs --rate and --deadline-ms (nothing else can choose them)")
    if args.urls_file:
        if args.worker_urls:
            raise ValueError("give either --urls-file or --worker-urls, not both")
        from nercc.serving.urls import read_urls

        given = read_urls(args.urls_file)
        args.master_url, args.worker_urls = given.master_url, ",".join(given.worker_urls)
        args.workers = len(given.worker_urls)
        if not 2 <= args.inputs <= args.workers:
            raise ValueError(f"--inputs K must be in 2..{args.workers} (the workers in {args.urls_file})")
    from nercc.client.tls import ClientTLS

    ClientTLS.from_options(args.tls_ca, args.tls_cert, args.tls_key)  # files exist, cert goes with key
    if args.master_url and not args.worker_urls:
        raise ValueError("--master-url needs --worker-urls")
    if args.worker_urls and "dead-worker" in profiles:
        raise ValueError("--profile dead-worker kills a worker of a local cluster; it cannot run on given URLs")
    if not 0 <= args.kill_worker < args.workers:
        raise ValueError(f"--kill-worker must be in 0..{args.workers - 1}, got {args.kill_worker}")
    for flag, policy in (("--policy", args.policy), ("--sys-policy", args.sys_policy)):
        if policy != "auto":
            try:
                parse_policy(policy, args.workers)
            except ValueError as error:
                raise ValueError(f"{flag}: {error}") from None
    if args.policy != "auto" and parse_policy(args.policy, args.workers).kind == "exact":
        raise ValueError("--policy is the plain coded schemes' policy; exact:M@T needs a systematic scheme: give it "
                         "with --sys-policy")
    if args.min_answers != "policy" and not str(args.min_answers).isdigit():
        raise ValueError(f"--min-answers must be 'policy' or a number >= 0, got {args.min_answers!r}")
    if args.locust_workers < 0:
        raise ValueError(f"--locust-workers must be >= 0, got {args.locust_workers}")
    if args.users is not None and args.users < 1:
        raise ValueError(f"--users must be >= 1, got {args.users}")


def check_args(args) -> dict:
    """Validate; returns the resolved plan (schemes, profiles, engines, batches, rates)."""
    from nercc.loadtest.workload import available_schemes

    defaults = MODEL_DEFAULTS.get(args.model, FALLBACK_DEFAULTS)
    if args.workers < 2:
        raise ValueError(f"--workers must be >= 2, got {args.workers}")
    if not 2 <= args.inputs <= args.workers:
        raise ValueError(f"--inputs K must be in 2..workers={args.workers}, got {args.inputs}")
    known = available_schemes()
    schemes = _split(args.schemes) if args.schemes else list(known)
    unknown = [s for s in schemes if s not in known]
    if unknown or not schemes:
        raise ValueError(f"--schemes: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
    profiles = list(ALL_PROFILES) if args.profile == "all" else _split(args.profile)
    bad = [p for p in profiles if p not in PROFILES]
    if bad or not profiles:
        raise ValueError(f"--profile: unknown {bad or 'empty list'}; choose from {', '.join(PROFILE_NAMES)} or all")
    batches = args.batches or (QUICK["batches"] if args.quick else defaults["batches"])
    _check_numbers(args, batches)
    rates = []
    if args.rates:
        try:
            rates = [float(r) for r in _split(args.rates)]
        except ValueError:
            raise ValueError(f"--rates wants comma-separated numbers, got {args.rates!r}") from None
        if not rates or min(rates) <= 0:
            raise ValueError(f"--rates must be positive batches/s, got {args.rates!r}")
    _check_cluster_and_policies(args, profiles)
    from nercc.loadtest.openloop import ramp_rates

    ramp = args.ramp or (QUICK["ramp"] if args.quick else defaults["ramp"])
    ramp_rates(ramp)  # validates
    engines = list(ENGINES) if args.engine == "both" else [args.engine]
    engines.sort(key=lambda e: 0 if e == "asyncio" else 1)  # asyncio first: the yardstick, the headline
    return {
        "schemes": schemes, "profiles": profiles, "engines": engines, "batches": batches,
        # both engines run the same number of batches: their intervals are then equally wide, and compared
        "locust_batches": args.locust_batches or batches,
        "rates": rates, "ramp": ramp,
        "frontier_batches": args.frontier_batches or (QUICK["frontier_batches"] if args.quick else max(50, batches * 3 // 10)),
        "policy": resolve_policy(args.policy, args.workers),
        "auto_patience": args.policy == "auto",
        "sys_policy": resolve_policy(args.sys_policy, args.workers, systematic=True),
        "auto_sys_patience": args.sys_policy == "auto",
        "repeats": int(args.repeat),
    }


#: --policy auto: T of first:M@T / the coded path's no-straggler p50 of first:M (see choose_patience)
PATIENCE_FACTOR = 1.3


def resolve_policy(policy: str, n_workers: int, systematic: bool = False) -> str:
    """``auto`` -> ``first:M`` (``exact:M`` for the systematic schemes) with M = N // 2 + 1 (a majority); the
    patience T (``first:M@T``, ``exact:M@T``) is added once the calibration has measured the coded path
    (:func:`choose_load_and_deadline`)."""
    if policy == "auto":
        return f"{'exact' if systematic else 'first'}:{max(2, n_workers // 2 + 1)}"
    return policy


def scheme_policy(plan: dict, scheme: str) -> str:
    """The wait policy a scheme's runs use: the systematic schemes' (``--sys-policy``) or the others'."""
    return plan["sys_policy"] if scheme in SYSTEMATIC_SCHEMES else plan["policy"]


# ------------------------------------------------------------------------------------------------ engine runs
def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc's fork/poller notices would drown the engines' output
    return env


def engine_options(args, cluster: dict, scheme: str, deadline_ms: float, policy: str, log: Path,
                   rate: float, hard_timeout_ms: float | None = None, n_stragglers: int | None = None) -> List[str]:
    """The options both engines share (nercc.loadtest.workload.add_engine_arguments)."""
    options = [
        "--worker-urls", ",".join(cluster["worker_urls"]), "--model", args.model, "--n-inputs", str(args.inputs),
        "--deadline-ms", f"{deadline_ms:g}", "--policy", policy,
        "--hard-timeout-ms", f"{hard_timeout_ms or args.hard_timeout_ms:g}", "--rate", f"{rate:g}",
        "--arrival-seed", str(args.seed + 1), "--requests-log", str(log),
        "--record-predictions", str(args.record_predictions),
        "--server-pids", ",".join(str(p) for p in cluster["pids"]), "--encode", args.encode,
    ]
    if scheme == HEDGED and getattr(args, "hedge_ms_chosen", None):
        options += ["--hedge-ms", f"{args.hedge_ms_chosen:g}"]
    if cluster.get("master_url"):
        options += ["--master-url", cluster["master_url"]]
    # the Locust engine's native transport speaks HTTP, which Triton serves without TLS: with TLS, gRPC only
    if cluster.get("worker_http_urls") and not args.tls_ca and not args.tls_cert:
        options += ["--worker-http-urls", ",".join(cluster["worker_http_urls"])]
        if cluster.get("master_http_url"):
            options += ["--master-http-url", cluster["master_http_url"]]
    for flag, value in (("--client-tls-ca", args.tls_ca), ("--client-tls-cert", args.tls_cert),
                        ("--client-tls-key", args.tls_key)):
        if value:
            options += [flag, str(value)]
    if args.metrics_port:
        options += ["--metrics-port", str(args.metrics_port)]
    if n_stragglers is not None:
        options += ["--n-stragglers", str(n_stragglers)]
    min_answers = coded_min_answers(args, policy)
    if min_answers:
        options += ["--min-answers", str(min_answers)]
    return options


def coded_min_answers(args, policy: str) -> int | None:
    """``--min-answers M`` (the default): a coded batch never decodes from fewer than the M of the run's
    first:M policy; with fewer by the deadline it waits for the M-th and is late. Decoding from 2-6 of 12 answers
    is inaccurate, and each such arrived set is a decoder the client has not prebuilt (2-16 ms of CPU): under load
    those decodes fed on themselves (runs with 41 and 319 late batches of 991)."""
    if args.min_answers == "policy":
        m = parse_policy(policy, args.workers).m
        return m if m else None
    return int(args.min_answers) or None


def openloop_command(args, cluster, scheme, deadline_ms, policy, log, rate=1.0, duration=None, ramp=None,
                     **extra) -> List[str]:
    command = [sys.executable, "-m", "nercc.loadtest.openloop", "--scheme", scheme]
    command += ["--ramp", ramp] if ramp else ["--duration", f"{duration:g}"]
    return command + engine_options(args, cluster, scheme, deadline_ms, policy, log, rate, **extra)


def locust_users(args, rate: float) -> int:
    return args.users or max(32, math.ceil(2 * rate))


def locust_command(args, cluster, scheme, deadline_ms, policy, log, rate, duration, csv_prefix) -> List[str]:
    users = locust_users(args, rate)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", f"{math.ceil(duration + 2)}s", "--stop-timeout", "10",
        "--csv", str(csv_prefix), "--loglevel", "WARNING",
        "--html", str(csv_prefix) + ".html",  # Locust's own report, beside ours
    ]
    if args.locust_workers:
        # distributed mode: every worker process runs its share of the users and writes its own requests log
        # (<log>.worker<pid>), merged into <log> when the run ends
        command += ["--processes", str(args.locust_workers)]
    return command + engine_options(args, cluster, scheme, deadline_ms, policy, log, rate) + [user_class_name(scheme)]


def run_engine(command: List[str], log: Path, console: Path, timeout_s: float, on_started=None) -> Path:
    """Run one engine subprocess to the end; returns its requests log (a run that logged nothing is an error)."""
    if log.exists():
        log.unlink()
    with open(console, "w") as out:
        out.write("$ " + " ".join("python" if part == sys.executable else display_path(part) if os.path.isabs(part)
                                  else part for part in command) + "\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO_ROOT)
        try:
            if on_started is not None:
                on_started(log, process)
            process.wait(timeout=timeout_s)
        except BaseException:
            process.kill()
            process.wait()
            raise
    parts = sorted(log.parent.glob(log.name + ".worker*"))  # Locust's distributed mode: one log per worker process
    if parts:
        with open(log, "a") as merged:
            for part in parts:
                merged.write(part.read_text())
                part.unlink()
    # Locust exits 1 when any request failed; that is a result, not a crash. No log at all is a crash.
    if not log.exists() or log.stat().st_size == 0:
        raise RuntimeError(f"{command[2]} produced no log (exit {process.returncode}); {console}:\n"
                           + console.read_text()[-3000:])
    return log


def _kill_during_run(cluster_obj, index: int, after_s: float, record: dict):
    """on_started hook: once the engine's measured stretch began (its first CPU event), wait and SIGKILL a worker."""

    def hook(log: Path, process: subprocess.Popen) -> None:
        started = time.monotonic()
        while (not log.exists() or log.stat().st_size == 0) and process.poll() is None:
            if time.monotonic() - started > 120:
                return
            time.sleep(0.02)
        time.sleep(after_s)
        if process.poll() is None:
            cluster_obj.kill_worker(index)
            record["killed_at"] = time.time()

    return hook


class Clusters:
    """The cluster under test: a LocalCluster per straggler setting (restarted for dead-worker), or given URLs."""

    def __init__(self, args):
        self.args = args
        self.current = None
        self.straggler = None

    def get(self, straggler: str, fresh: bool = False) -> dict:
        args = self.args
        if args.worker_urls:
            return {"master_url": args.master_url, "worker_urls": _split(args.worker_urls), "pids": [], "obj": None,
                    "master_http_url": args.master_http_url, "worker_http_urls": _split(args.worker_http_urls)}
        if self.current is None or fresh or straggler != self.straggler:
            self.stop()
            from nercc.serving import LocalCluster

            self.current = LocalCluster(args.model, n_workers=args.workers, straggler=straggler, seed=args.seed,
                                        tritonserver=args.tritonserver,
                                        master_instances=args.master_instances, http=True).start()
            self.straggler = straggler
        c = self.current
        return {"master_url": c.master_url, "worker_urls": c.worker_urls, "pids": c.pids(), "obj": c,
                "master_http_url": c.master_http_url, "worker_http_urls": c.worker_http_urls}

    def check(self) -> List[str]:
        return self.current.check() if self.current is not None else []

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


# ------------------------------------------------------------------------------------------------ phases
def calibrate(args, plan, clusters: Clusters, raw_dir: Path, progress) -> dict:
    """Straggler-free capacity ramp per scheme: knee, no-straggler p50 and CPU per batch at the lightest load.

    A ramp whose lightest step already fell behind (no knee: a noisy machine, a burst) is run again lower
    (:func:`lower_ramp`: half the start, up to just below the old start), halving down to 1 batch/s; a scheme
    with still no knee keeps its lowest ramp and the reason (``no_knee``), and the run goes on at that rate
    (:func:`choose_load_and_deadline`) instead of stopping."""
    cluster = clusters.get("none")
    out = {"ramp": plan["ramp"], "straggler": "none", "schemes": {}}
    for scheme in plan["schemes"]:
        progress.set_description(f"calibrate / {scheme}")
        out["schemes"][scheme] = ramp_with_fallback(
            plan["ramp"], lambda ramp, tag, s=scheme: _ramp_run(args, plan, cluster, s, ramp, raw_dir, tag),
            lambda text, s=scheme: progress.write(f"calibration / {s}: {text}"))
        progress.update(1)
    return out


def _ramp_run(args, plan, cluster, scheme: str, ramp: str, raw_dir: Path, tag: str) -> dict:
    from nercc.loadtest import report

    log = raw_dir / f"ramp_{scheme}{tag}.jsonl"
    command = openloop_command(args, cluster, scheme, args.deadline_ms or 1000.0, scheme_policy(plan, scheme), log,
                               ramp=ramp, hard_timeout_ms=max(args.hard_timeout_ms, 2000.0))
    run_engine(command, log, raw_dir / f"ramp_{scheme}{tag}.log", timeout_s=900)
    return dict(report.ramp_summary(log), log=log.name)


#: The lowest start a fallback ramp goes down to (batches/s).
LOWEST_RAMP_RATE = 1.0


def lower_ramp(spec: str) -> str | None:
    """The ramp to try when ``spec``'s lightest step already fell behind: START / 2 (at least 1 batch/s) up to
    just below the old START, same FACTOR and step length; None when START is already the lowest."""
    from nercc.loadtest.openloop import ramp_rates

    ramp_rates(spec)  # validates
    values = [float(v) for v in spec.split(",")]
    start = values[0]
    if start <= LOWEST_RAMP_RATE * (1 + 1e-9):
        return None
    new_start = max(LOWEST_RAMP_RATE, start / 2)
    top = max(new_start, start * 0.999)
    return ",".join(f"{v:g}" for v in [new_start, values[1], top, *values[3:]])


def ramp_with_fallback(ramp: str, run_ramp, say=lambda text: None) -> dict:
    """Run ``run_ramp(ramp, tag) -> ramp summary``; while its lightest step fails, again on :func:`lower_ramp`.

    The result is the first ramp with a knee (or the lowest one tried), with ``lowered``: every ramp tried
    before it ({ramp, log, steps}), and, when no ramp found a knee, ``no_knee``: the reason in words."""
    tried = []
    result = run_ramp(ramp, "")
    while result["knee_batches_per_s"] is None:
        lower = lower_ramp(ramp)
        if lower is None:
            break
        first = result["steps"][0] if result["steps"] else None
        say(f"lightest step {first['rate'] if first else '?'} batches/s already fell behind; ramp again at {lower}")
        tried.append({"ramp": ramp, "log": result.get("log"), "steps": result["steps"]})
        ramp = lower
        result = run_ramp(ramp, f"_lower{len(tried)}")
    result["ramp"] = ramp
    result["lowered"] = tried
    if result["knee_batches_per_s"] is None:
        lowest = result["steps"][0]["rate"] if result["steps"] else None
        result["no_knee"] = (f"no knee: even the lightest step ({lowest} batches/s) fell behind after "
                             f"{len(tried)} lower ramp(s); the machine is too busy or too slow for this scheme")
        result["lowest_rate"] = lowest
        say(result["no_knee"])
    return result


def choose_load_and_deadline(args, plan, calibration: dict | None) -> dict:
    """The offered load and the deadline of the measured runs, with the reason for each (printed, stored)."""
    choice = {}
    knees = {s: c["knee_batches_per_s"] for s, c in (calibration or {}).get("schemes", {}).items()}
    if args.rate is not None:
        choice["rate"] = float(args.rate)
        choice["rate_why"] = "given by --rate"
    else:
        if not knees:
            raise RuntimeError("no calibration to choose the load from: give --rate")
        lowest = min(knees, key=lambda s: knees[s] if knees[s] is not None else 0.0)
        knee = knees[lowest] or 0.0
        if not knee:  # never die: go on at the lowest rate the ramps tried, and say why
            cal = calibration["schemes"][lowest]
            rate = float(cal.get("lowest_rate") or LOWEST_RAMP_RATE)
            choice["rate"] = rate
            choice["rate_why"] = (f"{lowest}: {cal.get('no_knee') or 'no knee'}; the run goes on at the lowest ramp "
                                  f"rate, {rate:g} batches/s (give --rate to choose it)")
            choice["no_knee"] = {s: c["no_knee"] for s, c in calibration["schemes"].items() if c.get("no_knee")}
        else:
            rate = max(_nice(args.load_fraction * knee), 0.01)
            choice["rate"] = rate
            choice["rate_why"] = (f"{args.load_fraction:g} x the lowest knee ({lowest}: {knee:g} batches/s, load "
                                  f"generator included) = {rate:g} batches/s: well below saturation, so latency shows "
                                  "stragglers, not queueing for CPU")
    if args.deadline_ms is not None:
        choice["deadline_ms"] = float(args.deadline_ms)
        choice["deadline_why"] = "given by --deadline-ms"
    else:
        coded = [s for s in (NERCC_NAME, BACC_NAME, *SYSTEMATIC_SCHEMES) if s in (calibration or {}).get("schemes", {})]
        if not coded:
            raise RuntimeError("the default deadline comes from a coded scheme's no-straggler p50: include nercc, "
                               f"bacc or {NERCC_SYS_NAME} in --schemes, or give --deadline-ms")
        p50 = calibration["schemes"][coded[0]]["p50_ms_light"]
        deadline = float(math.ceil(args.deadline_factor * p50))
        choice["deadline_ms"] = deadline
        choice["deadline_why"] = (f"{args.deadline_factor:g} x {coded[0]}'s no-straggler p50 at the lightest ramp step "
                                  f"({p50:.1f} ms) = {deadline:g} ms: an SLO the coded path meets by itself, not the "
                                  "injected straggler delay")
    if plan["auto_patience"]:
        choose_patience(args, plan, calibration, choice)
    else:
        choice["policy_why"] = "given by --policy"
    if plan["auto_sys_patience"]:
        choose_sys_patience(args, plan, calibration, choice)
    else:
        choice["sys_policy_why"] = "given by --sys-policy"
    if args.hedge_ms is not None:
        choice["hedge_ms"], choice["hedge_why"] = float(args.hedge_ms), "given by --hedge-ms"
    else:
        cal = (calibration or {}).get("schemes", {})
        source = next((s for s in (UNCODED, HEDGED, REPLICATION) if cal.get(s, {}).get("worker_ms_p95_light")),
                      None)
        if source:
            choice["hedge_ms"] = round(float(cal[source]["worker_ms_p95_light"]), 1)
            choice["hedge_why"] = (f"p95 of one worker request's round trip in {source}'s lightest ramp step, no "
                                   f"stragglers ({choice['hedge_ms']:g} ms): with stragglers on, a p95 lands among "
                                   "the slow requests and the hedge would come too late")
        else:
            choice["hedge_ms"], choice["hedge_why"] = None, "the client's own estimate (no calibration)"
    return choice


def choose_patience(args, plan, calibration: dict | None, choice: dict) -> None:
    """``--policy auto``: T of ``first:M@T`` = PATIENCE_FACTOR x the coded path's no-straggler p50 of first:M
    (rounded up): by then a batch without stragglers has (about) every answer, so it decodes from all N; a batch
    with a few stragglers decodes at T from the rest, and only more than N - M stragglers make it wait longer.
    (At 1.0 x, T = 13 ms on LeNet5, N = 12, most batches had only their 7th answer by T: RelAcc 0.94.)"""
    cal = (calibration or {}).get("schemes", {})
    coded = next((s for s in (NERCC_NAME, BACC_NAME) if s in cal), None)
    if coded:
        p50, source = cal[coded]["p50_ms_light"], f"{coded}'s no-straggler p50 at the lightest ramp step"
    else:
        p50, source = choice["deadline_ms"] / args.deadline_factor, "deadline / --deadline-factor (no calibration)"
    patience = float(min(math.ceil(PATIENCE_FACTOR * p50), math.ceil(choice["deadline_ms"]) - 1))
    source = f"{PATIENCE_FACTOR:g} x {source}"
    plan["policy"] = f"{plan['policy']}@{patience:g}"
    choice["policy_why"] = (f"auto: M = N // 2 + 1, T = {source} ({p50:.1f} ms) = {patience:g} ms: every answer "
                            "when nobody straggles, the answers in by T when a few do, the M-th only when more "
                            "than N - M straggle")


def choose_sys_patience(args, plan, calibration: dict | None, choice: dict) -> None:
    """``--sys-policy auto``: T of ``exact:M@T`` = PATIENCE_FACTOR x the systematic path's no-straggler p50 (its
    calibration ramp's lightest step: the time for every own answer), rounded up and below the deadline: a
    batch whose own workers answer is exact long before T; one with a late own worker recovers it at T from the
    answers in (M at least). Without a systematic calibration, the plain coded path's T."""
    cal = (calibration or {}).get("schemes", {})
    sys_cal = next((s for s in SYSTEMATIC_SCHEMES if s in cal), None)
    if sys_cal:
        p50, source = cal[sys_cal]["p50_ms_light"], f"{sys_cal}'s no-straggler p50 at the lightest ramp step"
    else:
        p50, source = choice["deadline_ms"] / args.deadline_factor, "deadline / --deadline-factor (no calibration)"
    patience = float(min(math.ceil(PATIENCE_FACTOR * p50), math.ceil(choice["deadline_ms"]) - 1))
    plan["sys_policy"] = f"{plan['sys_policy']}@{patience:g}"
    choice["sys_policy_why"] = (f"auto: M = N // 2 + 1, T = {PATIENCE_FACTOR:g} x {source} ({p50:.1f} ms) = "
                                f"{patience:g} ms: exact as soon as every own answer is in; a late own answer is "
                                "recovered at T from the answers in, never past the deadline")


def _nice(value: float) -> float:
    """Round a load down to 2 significant digits (a printable setting)."""
    if value <= 0:
        return 0.0
    digits = 1 - int(math.floor(math.log10(value)))
    return math.floor(value * 10 ** digits) / 10 ** digits


def measure_profile(args, plan, profile: str, clusters: Clusters, choice: dict, raw_dir: Path, progress,
                    block: dict | None = None, frontier: bool = True) -> dict:
    """Every scheme x engine at the chosen load under one profile, then (``frontier``) the coded schemes' frontier
    traces. Runs are appended to ``block`` as they finish, so a run that fails leaves the ones before it."""
    spec = PROFILES[profile]
    straggler = args.straggler or spec["straggler"]
    dead = profile == "dead-worker"
    rate, deadline = choice["rate"], choice["deadline_ms"]
    block = {} if block is None else block
    block.update(straggler=straggler, description=spec["description"], runs=block.get("runs", []))
    for scheme in plan["schemes"]:
        for engine in plan["engines"]:
            n = plan["locust_batches"] if engine == "locust" and len(plan["engines"]) > 1 else plan["batches"]
            block["runs"].append(_one_run(args, plan, profile, scheme, engine, n, rate, deadline, straggler, dead,
                                          clusters, raw_dir, progress, kind="main"))
    if frontier and not args.no_frontier:
        for scheme in [s for s in plan["schemes"] if s in CODED_SCHEMES]:
            block["runs"].append(_one_run(args, plan, profile, scheme, "asyncio", plan["frontier_batches"], rate,
                                          deadline, straggler, dead, clusters, raw_dir, progress, kind="trace"))
    return block


def sweep_rates(args, plan, profile: str, clusters: Clusters, choice: dict, raw_dir: Path, progress) -> list:
    spec = PROFILES[profile]
    straggler = args.straggler or spec["straggler"]
    runs = []
    for rate in plan["rates"]:
        for scheme in plan["schemes"]:
            runs.append(_one_run(args, plan, profile, scheme, plan["engines"][0], plan["batches"], rate,
                                 choice["deadline_ms"], straggler, profile == "dead-worker", clusters, raw_dir,
                                 progress, kind="sweep"))
    return runs


def _one_run(args, plan, profile, scheme, engine, n_batches, rate, deadline, straggler, dead, clusters, raw_dir,
             progress, kind: str) -> dict:
    duration = n_batches / rate
    tag = f"{profile}_{scheme}_{engine}" + ("" if kind == "main" else f"_{kind}") + (
        f"_{rate:g}" if kind == "sweep" else "")
    progress.set_description(f"{profile} / {scheme} / {engine}" + ("" if kind == "main" else f" / {kind}"))
    cluster = clusters.get(straggler, fresh=dead)
    log = raw_dir / f"requests_{tag}.jsonl"
    root = plan.get("raw_root", raw_dir)  # logs are named relative to raw/ (raw/repeat-R/... with --repeat)
    run = {"scheme": scheme, "engine": engine, "kind": kind, "rate": rate, "batches_planned": n_batches,
           "started": time.time(), "requests_log": str(log.relative_to(root))}
    policy = scheme_policy(plan, scheme)
    extra = {}
    if kind == "trace":  # wait for every worker (bounded): the arrival times of all N give every first:M
        coded_policy = parse_policy(policy, args.workers)
        policy = "all"
        extra = {"hard_timeout_ms": 2 * deadline}
        if coded_policy.kind in ("first", "exact"):
            extra["n_stragglers"] = args.workers - coded_policy.m
    if engine == "asyncio":
        command = openloop_command(args, cluster, scheme, deadline, policy, log, rate, duration, **extra)
    else:
        run["users"] = locust_users(args, rate)
        csv_prefix = raw_dir / f"locust_{tag}"
        command = locust_command(args, cluster, scheme, deadline, policy, log, rate, duration, csv_prefix)
        run["locust_csv"] = str(csv_prefix.relative_to(root)) + "_stats.csv"
        run["locust_html"] = str(csv_prefix.relative_to(root)) + ".html"
        run["locust_processes"] = args.locust_workers or 1
    hook = None
    if dead:
        kill_after = args.kill_after if args.kill_after is not None else duration / 3
        run.update(killed_worker=args.kill_worker, kill_after_s=round(kill_after, 2))
        hook = _kill_during_run(cluster["obj"], args.kill_worker, kill_after, run)
    run_engine(command, log, raw_dir / f"console_{tag}.log", timeout_s=duration + 240, on_started=hook)
    crashed = clusters.check() if not dead else []
    if crashed:  # a dead server turns every later run's numbers into a dead-worker profile: say so
        run["crashed_servers"] = crashed
        progress.write(f"WARNING: {tag}: server(s) died during the run: {', '.join(crashed)}")
    progress.update(1)
    return run


# ------------------------------------------------------------------------------------------------ main
#: Exit codes of ``nercc loadtest``: which phase failed. A failed phase leaves every phase before it in
#: summary.json (written after each phase) and every server stopped.
EXIT_CODES = {
    0: "every phase ran; summary.json, report.md and the plots are written",
    2: "bad arguments: nothing ran",
    3: "calibration failed (a ramp engine crashed, a cluster did not start): nothing measured",
    4: "a measured run failed (a profile of a repeat): the runs before it are in summary.json and analysed",
    5: "the --rates sweep failed: every profile is measured and reported",
    6: "the analysis or the report failed: summary.json holds the runs, without their numbers",
    130: "interrupted (Ctrl-C): the runs before it are in summary.json",
}
EXIT_BY_PHASE = {"calibration": 3, "measure": 4, "sweep": 5, "report": 6}


def exit_codes_text() -> str:
    return "exit codes: " + "; ".join(f"{code} = {words}" for code, words in EXIT_CODES.items())


def _write_summary(out_dir: Path, summary: dict) -> None:
    """summary.json now (after every phase): a later failure leaves what was done."""
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out_dir / "summary.json")


def _new_summary(args, plan: dict) -> dict:
    """The summary.json skeleton: the command, the settings, no phase done yet."""
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "nercc loadtest " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["loadtest"] else sys.argv[1:]),
        "settings": {
            "model": args.model, "n_workers": args.workers, "n_inputs": args.inputs, "engines": plan["engines"],
            "schemes": plan["schemes"], "batches_per_run": plan["batches"], "locust_batches": plan["locust_batches"],
            "frontier_batches": plan["frontier_batches"], "coded_policy": plan["policy"],
            "sys_policy": plan["sys_policy"], "encode": args.encode,
            "min_answers": args.min_answers, "repeats": plan["repeats"],
            "hard_timeout_ms": args.hard_timeout_ms, "replication_copies": args.workers // args.inputs,
            "seed": args.seed, "cpu_count": os.cpu_count(),
            "cluster": "given URLs" if args.worker_urls else "LocalCluster on this machine",
            "arrivals": "open loop, Poisson, the same rate for every scheme and engine",
        },
        "phases_done": [],
        "profiles": {},
        **({"repeats": []} if plan["repeats"] > 1 else {}),
    }


def _record_choice(args, plan: dict, choice: dict, summary: dict, progress) -> None:
    """Print the chosen load, deadline, policies and hedge delay with their reasons; keep them in the summary."""
    progress.write(f"offered load: {choice['rate']:g} batches/s — {choice['rate_why']}")
    progress.write(f"deadline: {choice['deadline_ms']:g} ms — {choice['deadline_why']}")
    progress.write(f"coded policy: {plan['policy']} — {choice['policy_why']}")
    if any(s in SYSTEMATIC_SCHEMES for s in plan["schemes"]):
        progress.write(f"systematic policy: {plan['sys_policy']} — {choice['sys_policy_why']}")
    if HEDGED in plan["schemes"]:
        args.hedge_ms_chosen = choice["hedge_ms"]
        progress.write(f"hedge delay: {choice['hedge_ms'] or 'client estimate'} — {choice['hedge_why']}")
    summary["settings"].update(offered_batches_per_s=choice["rate"], deadline_ms=choice["deadline_ms"],
                               load_choice=choice["rate_why"], deadline_choice=choice["deadline_why"],
                               coded_policy=plan["policy"], policy_choice=choice["policy_why"],
                               sys_policy=plan["sys_policy"], sys_policy_choice=choice["sys_policy_why"],
                               hedge_ms=choice.get("hedge_ms"), hedge_choice=choice.get("hedge_why"),
                               locust_users=locust_users(args, choice["rate"]))
    if choice.get("no_knee"):
        summary["settings"]["no_knee"] = choice["no_knee"]


def _measure_repeats(args, plan: dict, clusters, choice: dict, summary: dict, out_dir: Path, raw_dir: Path,
                     progress) -> None:
    """Every profile and scheme, ``plan['repeats']`` times (each repeat on fresh clusters); the summary is
    written after each profile."""
    repeats = plan["repeats"]
    for repeat in range(1, repeats + 1):
        if repeats > 1:  # every repeat on fresh clusters, its logs in raw/repeat-R/
            clusters.stop()
            repeat_dir = raw_dir / f"repeat-{repeat}"
            repeat_dir.mkdir(exist_ok=True)
            summary["repeats"].append({"repeat": repeat, "profiles": {}})
            blocks = summary["repeats"][-1]["profiles"]
            progress.write(f"repeat {repeat} of {repeats}")
        else:
            repeat_dir, blocks = raw_dir, summary["profiles"]
        for profile in plan["profiles"]:
            blocks[profile] = {"runs": []}
            measure_profile(args, plan, profile, clusters, choice, repeat_dir, progress,
                            block=blocks[profile], frontier=repeat == 1)
            _write_summary(out_dir, summary)
        summary["phases_done"].append(f"measure {repeat}" if repeats > 1 else "measure")


def _write_report(args, summary: dict, out_dir: Path, code: int) -> int:
    """Analyse the runs, write report.md and the plots; the exit code (the report's own on its failure)."""
    from nercc.loadtest import report

    try:
        report.analyse(summary, out_dir, record_predictions=bool(args.record_predictions))
        summary["phases_done"].append("report")
        _write_summary(out_dir, summary)
        report.write_markdown(out_dir / "report.md", summary)
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        summary.setdefault("failure", {"phase": "report", "error": f"{type(exc).__name__}: {exc}",
                                       "exit_code": EXIT_BY_PHASE["report"]})
        summary.pop("plots", None)
        _write_summary(out_dir, summary)
        return code or EXIT_BY_PHASE["report"]
    print(report.console_text(summary))
    print(f"\nreport: {out_dir / 'report.md'}")
    return code


def main(args) -> int:
    from nercc.progress import progress_bar

    if args.quick and args.batches is None:
        args.batches = QUICK["batches"]
    try:
        plan = check_args(args)
    except ValueError as exc:
        print(f"nercc loadtest: {exc}", file=sys.stderr)
        return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else REPO_ROOT / "reports" / f"{args.model}-{args.profile}-{stamp}"
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    plan["raw_root"] = raw_dir
    repeats = plan["repeats"]
    summary = _new_summary(args, plan)
    n_units = (0 if args.no_calibrate else len(plan["schemes"]))
    n_units += repeats * len(plan["profiles"]) * len(plan["schemes"]) * len(plan["engines"])
    n_units += 0 if args.no_frontier else len(plan["profiles"]) * len([s for s in plan["schemes"] if s in CODED_SCHEMES])
    n_units += len(plan["rates"]) * len(plan["schemes"])
    clusters = Clusters(args)
    phase, failure = "calibration", None
    try:
        with progress_bar(total=n_units, unit="run", desc="loadtest") as progress:
            calibration = None if args.no_calibrate else calibrate(args, plan, clusters, raw_dir, progress)
            summary["calibration"] = calibration
            choice = choose_load_and_deadline(args, plan, calibration)
            _record_choice(args, plan, choice, summary, progress)
            summary["phases_done"].append("calibration")
            _write_summary(out_dir, summary)
            phase = "measure"
            _measure_repeats(args, plan, clusters, choice, summary, out_dir, raw_dir, progress)
            if plan["rates"]:
                phase = "sweep"
                summary["sweep"] = {"profile": plan["profiles"][0], "engine": plan["engines"][0], "runs": []}
                summary["sweep"]["runs"] = sweep_rates(args, plan, plan["profiles"][0], clusters, choice, raw_dir,
                                                       progress)
                summary["phases_done"].append("sweep")
                _write_summary(out_dir, summary)
    except KeyboardInterrupt:
        failure = {"phase": phase, "error": "interrupted", "exit_code": 130}
    except Exception as exc:  # noqa: BLE001 - reported with its phase and exit code; the phases before it stay
        failure = {"phase": phase, "error": f"{type(exc).__name__}: {exc}", "exit_code": EXIT_BY_PHASE[phase]}
    finally:
        clusters.stop()
    if failure:
        summary["failure"] = failure
        if summary.get("sweep") and "sweep" not in summary["phases_done"]:
            summary.pop("sweep")  # half a sweep has no plot
        print(f"nercc loadtest: phase '{failure['phase']}' failed: {failure['error']}", file=sys.stderr)
        _write_summary(out_dir, summary)
    code = failure["exit_code"] if failure else 0
    if "calibration" not in summary["phases_done"]:
        print(f"summary (nothing measured): {out_dir / 'summary.json'}", file=sys.stderr)
        return code
    return _write_report(args, summary, out_dir, code)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m nercc.loadtest.run", description=__doc__.splitlines()[0])
    configure(parser)
    sys.exit(main(parser.parse_args()))
