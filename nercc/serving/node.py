"""`nercc worker` and `nercc master`: one tritonserver on a host of its own, until Ctrl-C or SIGTERM.

    nercc worker --model lenet5 --index 3 --host 0.0.0.0 --port 8001     # worker 3 of the cluster
    nercc master --model lenet5 --workers 12 --host 0.0.0.0 --port 8001  # the encoder for N = 12

Both run the same launcher as ``nercc serve`` (:class:`nercc.serving.cluster.LocalCluster`, one server each).
``--host`` defaults to 127.0.0.1: serving other machines is an explicit ``--host 0.0.0.0`` (or an address).
Ports follow Triton's defaults: gRPC 8001, HTTP 8000 (health probes: /v2/health/ready), Prometheus metrics
8002 (on by default, ``--metrics-port off`` to close). ``auto`` picks a free port, ``off`` closes HTTP or
metrics. ``--repository DIR`` serves a portable repository (``nercc serve --write-repository DIR --copy``):
one folder for every worker, the index, straggler, seed and device come from this command line. TLS:
``--tls-cert/--tls-key`` (and ``--tls-ca`` to require client certificates signed by that CA).
List the servers' URLs, in worker order, in a ``urls.json`` for the clients (docs/deploy.md).
Triton's admin endpoints (shared memory, model repository, trace, logging) need the header
``nercc-admin-key``: the key is printed at start (a fresh one per server), or with ``--admin-key-file PATH``
read from PATH (created with a fresh key, mode 0600, when missing: give every node the same file) and only
the path printed. The key never goes into the server log.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from nercc.serving.repository import DEFAULT_CODED_INSTANCES, DEFAULT_MAX_REQUEST_BYTES


def port_option(value: str):
    """A port number, ``auto`` (a free port) or ``off``."""
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port must be 1..65535, 'auto' or 'off', got {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port must be 1..65535, 'auto' or 'off', got {port}")
    return port


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (gRPC)")
    group.add_argument("--tls-cert", type=Path, default=None, help="server certificate chain (PEM)")
    group.add_argument("--tls-key", type=Path, default=None, help="server private key (PEM)")
    group.add_argument("--tls-ca", type=Path, default=None,
                       help="CA (PEM) that signs client certificates: clients must present one (mutual TLS)")
    group.add_argument("--tls-no-client-auth", action="store_true",
                       help="with --tls-ca: do not require client certificates")


def tls_from_args(args):
    """TLSFiles from --tls-* (None without --tls-cert); ValueError names the missing or bad option."""
    from nercc.serving.cluster import TLSFiles

    cert, key, ca = args.tls_cert, args.tls_key, args.tls_ca
    if cert is None and key is None:
        if ca is not None:
            raise ValueError("--tls-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    return TLSFiles(cert=cert, key=key, ca=ca, mutual=False if args.tls_no_client_auth else None)


#: --help of --execution-env (nercc serve, worker, master).
EXECUTION_ENV_HELP = ("EXECUTION_ENV_PATH of the Python-backend models: a conda-pack .tar.gz (or unpacked folder) "
                      "with nercc[serve] installed, absolute or '$$TRITON_MODEL_DIRECTORY/...' (quote the $$); "
                      "default: the stub runs this interpreter's environment. docs/deploy.md")


def _configure_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lenet5", help="exported model (model_repository/<model>)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; 0.0.0.0 serves every interface (an explicit choice)")
    parser.add_argument("--port", type=port_option, default=8001, help="gRPC port (or auto)")
    parser.add_argument("--http-port", type=port_option, default=8000,
                        help="HTTP port for health probes (/v2/health/ready), or auto, or off")
    parser.add_argument("--metrics-port", type=port_option, default=8002,
                        help="Triton's Prometheus metrics port (/metrics), or auto, or off")
    parser.add_argument("--repository", type=Path, default=None, metavar="DIR",
                        help="serve this portable repository (nercc serve --write-repository DIR --copy) "
                             "instead of generating one from model_repository/")
    parser.add_argument("--tritonserver", default=None, metavar="PATH",
                        help="tritonserver binary; None: $NERCC_TRITONSERVER, else nvidia-pytriton's, else PATH")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep the runtime repository and the server log here; None: a temp dir")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument("--urls-file", type=Path, default=None,
                        help="write this server's URLs as JSON here once ready (merge them into urls.json)")
    parser.add_argument("--execution-env", default=None, metavar="PATH", help=EXECUTION_ENV_HELP)
    parser.add_argument("--admin-key-file", type=Path, default=None, metavar="PATH",
                        help="the key of the admin endpoints (header nercc-admin-key): read from PATH, or a fresh "
                             "one written there (mode 0600) when PATH is missing; default: a fresh key, printed")
    add_tls_options(parser)


def admin_key_from_file(path: Path) -> str:
    """The admin key in ``path`` (one line); a missing file gets a fresh random key, readable by its owner only."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(16)
        # O_EXCL: two nodes starting together with one missing file do not overwrite each other's key
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return admin_key_from_file(path)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        return key
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--admin-key-file {path}: cannot read it: {exc}") from None
    if not key or any(c in key for c in ",:= \t\n"):
        raise ValueError(f"--admin-key-file {path}: the key must be one non-empty word without ',', ':' or '=' "
                         "(delete the file to get a fresh one)")
    return key


