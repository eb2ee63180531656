"""The main job: a local Triton cluster, MNIST batches through every scheme, one latency/accuracy table.

Starts one master and N worker ``tritonserver`` processes (LeNet5, bimodal stragglers injected at the workers),
sends the same MNIST test batches of K raw images through uncoded, replication, hedged, BACC, NeRCC and
systematic NeRCC on the same workers (interleaved batch by batch, so machine load drifts hit every scheme alike), compares every answer with
the model run locally on the same inputs, prints the table, and stops every server.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from nercc.coding import mean_squared_error
from nercc.coding.registry import BACC_SYS_NAME, HEDGED, NERCC_NAME, SYSTEMATIC_SCHEMES
from nercc.coding.registry import SCHEME_ORDER as REGISTRY_ORDER

LOCAL_ENCODE_SUFFIX = "-local"
#: Table rows: the registry's schemes, plus ``nercc-local`` = NeRCC encoded in the client (``encode="local"``).
SCHEME_ORDER = (*REGISTRY_ORDER, NERCC_NAME + LOCAL_ENCODE_SUFFIX)
#: The rows a plain ``nercc demo`` runs: all but systematic BACC (``--schemes`` adds it), to keep the run short.
DEFAULT_ROWS = tuple(row for row in SCHEME_ORDER if row != BACC_SYS_NAME)
#: T of the demo's ``exact:M@T`` (ms): how long a systematic batch waits for a late input's own answer before
#: recovering it. Long enough for the parity answers to come in (they leave after the master's round trip: at
#: 8 ms a late input was recovered from ~8 answers, RelAcc 0.988), far below the injected straggler delay (40 ms)
#: and the deadline (25 ms). Measured T = 8 / 12 / 16 ms in docs/client.md: RelAcc 0.988 / 0.996 / 0.999.
DEMO_EXACT_PATIENCE_MS = 16.0


def client_settings(row: str) -> tuple:
    """(scheme, encode mode) of a table row: ``nercc-local`` is scheme nercc with ``encode="local"``."""
    if row.endswith(LOCAL_ENCODE_SUFFIX):
        return row[: -len(LOCAL_ENCODE_SUFFIX)], "local"
    return row, "server"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lenet5", help="exported model in model_repository/")
    parser.add_argument("--workers", "-n", type=int, default=12, help="worker tritonserver processes (N)")
    parser.add_argument("--inputs", "-k", type=int, default=4, help="inputs per coded batch (K)")
    parser.add_argument("--batches", type=int, default=300, help="batches sent with each scheme")
    parser.add_argument(
        "--straggler", default="bimodal:p=0.1,slow_ms=40",
        help="straggler profile injected at every worker: none, bimodal:p=..,slow_ms=.., "
             "shifted-exp:shift_ms=..,scale_ms=.., pareto:scale_ms=..,alpha=..",
    )
    parser.add_argument("--deadline-ms", type=float, default=25.0,
                        help="end-to-end budget per batch, from the call to the decoded predictions")
    parser.add_argument("--hard-timeout-ms", type=float, default=2000.0,
                        help="longest wait for the minimum number of answers before a batch fails")
    parser.add_argument("--policy", default="auto",
                        help="plain coded schemes' policy: deadline | first:M | first:M@T | all; "
                             "auto = first:ceil(2N/3)")
    parser.add_argument("--sys-policy", default="auto",
                        help="systematic schemes' policy: exact:M@T | first:M | ...; auto = exact:ceil(2N/3)@T "
                             f"with T = {DEMO_EXACT_PATIENCE_MS:g} ms (below the deadline)")
    parser.add_argument("--lam-enc", type=float, default=None,
                        help="NeRCC lam_enc (default: the model's tuning profile for this K, N and M)")
    parser.add_argument("--lam-dec", type=float, default=None,
                        help="NeRCC lam_dec (default: the model's tuning profile, per number of answers)")
    parser.add_argument("--hedge-ms", type=float, default=None,
                        help="hedged: delay before an input's second copy (default: p95 of the worker round trips "
                             "measured at warm-up and while running)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="batches in flight at once per scheme (1 = one after another: clean latency)")
    parser.add_argument("--schemes", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated rows to run, of {', '.join(SCHEME_ORDER)} (default: all but "
                             f"{BACC_SYS_NAME})")
    parser.add_argument("--seed", type=int, default=0, help="seed for the straggler draws and the batch choice")
    parser.add_argument("--warmup", type=int, default=10, help="unrecorded batches per scheme first")
    parser.add_argument("--save", default=None, metavar="PATH",
                        help="also write the settings and the table as JSON to PATH")
    parser.add_argument("--tritonserver", default=None, help="path of a tritonserver binary (default: pytriton's)")
    parser.add_argument("--urls-file", type=Path, default=None,
                        help="serve a running cluster described by this urls.json (nercc serve --urls-file, or "
                             "masters/workers on hosts of their own) instead of starting one; N = its workers")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="expose the client's Prometheus metrics on this port (127.0.0.1) while running")
    from nercc.client.tls import add_client_tls_options

    add_client_tls_options(parser)


@dataclass
class SchemeStats:
    scheme: str
    policy: str
    total_ms: List[float] = field(default_factory=list)
    encode_ms: List[float] = field(default_factory=list)
    fanout_ms: List[float] = field(default_factory=list)
    decode_ms: List[float] = field(default_factory=list)
    n_arrived: List[int] = field(default_factory=list)
    n_requests: List[int] = field(default_factory=list)
    late: int = 0
    deadline_met: int = 0
    failed: List[str] = field(default_factory=list)
    errors: int = 0
    lam_pairs: set = field(default_factory=set)  # (lam_enc, lam_dec) pairs NeRCC used
    exact: Dict[int, np.ndarray] = field(default_factory=dict)  # batch index -> bool (K,): own answer used
    hedge_ms: List[float] = field(default_factory=list)  # hedged: the hedge delay per batch
    predictions: Dict[int, np.ndarray] = field(default_factory=dict)  # batch index -> (K, n_classes)


def auto_policy(n_workers: int) -> str:
    return f"first:{max(2, math.ceil(2 * n_workers / 3))}"


def auto_exact_policy(n_workers: int, deadline_ms: float) -> str:
    """``exact:M@T`` with the plain schemes' M (ceil(2N/3)) and T = DEMO_EXACT_PATIENCE_MS, capped at 2/3 of the
    deadline (a recovery needs time for its decode before the deadline)."""
    patience = min(DEMO_EXACT_PATIENCE_MS, round(deadline_ms * 2 / 3, 1))
    return f"exact:{max(2, math.ceil(2 * n_workers / 3))}@{patience:g}"


def row_policy(args, scheme: str, n_workers: int) -> str:
    """The wait policy of one table row: --sys-policy for systematic schemes, --policy for the plain coded
    ones, ``deadline`` for the baselines (one answer per input; they stop when every input has one)."""
    from nercc.client import CODED_SCHEMES

    if scheme in SYSTEMATIC_SCHEMES:
        return (auto_exact_policy(n_workers, args.deadline_ms) if args.sys_policy == "auto"
                else args.sys_policy)
    if scheme in CODED_SCHEMES:
        return auto_policy(n_workers) if args.policy == "auto" else args.policy
    return "deadline"


class _GivenCluster:
    """A running cluster from urls.json, shaped like LocalCluster for the demo (starts and stops nothing)."""

    def __init__(self, master_url, worker_urls):
        self.master_url, self.worker_urls = master_url, list(worker_urls)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def check(self):
        return []


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


async def run_schemes(master_url, worker_urls, args, schemes, batches, progress, tls=None,
                      metrics=None) -> Dict[str, SchemeStats]:
    """Every batch through every scheme, interleaved; returns per-scheme stats."""
    from nercc.client import CodedClient, NotEnoughAnswersError

    clients = {}
    for row in schemes:
        scheme, encode = client_settings(row)
        clients[row] = CodedClient(
            master_url, worker_urls, model=args.model, scheme=scheme, deadline_ms=args.deadline_ms,
            policy=row_policy(args, scheme, len(worker_urls)), n_inputs=args.inputs,
            hard_timeout_ms=args.hard_timeout_ms, lam_enc=args.lam_enc, lam_dec=args.lam_dec, encode=encode,
            hedge_ms=args.hedge_ms, tls=tls, metrics=metrics,
        )
    stats = {s: SchemeStats(s, clients[s].policy) for s in schemes}
    try:
        for client in clients.values():
            await client.warmup(args.warmup)
        semaphore = asyncio.Semaphore(args.concurrency)

        async def one(scheme: str, index: int) -> None:
            async with semaphore:
                st = stats[scheme]
                try:
                    result = await clients[scheme].infer(batches[index])
                except NotEnoughAnswersError as exc:
                    st.failed.append(str(exc))
                    progress.update(1)
                    return
                st.total_ms.append(result.total_ms)
                st.encode_ms.append(result.encode_ms)
                st.fanout_ms.append(result.fanout_ms)
                st.decode_ms.append(result.decode_ms)
                st.n_arrived.append(len(result.arrived))
                st.n_requests.append(result.n_requests)
                st.late += result.late
                st.deadline_met += result.deadline_met
                st.errors += len(result.errors)
                st.predictions[index] = result.predictions
                st.exact[index] = result.exact
                if result.hedge_ms is not None:
                    st.hedge_ms.append(result.hedge_ms)
                if result.lam_enc is not None:
                    st.lam_pairs.add((result.lam_enc, result.lam_dec))
                progress.update(1)

        if args.concurrency == 1:
            # each batch on idle workers: wait (untimed) for the previous batch's straggler requests, so that
            # one scheme's leftovers never queue in front of the next scheme's batch
            for index in range(len(batches)):
                for scheme in schemes:
                    await one(scheme, index)
                    await clients[scheme].drain()
        else:
            # several batch indices in flight at once: latency under load, stragglers queue as they would
            await asyncio.gather(*(one(scheme, index) for index in range(len(batches)) for scheme in schemes))
    finally:
        for client in clients.values():
            await client.close()
    return stats


async def plain_requests(worker_url: str, model: str, x: np.ndarray, n: int, tls=None, input_name: str = "input",
                         output_name: str = "probs") -> List[float]:
    """Round trips of single-input requests straight to one worker (the floor a coded request builds on)."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.grpc import InferInput, InferRequestedOutput

    times = []
    async with grpcclient.InferenceServerClient(worker_url, **({} if tls is None else tls.grpc_kwargs())) as client:
        for i in range(n):
            data = x[i % len(x)][None]
            tensor = InferInput(input_name, list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            t0 = time.perf_counter()
            await client.infer(model, [tensor], outputs=[InferRequestedOutput(output_name)])
            times.append((time.perf_counter() - t0) * 1e3)
    return times[min(5, n // 10):]  # drop the first few: connection set-up


def format_table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def with_interval(values: Sequence[float], q: float) -> str:
    """'17.4 [16.9, 18.0]': the percentile and its distribution-free 95 % interval (nercc.stats); an end the
    batches cannot bound prints 'never'."""
    from nercc import stats as nstats

    if not len(values):
        return "-"
    return nstats.format_with_interval(percentile(values, q), nstats.percentile_interval(values, q))


def exact_share(st: SchemeStats, scheme: str) -> str:
    """Coded rows: the share of predictions that are their input's own worker answer (systematic schemes when
    the own answer came; plain coded schemes never); '-' for the baselines (always their own answer)."""
    from nercc.client import CODED_SCHEMES

    if client_settings(scheme)[0] not in CODED_SCHEMES or not st.exact:
        return "-"
    return f"{100 * float(np.concatenate(list(st.exact.values())).mean()):.1f}"


def accuracy(pred: np.ndarray, ref: np.ndarray, y: np.ndarray) -> tuple:
    """(MSE against the local model, RelAcc) of predictions; (nan, nan) for none. RelAcc is nan where the inputs
    have no labels (y < 0: a model added without labels, or a regression output)."""
    if not len(pred):
        return float("nan"), float("nan")
    base = float((ref.argmax(1) == y).mean())
    rel_acc = float((pred.argmax(1) == y).mean()) / base if base > 0 else float("nan")
    return mean_squared_error(pred, ref), rel_acc


def systematic_split(st: SchemeStats, reference, batch_labels) -> dict:
    """A systematic row's batches split by exactness: every own answer in (no straggler among the own workers)
    vs some input recovered, with MSE / RelAcc of each part and of the recovered inputs alone."""
    out = {}
    exact_batches = [i for i in sorted(st.predictions) if st.exact[i].all()]
    other = [i for i in sorted(st.predictions) if not st.exact[i].all()]
    for name, batches in (("exact batches", exact_batches), ("recovering batches", other)):
        if batches:
            pred = np.concatenate([st.predictions[i] for i in batches])
            ref = np.concatenate([reference[i] for i in batches])
            y = np.concatenate([batch_labels[i] for i in batches])
            out[name] = (len(batches), *accuracy(pred, ref, y))
    if other:
        masks = [~st.exact[i] for i in other]
        pred = np.concatenate([st.predictions[i][m] for i, m in zip(other, masks)])
        ref = np.concatenate([reference[i][m] for i, m in zip(other, masks)])
        y = np.concatenate([batch_labels[i][m] for i, m in zip(other, masks)])
        out["recovered inputs"] = (len(pred), *accuracy(pred, ref, y))
    return out


def table_rows(stats, schemes, reference, batch_labels, k) -> List[list]:
    """One table row per scheme: latency percentiles, accuracy against the local model, cost, lateness."""
    rows = []
    for scheme in schemes:
        st = stats[scheme]
        done = sorted(st.predictions)
        if done:
            pred = np.concatenate([st.predictions[i] for i in done])
            ref = np.concatenate([reference[i] for i in done])
            y = np.concatenate([batch_labels[i] for i in done])
            mse, rel_acc = accuracy(pred, ref, y)
        else:
            mse = rel_acc = float("nan")
        rows.append([
            scheme, st.policy,
            with_interval(st.total_ms, 50), f"{percentile(st.total_ms, 95):.1f}",
            with_interval(st.total_ms, 99), f"{max(st.total_ms, default=float('nan')):.1f}",
            f"{mse:.2e}", f"{rel_acc:.3f}", exact_share(st, scheme),
            f"{np.mean(st.n_requests) / k:.2f}" if st.n_requests else "-",
            f"{np.mean(st.n_arrived):.1f}" if st.n_arrived else "-",
            str(st.late), str(len(st.failed)),
            f"{percentile(st.encode_ms, 50):.2f}", f"{percentile(st.fanout_ms, 50):.2f}",
            f"{percentile(st.decode_ms, 50):.2f}",
        ])
    return rows


TABLE_HEADER = ["scheme", "policy", "p50 ms [95% CI]", "p95 ms", "p99 ms [95% CI]", "max ms", "MSE", "RelAcc",
                "exact %", "compute/input", "answers used", "late", "failed", "encode p50", "fan-out p50", "decode p50"]


def print_notes(args, stats, schemes, plain, k, reference=None, batch_labels=None) -> None:
    """The lines under the table: the plain request for scale, column meanings, lams, hedge delay, failures."""
    print(f"one plain request to one worker (batch 1, no coding, same straggler profile): "
          f"p50 {percentile(plain, 50):.2f} ms, p99 {percentile(plain, 99):.2f} ms over {len(plain)}")
    print("MSE: mean over inputs of ||f(x) - prediction||^2 against the model run locally (onnxruntime); "
          "RelAcc: top-1 of the predictions / top-1 of the local model on the same inputs; compute/input: worker "
          "requests per input (uncoded 1, replication N//K, coded N/K, hedged 1 + second copies); answers used: per "
          "batch (mean); nercc-local: NeRCC encoded in the client (encode='local'), no master round trip; "
          "late: batches that waited past the deadline for their minimum; latency: call to predictions; "
          "exact %: coded rows' predictions that are their input's own worker answer (systematic schemes: the own "
          "answer came; the rest recovered by the regression; plain coded schemes decode every input); "
          "[lo, hi]: 95 % interval of the percentile (order statistics; 'never': too few batches to bound it).")
    if NERCC_NAME in stats and stats[NERCC_NAME].lam_pairs:
        pairs = sorted(stats[NERCC_NAME].lam_pairs)
        enc = sorted({p[0] for p in pairs})
        dec = sorted({p[1] for p in pairs})
        source = "--lam-enc/--lam-dec" if args.lam_enc is not None or args.lam_dec is not None else "tuning profile"
        print(f"NeRCC lams ({source}): lam_enc {', '.join(f'{v:g}' for v in enc)}; "
              f"lam_dec {', '.join(f'{v:g}' for v in dec)}")
    for scheme in schemes:
        if scheme in SYSTEMATIC_SCHEMES and stats[scheme].predictions and reference is not None:
            parts = systematic_split(stats[scheme], reference, batch_labels)
            print(f"{scheme}: " + "; ".join(f"{name} {n}: MSE {m:.2e}, RelAcc {r:.3f}"
                                              for name, (n, m, r) in parts.items()))
    if HEDGED in stats and stats[HEDGED].hedge_ms:
        st = stats[HEDGED]
        print(f"hedged: hedge delay p50 {percentile(st.hedge_ms, 50):.2f} ms "
              f"({'--hedge-ms' if args.hedge_ms is not None else 'p95 of the measured worker round trips'}); "
              f"second copies per batch {np.mean(st.n_requests) - k:.2f}")
    for scheme in schemes:
        if stats[scheme].failed:
            print(f"{scheme}: {len(stats[scheme].failed)} batches failed, e.g. {stats[scheme].failed[0]}")


def pick_batches(args, k):
    """(raw batches, their labels, the local model's outputs on them): the same batches for every scheme."""
    from nercc.data import load_model_data
    from nercc.models import OnnxModel, load_model_info
    from nercc.preprocessing import preprocess
    from nercc.progress import progress_bar

    info = load_model_info(args.model)
    raw, labels = load_model_data(info, split="test")
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(raw), size=args.batches * k, replace=len(raw) < args.batches * k)
    raw_batches = [np.ascontiguousarray(raw[pick[i * k:(i + 1) * k]]) for i in range(args.batches)]
    batch_labels = [labels[pick[i * k:(i + 1) * k]] for i in range(args.batches)]
    # the reference: the same model on the same inputs, locally with onnxruntime
    f = OnnxModel(args.model, threads=1)
    reference = [f(preprocess(info, b)) for b in progress_bar(raw_batches, desc="local reference", unit="batch")]
    return raw_batches, batch_labels, reference


def client_options(args):
    """(tls, the running cluster of --urls-file or None, client metrics or None) from the command line."""
    from nercc.client.tls import ClientTLS

    try:
        tls = ClientTLS.from_options(args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        raise SystemExit(f"nercc demo: {exc}") from None
    given = None
    if args.urls_file is not None:
        from nercc.serving.urls import read_urls

        try:
            given = read_urls(args.urls_file)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"nercc demo: {exc}") from None
        if given.model and given.model != args.model:
            raise SystemExit(f"nercc demo: {args.urls_file} serves {given.model!r}, not --model {args.model!r}")
        if not given.master_url:
            raise SystemExit(f"nercc demo: {args.urls_file} names no master (the coded schemes need its encoder)")
        args.workers = len(given.worker_urls)
    metrics = None
    if args.metrics_port is not None:
        from nercc.client.metrics import ClientMetrics

        metrics = ClientMetrics()
        server = metrics.serve(args.metrics_port)
        print(f"client metrics on http://127.0.0.1:{server.server_port}/metrics", flush=True)
    return tls, given, metrics


def main(args: argparse.Namespace) -> int:
    from nercc.models import load_model_info
    from nercc.preprocessing import preprocess
    from nercc.progress import progress_bar
    from nercc.serving import LocalCluster

    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in SCHEME_ORDER]
    if unknown:
        raise SystemExit(f"nercc demo: unknown scheme(s) {unknown}; use {', '.join(SCHEME_ORDER)}")
    tls, given, metrics = client_options(args)
    if args.batches < 1 or args.concurrency < 1 or args.inputs < 2 or args.workers < args.inputs:
        raise SystemExit("nercc demo: need --batches >= 1, --concurrency >= 1, 2 <= --inputs <= --workers")
    k = args.inputs
    raw_batches, batch_labels, reference = pick_batches(args, k)
    y_all = np.concatenate(batch_labels)
    base_acc = float((np.concatenate(reference).argmax(1) == y_all).mean()) if (y_all >= 0).any() else float("nan")

    if given is None:
        print(f"starting master + {args.workers} workers ({args.model}, straggler {args.straggler}) ...", flush=True)
        cluster = LocalCluster(args.model, n_workers=args.workers, straggler=args.straggler, seed=args.seed,
                               tritonserver=args.tritonserver)
    else:
        print(f"using the cluster in {args.urls_file}: master {given.master_url}, {args.workers} workers "
              f"(their straggler settings are theirs: --straggler is ignored)", flush=True)
        cluster = _GivenCluster(given.master_url, given.worker_urls)
    t_start = time.perf_counter()
    with cluster:
        if given is None:
            print(f"cluster ready in {time.perf_counter() - t_start:.1f} s: master {cluster.master_url}, "
                  f"workers {cluster.worker_urls[0]} .. {cluster.worker_urls[-1]}", flush=True)
        with progress_bar(total=len(schemes) * args.batches, desc="batches (all schemes)", unit="batch") as progress:
            stats = asyncio.run(run_schemes(cluster.master_url, cluster.worker_urls, args, schemes,
                                            raw_batches, progress, tls=tls, metrics=metrics))
        info = load_model_info(args.model)
        x_plain = preprocess(info, raw_batches[0])
        plain = asyncio.run(plain_requests(cluster.worker_urls[0], args.model, x_plain, 200, tls=tls,
                                           input_name=info.input_name, output_name=info.output_name))
        crashed = cluster.check()
    print("all servers stopped" if given is None else "done (the given cluster keeps running)", flush=True)
    if crashed:
        print(f"WARNING: these servers died during the run: {', '.join(crashed)}")
    rows = table_rows(stats, schemes, reference, batch_labels, k)
    if args.save:
        import json

        record = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                               if k not in ("func",)},
                  "base_top1": base_acc, "n_inputs_total": int(len(y_all)),
                  "plain_request_ms": {"p50": percentile(plain, 50), "p99": percentile(plain, 99)},
                  "crashed_servers": crashed,
                  "table": [dict(zip(TABLE_HEADER, row)) for row in rows],
                  "systematic": {scheme: {name: {"batches_or_inputs": n, "mse": m, "rel_acc": r}
                                          for name, (n, m, r) in systematic_split(stats[scheme], reference,
                                                                                  batch_labels).items()}
                                 for scheme in schemes if scheme in SYSTEMATIC_SCHEMES and stats[scheme].predictions}}
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(record, indent=2) + "\n")
    print()
    straggler = args.straggler if given is None else f"as set on the servers of {args.urls_file}"
    print(f"{args.model}: N={args.workers} workers, K={k}, {args.batches} batches per scheme, straggler "
          f"{straggler}, deadline {args.deadline_ms:g} ms, concurrency {args.concurrency}; base model "
          f"top-1 on these {len(y_all)} inputs: {base_acc:.4f}")
    print(format_table(rows, TABLE_HEADER))
    print_notes(args, stats, schemes, plain, k, reference, batch_labels)
    return 0
