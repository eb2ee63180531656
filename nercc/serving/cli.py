"""Start a local Triton cluster (one master + N workers) and keep it up until Ctrl-C.

    nercc serve --model lenet5 --workers 12 --straggler bimodal:p=0.1,slow_ms=40

prints the master's and workers' gRPC URLs (``--urls-file`` also writes them as JSON for other programs)
and stops every server on Ctrl-C or SIGTERM. With ``--write-repository DIR`` it writes a static Triton
model repository instead (``--native-onnxruntime`` for Triton builds with the ONNX Runtime backend, such as
the NGC containers) and starts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nercc.serving.repository import DEFAULT_CODED_INSTANCES, DEFAULT_MAX_REQUEST_BYTES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=argparse.SUPPRESS, action="append", dest="models", metavar="MODEL",
                        help="exported model to serve (model_repository/<model>); with --write-repository it may "
                             "be repeated, or 'all' for every exported model (default: lenet5)")
    parser.add_argument("--workers", type=int, default=12, help="number of worker tritonservers")
    parser.add_argument("--straggler", default="none",
                        help="per-request delay injected at every worker: none | shifted-exp:shift_ms=..,scale_ms=.."
                             " | bimodal:p=..,slow_ms=.. | bimodal:p=..,factor=.. | pareto:scale_ms=..,alpha=..")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workers' straggler delays")
    parser.add_argument("--base-port", type=int, default=None,
                        help="master gRPC port; worker i gets base+1+i; None: free ports")
    parser.add_argument("--tritonserver", default=None, metavar="PATH",
                        help="tritonserver binary to run; None: $NERCC_TRITONSERVER, else nvidia-pytriton's, else PATH")
    parser.add_argument("--no-master", action="store_true", help="start the workers only")
    parser.add_argument("--masters", type=int, default=1,
                        help="number of masters (identical encoders): clients given several fail over in order")
    parser.add_argument("--http", action="store_true", help="also open HTTP endpoints")
    parser.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads per worker")
    parser.add_argument("--master-instances", type=int, default=1,
                        help="model instances of the master's preprocess and encoder (concurrent encodes under load)")
    parser.add_argument("--coded-instances", type=int, default=DEFAULT_CODED_INSTANCES,
                        help="model instances of the coded endpoint <model>_coded (batches it serves at once; each "
                             "holds one batch for its whole wait)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="encoder limit on the input and on the coded output of one request")
    parser.add_argument("--urls-file", type=Path, default=None,
                        help="write {master_url, worker_urls, model, straggler} as JSON here once ready")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep runtime repositories and server logs here; None: a temp dir, removed on exit")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument("--write-repository", type=Path, default=None, metavar="DIR",
                        help="write a static Triton model repository to DIR and exit (starts nothing)")
    parser.add_argument("--role", choices=("all", "master", "worker"), default="all",
                        help="with --write-repository: which models to write")
    parser.add_argument("--native-onnxruntime", action="store_true",
                        help="with --write-repository: worker configs for Triton's onnxruntime backend "
                             "(platform onnxruntime_onnx, NGC containers) instead of the Python-backend worker")
    parser.add_argument("--copy", action="store_true",
                        help="with --write-repository: a portable repository, real files only (no links, no host "
                             "paths); one folder serves every worker (`nercc worker --repository DIR --index i`)")
    parser.add_argument("--gpu", action="store_true",
                        help="with --write-repository --native-onnxruntime: KIND_GPU instance groups and "
                             "dynamic batching in the worker configs")
    parser.add_argument("--metrics", action="store_true",
                        help="open each server's Prometheus endpoint (Triton metrics) on a free port")
    from nercc.serving.node import EXECUTION_ENV_HELP, add_tls_options

    parser.add_argument("--execution-env", default=None, metavar="PATH", help=EXECUTION_ENV_HELP)

    add_tls_options(parser)


def _models(args) -> list:
    models = getattr(args, "models", None) or ["lenet5"]
    if "all" in models:
        from nercc.models import list_models

        models = list_models()
    return models


def _write_repository(args) -> int:
    from nercc.serving.repository import write_repository

    folders = write_repository(args.write_repository, _models(args), role=args.role,
                               native_onnxruntime=args.native_onnxruntime,
                               max_request_bytes=args.max_request_bytes, intra_op_threads=args.ort_threads,
                               master_instances=args.master_instances, copy=args.copy, gpu=args.gpu,
                               execution_env=args.execution_env, coded_instances=args.coded_instances)
    for folder in folders:
        print(folder)
    kind = "native onnxruntime" if args.native_onnxruntime else "Python-backend onnxruntime"
    kind += ", KIND_GPU" if args.gpu else ""
    copy = "; real files, no links" if args.copy else ""
    print(f"wrote {len(folders)} model folder(s) to {args.write_repository} ({kind} workers{copy})")
    return 0


def _print_cluster(cluster, model: str, args) -> None:
    """What a user needs to reach the cluster: URLs, metrics, the admin header, the URL file and logs."""
    from nercc.serving.cluster import ADMIN_HEADER

    print(f"ready in {cluster.startup_s:.1f} s")
    for i, url in enumerate(cluster.master_urls):
        print(f"master {i:<2} {url}   models {model}_encode, {model}_encoder, {model}_preprocess, "
              f"{model}_coded (K inputs -> K predictions), {model}_pipeline, {model}_coded_pipeline")
    for i, url in enumerate(cluster.worker_urls):
        print(f"worker {i:<2} {url}   model {model}")
    if args.http:
        print(f"HTTP: master {cluster.master_http_url}, workers {', '.join(cluster.worker_http_urls)}")
    if args.metrics:
        print(f"metrics: {', '.join(cluster.metrics_urls)}")
    if cluster.admin_key:
        print(f"admin endpoints (shared memory, model repository, trace, logging) need the header "
              f"{ADMIN_HEADER}: {cluster.admin_key}")
    if args.urls_file is not None:
        from nercc.serving.urls import write_urls

        write_urls(args.urls_file, cluster.description())
        print(f"URLs written to {args.urls_file}")
    if args.log_dir is not None:
        print(f"logs in {args.log_dir}/<role>/tritonserver.log")
    print("serving; Ctrl-C to stop", flush=True)


def _watch(cluster) -> None:
    """Serve until interrupted, reporting once each server that exits (with its last log lines)."""
    reported = set()
    while True:
        time.sleep(1.0)
        for role in cluster.check():
            if role not in reported:
                reported.add(role)
                server = next(s for s in cluster.servers if s.role == role)
                print(f"warning: {role} ({server.url}) exited; last log lines:\n{server.log_tail(10)}",
                      file=sys.stderr, flush=True)


def main(args) -> int:
    if args.write_repository is not None:
        try:
            return _write_repository(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"nercc serve: {exc}", file=sys.stderr)
            return 2
    if args.copy or args.gpu:
        print("nercc serve: --copy and --gpu go with --write-repository DIR", file=sys.stderr)
        return 2
    models = _models(args)
    if len(models) != 1:
        print("nercc serve: a cluster serves one model; give a single --model", file=sys.stderr)
        return 2
    from nercc.serving.cluster import LocalCluster
    from nercc.serving.stragglers import parse_straggler

    try:
        parse_straggler(args.straggler)
    except ValueError as exc:
        print(f"nercc serve: --straggler: {exc}", file=sys.stderr)
        return 2

    from nercc.serving.node import serve_until_stopped, tls_from_args

    try:
        tls = tls_from_args(args)
    except ValueError as exc:
        print(f"nercc serve: {exc}", file=sys.stderr)
        return 2
    if args.masters < 1:
        print(f"nercc serve: --masters must be >= 1, got {args.masters}", file=sys.stderr)
        return 2
    try:
        cluster = LocalCluster(
            models[0], n_workers=args.workers, straggler=args.straggler, seed=args.seed, base_port=args.base_port,
            tritonserver=args.tritonserver, master=not args.no_master, http=args.http, ort_threads=args.ort_threads,
            master_instances=args.master_instances, max_request_bytes=args.max_request_bytes,
            coded_instances=args.coded_instances, start_timeout_s=args.start_timeout, workdir=args.log_dir,
            keep_logs=args.log_dir is not None, metrics=args.metrics, tls=tls, n_masters=args.masters,
            execution_env=args.execution_env,
        )
    except (ValueError, FileNotFoundError) as exc:  # bad settings: one line, nothing started
        print(f"nercc serve: {exc}", file=sys.stderr)
        return 2
    n_servers = args.workers + (0 if args.no_master else args.masters)
    print(f"starting {n_servers} tritonserver(s) for {models[0]} (straggler: {cluster.straggler}) ...", flush=True)

    def serve() -> int:
        _print_cluster(cluster, models[0], args)
        _watch(cluster)
        return 0

    return serve_until_stopped("nercc serve", cluster, serve,
                               "\nstopped: every server is down and its shared memory removed")