def configure_worker(parser: argparse.ArgumentParser) -> None:
    _configure_common(parser)
    parser.add_argument("--index", type=int, default=0,
                        help="this worker's index i (its place in urls.json and its straggler stream)")
    parser.add_argument("--straggler", default="none",
                        help="per-request delay injected here (benchmarks): none | bimodal:p=..,slow_ms=.. | ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the straggler delays (stream (seed, index))")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="onnxruntime device: auto takes CUDA when the installed onnxruntime has it")
    parser.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads")


def configure_master(parser: argparse.ArgumentParser) -> None:
    _configure_common(parser)
    parser.add_argument("--workers", type=int, default=12,
                        help="N of the cluster this master encodes for (sizes its shared memory)")
    parser.add_argument("--master-instances", type=int, default=1,
                        help="model instances of preprocess and encoder (concurrent encodes)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="encoder limit on the input and on the coded output of one request")
    parser.add_argument("--worker-urls", default=None, metavar="H:P,H:P,...",
                        help="the workers' gRPC URLs in worker order, for the coded endpoint <model>_coded (it "
                             "decodes server-side); or set NERCC_WORKER_URLS")
    parser.add_argument("--coded-instances", type=int, default=DEFAULT_CODED_INSTANCES,
                        help="model instances of the coded endpoint (batches it serves at once)")


def _ports(args) -> dict:
    def fixed(value):
        return None if value in ("auto", "off") else value

    if args.port == "off":
        raise ValueError("--port (gRPC) cannot be off: it is the port clients use")
    return {
        "grpc_port": fixed(args.port),
        "http_port": fixed(args.http_port),
        "metrics_port": fixed(args.metrics_port),
        "http": args.http_port != "off",
        "metrics": args.metrics_port != "off",
    }


def build(role: str, args):
    """The one-server LocalCluster for ``nercc worker``/``nercc master`` (not started)."""
    from nercc.serving.cluster import LocalCluster
    from nercc.serving.stragglers import parse_straggler

    ports = _ports(args)
    common = dict(tritonserver=args.tritonserver, host=args.host, tls=tls_from_args(args),
                  repository=args.repository, start_timeout_s=args.start_timeout, workdir=args.log_dir,
                  execution_env=args.execution_env,
                  keep_logs=args.log_dir is not None, **ports)
    if args.admin_key_file is not None:
        common["admin_key"] = admin_key_from_file(args.admin_key_file)
    if role == "worker":
        if args.index < 0:
            raise ValueError(f"--index must be >= 0, got {args.index}")
        parse_straggler(args.straggler)
        return LocalCluster(args.model, n_workers=1, master=False, first_worker_index=args.index,
                            straggler=args.straggler, seed=args.seed, device=args.device,
                            ort_threads=args.ort_threads, **common)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    from nercc.serving.coded_endpoint import parse_worker_urls

    workers = parse_worker_urls(args.worker_urls) or None
    return LocalCluster(args.model, n_workers=args.workers, start_workers=False, master_instances=args.master_instances,
                        max_request_bytes=args.max_request_bytes, worker_urls=workers,
                        coded_instances=args.coded_instances, **common)


def serve_until_stopped(prog: str, cluster, serve, stopped: str) -> int:
    """``serve()`` inside ``with cluster`` until it returns, Ctrl-C or SIGTERM (systemd, kill, Kubernetes: the
    same clean path as Ctrl-C, every server stopped); a cluster error is one line on stderr and exit code 1."""
    from nercc.serving.cluster import ClusterError

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        with cluster:
            return serve()
    except KeyboardInterrupt:
        print(stopped, flush=True)
        return 0
    except (ClusterError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run(role: str, args) -> int:
    prog = f"nercc {role}"
    try:
        cluster = build(role, args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return serve_until_stopped(prog, cluster, lambda: _serve_node(prog, role, args, cluster), "stopped")


def _serve_node(prog: str, role: str, args, cluster) -> int:
    """The started node: print where it serves, write --urls-file, then watch the server until it exits."""
    server = cluster.servers[0]
    what = f"worker {args.index}" if role == "worker" else "master"
    print(f"{what} ready in {cluster.startup_s:.1f} s: gRPC {server.url}"
          + (" (TLS)" if cluster.tls is not None else "")
          + (f", HTTP {server.http_url}" if server.http_url else "")
          + (f", metrics {server.metrics_url}" if server.metrics_url else ""), flush=True)
    if cluster.admin_key:  # before --urls-file: whoever waits for that file finds this line already printed
        from nercc.serving.cluster import ADMIN_HEADER

        key = f"the key in {args.admin_key_file}" if args.admin_key_file is not None else cluster.admin_key
        print(f"admin endpoints (shared memory, model repository, trace, logging) need the header "
              f"{ADMIN_HEADER}: {key}", flush=True)
    if args.urls_file is not None:
        record = {"role": role, "model": cluster.meta.name, "url": server.url, "http_url": server.http_url,
                  "metrics_url": server.metrics_url, "tls": cluster.tls is not None}
        if role == "worker":
            record["index"] = args.index
        args.urls_file.write_text(json.dumps(record, indent=2) + "\n")
    print("serving; Ctrl-C to stop", flush=True)
    while True:
        time.sleep(1.0)
        if cluster.check():
            print(f"{prog}: tritonserver exited; last log lines:\n{server.log_tail(10)}", file=sys.stderr)
            return 1
