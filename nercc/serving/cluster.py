"""LocalCluster: one master and N worker ``tritonserver`` processes on 127.0.0.1, started and stopped together.

>>> with LocalCluster("lenet5", n_workers=12, straggler="bimodal:p=0.1,slow_ms=40") as cluster:
...     cluster.master_url, cluster.worker_urls      # gRPC "127.0.0.1:PORT"

Each server gets its own runtime model repository (links to the ONNX file and the Python models, a
config with the model's shapes and that worker's straggler stream), its own ports and its own
Python-backend shared-memory prefix. Servers start all at once; the cluster is ready when every
server answers "ready" over gRPC (Triton opens its ports only after all models loaded). A server
that exits early raises :class:`ServerStartError` with the tail of its log.

The same launcher starts single servers on hosts of their own (``nercc worker`` / ``nercc master``, see
:mod:`nercc.serving.node`): ``host`` picks the bind address, ``first_worker_index`` the worker's index,
``grpc_port``/``http_port``/``metrics_port`` fixed ports, ``tls`` a certificate and key (Triton's
``--grpc-use-ssl``), ``repository`` a repository written once (``nercc serve --write-repository DIR --copy``)
instead of per-server runtime ones. Per-worker settings (index, straggler, seed, device) reach the worker's
Python model through the server's environment (``NERCC_WORKER_INDEX``, ``NERCC_STRAGGLER``, ``NERCC_SEED``,
``NERCC_DEVICE``), so one repository serves every worker.

Stopping (``stop()``, the end of the ``with`` block, an exception, Ctrl-C, interpreter exit): SIGTERM to
every server's process group (the server and its Python stubs), SIGKILL after ``stop_timeout_s``, then
the shared-memory regions with our prefixes are removed. Servers also get SIGTERM when the Python
thread that started them dies (Linux PR_SET_PDEATHSIG), so a killed client leaves no orphans.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Union

from nercc.serving import repository as repo
from nercc.serving.backend_utils import WORKER_ENV  # per-worker settings travel in the server's environment
from nercc.serving.coded_endpoint import WORKER_URLS_ENV  # the coded endpoint's workers, in the master's
from nercc.serving.stragglers import parse_straggler

PathLike = Union[str, Path]
HOST = "127.0.0.1"
SHM_DIR = Path("/dev/shm")
_MiB = 2**20
#: Relaunches of a server whose automatically picked port was taken by someone else meanwhile.
_PORT_RETRIES = 2
#: Log lines every CPU-only server prints; they hide the real error in a failure report.
_LOG_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "Pinned memory", "CUDA memory pool",
              "unable to create stream")


#: Triton endpoints only an operator needs: behind a key the launcher generates (``LocalCluster.admin_key``).
#: Registering a Python stub's own /dev/shm region through the shared-memory API crashed a worker (signal 11)
#: and could read in-flight data; inference, health, metadata, model-config and statistics stay open.
RESTRICTED_PROTOCOLS = ("shared-memory", "model-repository", "trace", "logging")
#: The header (gRPC metadata / HTTP header) that carries the admin key.
ADMIN_HEADER = "nercc-admin-key"


def admin_headers(admin_key: str, protocol: str = "grpc") -> dict:
    """Headers that unlock the restricted endpoints: Triton's gRPC side expects the header name with the
    prefix ``triton-grpc-protocol-``; HTTP takes it as it is."""
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    return {("triton-grpc-protocol-" if protocol == "grpc" else "") + ADMIN_HEADER: admin_key}


def restricted_protocol_args(admin_key: str, http: bool) -> List[str]:
    """tritonserver flags that put :data:`RESTRICTED_PROTOCOLS` behind ``ADMIN_HEADER: admin_key``."""
    if not admin_key or any(c in admin_key for c in ",:= \t\n"):
        raise ValueError("admin_key must be a non-empty string without ',', ':', '=' or whitespace")
    spec = f"{','.join(RESTRICTED_PROTOCOLS)}:{ADMIN_HEADER}={admin_key}"
    args = [f"--grpc-restricted-protocol={spec}"]
    if http:
        args.append(f"--http-restricted-api={spec}")
    return args


class ClusterError(RuntimeError):
    """The cluster could not be started (bad binary, busy port, a model that failed to load...)."""


class ServerStartError(ClusterError):
    """One server exited or never became ready; the message carries the tail of its log."""


class PortInUseError(ClusterError):
    """A requested port is already taken by another process."""


DEVICES = ("auto", "cpu", "cuda")
_WILDCARDS = ("0.0.0.0", "::", "")


def connect_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard bind is reached on loopback)."""
    return HOST if host in _WILDCARDS else host


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for gRPC over TLS: the server's certificate and key, and a CA for mutual TLS.

    With ``ca`` given the server requires client certificates signed by it (Triton's ``--grpc-use-ssl-mutual``)
    unless ``mutual=False``; clients verify the server against ``ca`` (or the system roots when None).
    """

    cert: Path
    key: Path
    ca: Path | None = None
    mutual: bool | None = None

    def __post_init__(self):
        for name in ("cert", "key", "ca"):
            value = getattr(self, name)
            if value is None:
                continue
            path = Path(value).resolve()
            if not path.is_file():
                raise ValueError(f"TLS {name} file {value} does not exist")
            object.__setattr__(self, name, path)
        if self.mutual and self.ca is None:
            raise ValueError("mutual TLS needs a CA (--tls-ca) to verify client certificates")
        if self.mutual is None:
            object.__setattr__(self, "mutual", self.ca is not None)

    def server_args(self) -> List[str]:
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.ca is not None:
            args.append(f"--grpc-root-cert={self.ca}")
        args.append(f"--grpc-use-ssl-mutual={'true' if self.mutual else 'false'}")
        return args

    def probe_client_kwargs(self) -> dict:
        """tritonclient.grpc kwargs for the launcher's readiness probe (mutual TLS: the server's own pair)."""
        kwargs = {"ssl": True, "root_certificates": None if self.ca is None else str(self.ca)}
        if self.mutual:
            kwargs.update(private_key=str(self.key), certificate_chain=str(self.cert))
        return kwargs


# --------------------------------------------------------------------------------------------------------
# where the server comes from


def pytriton_root() -> Path | None:
    """``<site-packages>/pytriton/tritonserver`` (the Triton 2.51 build shipped by nvidia-pytriton), if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def find_tritonserver(path: PathLike | None = None) -> Path:
    """The tritonserver binary: ``path``, else $NERCC_TRITONSERVER, else nvidia-pytriton's, else PATH."""
    candidates = []
    if path is not None:
        candidates = [Path(path)]
    elif os.environ.get("NERCC_TRITONSERVER"):
        candidates = [Path(os.environ["NERCC_TRITONSERVER"])]
    else:
        root = pytriton_root()
        if root is not None:
            candidates.append(root / "bin" / "tritonserver")
        which = shutil.which("tritonserver")
        if which:
            candidates.append(Path(which))
        candidates.append(Path("/opt/tritonserver/bin/tritonserver"))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    if path is not None or os.environ.get("NERCC_TRITONSERVER"):
        raise ClusterError(f"tritonserver binary {candidates[0]} does not exist or is not executable")
    raise ClusterError("no tritonserver found: install the serve extra (`pip install -e '.[serve]'`, which "
                       "brings nvidia-pytriton) or pass tritonserver=PATH / --tritonserver PATH")


def prepare_backend_directory(tritonserver: Path, workdir: Path) -> Path:
    """A --backend-directory whose python/ holds the backend library, its utils and the stub for this Python.

    A Triton install (``<prefix>/bin/tritonserver`` next to ``<prefix>/backends/python/``) is used as it is;
    nvidia-pytriton's wheel keeps the stubs apart, so we link the pieces together in ``workdir``.
    """
    own = tritonserver.parent.parent / "backends"
    if (own / "python" / "libtriton_python.so").exists() and (own / "python" / "triton_python_backend_stub").exists():
        return own
    root = tritonserver.parent.parent
    library = root / "backends" / "python" / "libtriton_python.so"
    utils = root / "backends" / "python" / "triton_python_backend_utils.py"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    missing = [str(p) for p in (library, utils, stub) if not p.exists()]
    if missing:
        raise ClusterError(f"cannot assemble the Python backend for {tritonserver}: missing {', '.join(missing)} "
                           f"(the stub must match this Python, {version})")
    backends = workdir / "backends"
    for target in (library, utils, stub):
        link = backends / "python" / target.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(target)
    return backends


def server_environment() -> dict:
    """Environment for tritonserver and its Python stubs.

    The stub embeds libpython: it must load *this* interpreter's library (LIBDIR first on LD_LIBRARY_PATH,
    else a distro libpython of another patch level meets our stdlib), and it finds its prefix by looking
    for ``python3`` on PATH, so our environment's bin/ goes first. One thread per numerical library:
    many servers share few cores. glibc's malloc puts every block over 64 KiB in its own mapping
    (``MALLOC_MMAP_THRESHOLD_``, unless the caller sets it), so that the buffers of a large request go back to
    the system when it is done: with the default (a threshold that grows up to 32 MiB) a refused 200 MiB request
    left tritonserver ~80 MiB larger for good (bench/master_memory.py, docs/hardening.md).
    """
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    env.pop("PYTHONHOME", None)
    return env


# --------------------------------------------------------------------------------------------------------
# ports


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = HOST) -> List[int]:
    """``count`` distinct ports the kernel reports free now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------------------------------------
# one server


_LIBC = None


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the thread that forked it dies (Linux)."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class TritonServer:
    """One tritonserver process: its role, ports, repository, log and shared-memory prefix."""

    role: str  # "master", "master-<i>" (further masters) or "worker-<i>"
    repository: Path
    grpc_port: int
    http_port: int | None
    shm_prefix: str
    log_path: Path
    host: str = HOST  # bind address
    metrics_port: int | None = None
    env: dict = field(default_factory=dict)  # per-server additions (NERCC_WORKER_INDEX...)
    load_models: List[str] = field(default_factory=list)  # explicit model control: only these (shared repository)
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_at: float | None = None
    killed: bool = False
    port_retries: int = 0
    extra_args: List[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{connect_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str | None:
        return None if self.http_port is None else f"{connect_host(self.host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str | None:
        """Triton's Prometheus endpoint (``http://host:port/metrics``) when metrics are on."""
        return None if self.metrics_port is None else f"http://{connect_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        """The log's error lines and last lines, without Triton's status tables and the no-GPU noise."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        kept = [line[:600] for line in text[1:]  # line 0 is our command line
                if line.strip() and not line.startswith(("+", "|")) and not line.endswith("] ")
                and not any(noise in line for noise in _LOG_NOISE)]
        errors = [line for line in kept if line.startswith("E") or "error" in line.lower()]
        tail = kept[-lines:]
        head = [line for line in errors[-5:] if line not in tail]
        return "\n".join(head + (["..."] if head else []) + tail)

    def shm_regions(self) -> List[str]:
        return glob.glob(str(SHM_DIR / (self.shm_prefix + "*")))


def _is_master(role: str) -> bool:
    return role == "master" or role.startswith("master-")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------------------------------------
# the cluster

_LIVE: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for cluster in list(_LIVE):
        try:
            cluster.stop()
        except Exception:  # interpreter is going down: best effort
            pass


atexit.register(_stop_all_at_exit)


def _check_counts(**counts) -> None:
    """Each count is an int (not a bool) with its minimum: ort_threads and first_worker_index >= 0, others >= 1."""
    for name, value in counts.items():
        minimum = 0 if name in ("ort_threads", "first_worker_index") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _parse_faults(faults: dict | None, first_worker_index: int, n_workers: int) -> dict:
    """{worker index: fault spec} validated, every index one of this cluster's workers."""
    from nercc.serving.faults import parse_fault

    parsed = {int(i): str(parse_fault(f)) for i, f in (faults or {}).items()}
    bad = [i for i in parsed if not 0 <= i - first_worker_index < n_workers]
    if bad:
        raise ValueError(f"faults name workers {bad}, outside this cluster's workers")
    return parsed


def _check_fixed_ports(fixed: dict, n_servers: int, base_port) -> None:
    """Fixed ports name the ports of one server; they exclude base_port and must be valid port numbers."""
    if all(v is None for v in fixed.values()):
        return
    if n_servers != 1:
        raise ValueError("grpc_port/http_port/metrics_port fix the ports of a single server "
                         "(one worker, or the master alone); use base_port for a cluster")
    if base_port is not None:
        raise ValueError("give either base_port or grpc_port/http_port/metrics_port, not both")
    for name, value in fixed.items():
        if value is not None and not 1 <= int(value) <= 65535:
            raise ValueError(f"{name} must be in 1..65535, got {value}")


def _execution_env_here(execution_env: str | None, repository: Path | None) -> str | None:
    """The EXECUTION_ENV_PATH for runtime repositories, checked: this host runs them, so an absolute path must
    exist here; a written repository (``repository``) carries its own."""
    env = repo.check_execution_env(execution_env)
    if env is None:
        return None
    if repository is not None:
        raise ValueError("execution_env applies to the repositories the launcher writes; a written repository "
                         "carries its own (nercc serve --write-repository DIR --execution-env PATH)")
    if not env.startswith(repo.MODEL_DIRECTORY_VARIABLE) and not Path(env).exists():
        raise ValueError(f"execution environment {env} does not exist on this host")
    return env


class LocalCluster:
    """Start a master and ``n_workers`` worker tritonservers for ``model`` on loopback (a context manager).

    Parameters
    ----------
    model : name of a model in ``model_repository`` (``model_repository/<model>/nercc.json`` + ``1/model.onnx``)
    n_workers : number of worker servers (>= 1)
    straggler : straggler profile string for every worker (``nercc.serving.stragglers``), default ``"none"``
    seed : seeds the workers' delay streams (worker i draws from stream (seed, i))
    base_port : None picks free ports; else master gRPC = base_port, worker i = base_port + 1 + i
        (HTTP, when enabled, follows at base_port + 1 + n_workers + ...); a busy port raises PortInUseError
    tritonserver : path of a tritonserver binary (default: $NERCC_TRITONSERVER, nvidia-pytriton's, PATH)
    model_repository : where the exported models live (default ``nercc.paths.MODEL_REPOSITORY``)
    master : also start the master (encoder, preprocess, encode); False for workers only
    faults : {worker index: fault string} wrong answers on purpose for chaos tests (``nercc.serving.faults``:
        nan, inf, large, wrong, shape); off by default
    n_masters : how many masters (identical encoders, ``.master_urls``): clients fail over between them
    start_workers : also start the workers; False for a master alone (``n_workers`` then only sizes its
        shared memory for N coded inputs)
    http : also open HTTP endpoints (``.master_http_url``, ``.worker_http_urls``), off by default
    ort_threads : onnxruntime intra-op threads per worker (1: workers share the cores)
    max_request_bytes : the encoder's per-request byte limit (input and coded output)
    master_instances : model instances of the master's preprocess and encoder (concurrent encodes)
    coded_instances : model instances of the coded endpoint ``<model>_coded`` (batches it serves at once);
        the endpoint's workers are this cluster's (``worker_urls`` to name others: a master alone)
    start_timeout_s / stop_timeout_s : readiness wait; grace between SIGTERM and SIGKILL
    host : bind address of every server (default 127.0.0.1; binding elsewhere is an explicit choice)
    first_worker_index : index of the first worker started here (a worker host runs ``nercc worker --index i``)
    grpc_port / http_port / metrics_port : fixed ports of a single-server launch (``nercc worker/master``)
    metrics : open Triton's Prometheus endpoint (``.metrics_urls``), off by default here
    tls : :class:`TLSFiles` for gRPC over TLS (mutual when it has a CA)
    repository : serve this written repository (``write_repository(..., copy=True)``) instead of writing
        runtime ones; each server loads only its own models, per-worker settings come from the environment
    device : the worker's onnxruntime device: auto (CUDA when available), cpu or cuda
    execution_env : EXECUTION_ENV_PATH of the Python-backend models this cluster writes (a conda-pack archive
        with nercc installed; ``repository.check_execution_env``); None: the launcher's own interpreter
    workdir : where runtime repositories and logs go (default: a fresh temp dir, removed on stop
        unless ``keep_logs``)
    restrict : put shared-memory, model-repository, trace and logging behind ``admin_key`` (default on)
    admin_key : the key for the header ``nercc-admin-key`` (default: a fresh random one, ``.admin_key``);
        clients never need it for inference, health or metadata
    """

    def __init__(
        self,
        model: str,
        n_workers: int,
        straggler: str = "none",
        seed: int = 0,
        base_port: int | None = None,
        tritonserver: PathLike | None = None,
        *,
        model_repository: PathLike | None = None,
        master: bool = True,
        http: bool = False,
        ort_threads: int = 1,
        worker_max_batch: int = repo.DEFAULT_WORKER_MAX_BATCH,
        max_request_bytes: int = repo.DEFAULT_MAX_REQUEST_BYTES,
        master_instances: int = 1,
        coded_instances: int = repo.DEFAULT_CODED_INSTANCES,
        worker_urls: Sequence[str] | None = None,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 15.0,
        workdir: PathLike | None = None,
        keep_logs: bool = False,
        log_verbose: int = 0,
        host: str = HOST,
        first_worker_index: int = 0,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        metrics: bool = False,
        tls: TLSFiles | None = None,
        repository: PathLike | None = None,
        device: str = "cpu",
        start_workers: bool = True,
        n_masters: int = 1,
        faults: dict | None = None,
        restrict: bool = True,
        admin_key: str | None = None,
        execution_env: str | None = None,
    ):
        _check_counts(n_workers=n_workers, n_masters=n_masters, master_instances=master_instances,
                      ort_threads=ort_threads, first_worker_index=first_worker_index, coded_instances=coded_instances)
        if base_port is not None and not (1024 <= int(base_port) <= 65535 - (n_workers + 1) * (2 if http else 1)):
            raise ValueError(f"base_port must leave room for {n_workers + 1} servers below 65536, got {base_port}")
        self.model, self.n_workers = model, n_workers
        self.straggler = str(parse_straggler(straggler))  # validates before anything starts
        self.seed, self.base_port = int(seed), None if base_port is None else int(base_port)
        self._tritonserver_arg = tritonserver
        self.model_repository = Path(model_repository) if model_repository is not None else None
        self.with_master, self.n_masters = master, n_masters if master else 0
        self.faults = _parse_faults(faults, first_worker_index, n_workers)
        self.ort_threads, self.worker_max_batch = ort_threads, worker_max_batch
        self.max_request_bytes = int(max_request_bytes)
        self.master_instances, self.coded_instances = master_instances, coded_instances
        self._endpoint_workers = None if worker_urls is None else list(worker_urls)
        self.start_timeout_s, self.stop_timeout_s = float(start_timeout_s), float(stop_timeout_s)
        self._workdir_arg, self.keep_logs, self.log_verbose = workdir, keep_logs, int(log_verbose)
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        fixed = {"grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port}
        _check_fixed_ports(fixed, (n_workers if start_workers else 0) + (n_masters if master else 0), base_port)
        self.fixed_ports = fixed
        if not master and not start_workers:
            raise ValueError("nothing to start: master=False and start_workers=False")
        self.start_workers = bool(start_workers)
        self.host = str(host)
        self.first_worker_index = int(first_worker_index)
        self.metrics = bool(metrics) or metrics_port is not None
        self.http = bool(http) or http_port is not None
        self.tls, self.device, self.execution_env = tls, device, _execution_env_here(execution_env, repository)
        self.repository = None if repository is None else Path(repository).resolve()
        self.meta = self._model_meta(model)  # fails fast on a missing model
        self.token = f"nercc{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.restrict = bool(restrict)
        self.admin_key = (admin_key or secrets.token_hex(16)) if self.restrict else None
        if self.restrict:
            restricted_protocol_args(self.admin_key, http=True)  # validates the key before anything starts
        self.servers: List[TritonServer] = []
        self.workdir: Path | None = None
        self._owns_workdir, self._started, self.startup_s = False, False, None
        self._lock = threading.RLock()

    def _model_meta(self, model: str):
        """The model's metadata, from the given repository or the model repository, checked servable."""
        if self.repository is not None:
            meta = repo.repository_model_meta(self.repository, model)
            if self.start_workers and not (self.repository / meta.name / "config.pbtxt").exists():
                raise FileNotFoundError(f"{self.repository} has no worker model {meta.name}/config.pbtxt")
            return meta
        meta = repo.read_model_meta(model, self.model_repository)
        if not meta.onnx_path.exists():
            raise FileNotFoundError(f"no ONNX model at {meta.onnx_path}: export it first (`nercc export {model}`)")
        return meta

    # -- public view ---------------------------------------------------------------------------------
    @property
    def master(self) -> TritonServer | None:
        return self.servers[0] if self.servers and self.servers[0].role == "master" else None

    @property
    def masters(self) -> List[TritonServer]:
        return [s for s in self.servers if _is_master(s.role)]

    @property
    def master_urls(self) -> List[str]:
        """gRPC ``host:port`` of every master, in failover order (a killed master keeps its URL)."""
        return [s.url for s in self.masters]

    @property
    def _n_worker_servers(self) -> int:
        return self.n_workers if self.start_workers else 0

    @property
    def workers(self) -> List[TritonServer]:
        return [s for s in self.servers if s.role.startswith("worker")]

    @property
    def master_url(self) -> str | None:
        """gRPC ``host:port`` of the master (None when started with master=False)."""
        return None if self.master is None else self.master.url

    @property
    def worker_urls(self) -> List[str]:
        """gRPC ``host:port`` of every worker, in worker order (a killed worker keeps its URL)."""
        return [s.url for s in self.workers]

    @property
    def master_http_url(self) -> str | None:
        return None if self.master is None else self.master.http_url

    @property
    def worker_http_urls(self) -> List[str]:
        return [s.http_url for s in self.workers if s.http_port is not None]

    @property
    def metrics_urls(self) -> List[str]:
        """Prometheus endpoints of every server (master first), when started with metrics=True."""
        return [s.metrics_url for s in self.servers if s.metrics_port is not None]

    def description(self) -> dict:
        """The cluster description clients read (``urls.json``; :func:`nercc.serving.urls.read_urls`)."""
        from nercc.serving.urls import describe

        return describe(self.model, self.master_urls, self.worker_urls,
                        straggler=self.straggler, seed=self.seed, tls=self.tls is not None)

    @property
    def shm_prefix(self) -> str:
        """Every shared-memory region of this cluster starts with this."""
        return self.token + "_"

    def pids(self) -> List[int]:
        return [s.pid for s in self.servers if s.pid is not None]

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"LocalCluster({self.model!r}, n_workers={self.n_workers}, straggler={self.straggler!r}, {state})"

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()

    # -- start -----------------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """Write the repositories, start every server at once and wait until all are ready."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            _LIVE.add(self)
            try:
                self._start()
            except BaseException as exc:  # includes KeyboardInterrupt while waiting: leave no process behind
                if isinstance(exc, ServerStartError):
                    self.keep_logs = True  # the error message points at the log
                self.stop()
                raise
            return self

    def _start(self) -> None:
        t0 = time.perf_counter()
        self.servers = []  # a stopped cluster can be started again, on fresh ports
        binary = find_tritonserver(self._tritonserver_arg)
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.token}_"))
            self._owns_workdir = True
        else:
            self.workdir = Path(self._workdir_arg)
            self.workdir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backend_directory(binary, self.workdir)
        self._plan_servers()
        env = server_environment()
        self._launch_args = (binary, backends, env)
        for server in self.servers:
            self._launch(binary, backends, server, env)
        self._wait_ready()
        self.startup_s = time.perf_counter() - t0

    def _ports(self) -> List[int]:
        n_servers = self._n_worker_servers + self.n_masters
        n_ports = n_servers * (1 + int(self.http) + int(self.metrics))
        if any(v is not None for v in self.fixed_ports.values()):
            wanted = [self.fixed_ports["grpc_port"]]
            wanted += [self.fixed_ports["http_port"]] if self.http else []
            wanted += [self.fixed_ports["metrics_port"]] if self.metrics else []
            missing = [i for i, p in enumerate(wanted) if p is None]
            spare = iter(free_ports(len(missing), self.host if self.host not in _WILDCARDS else HOST))
            ports = [next(spare) if p is None else int(p) for p in wanted]
            if len(set(ports)) != len(ports):
                raise ValueError(f"gRPC, HTTP and metrics ports must differ, got {ports}")
        elif self.base_port is None:
            return free_ports(n_ports, self.host if self.host not in _WILDCARDS else HOST)
        else:
            ports = list(range(self.base_port, self.base_port + n_ports))
        busy = [p for p in ports if not port_is_free(p, self.host)]
        if busy:
            where = f"base_port={self.base_port} needs {ports[0]}-{ports[-1]}" if self.base_port else "fixed ports"
            raise PortInUseError(f"port(s) {', '.join(map(str, busy))} on {self.host} already in use "
                                 f"({where}); pick other ports or leave them None for free ports")
        return ports

    def _plan_servers(self) -> None:
        ports = self._ports()
        n_servers = self._n_worker_servers + self.n_masters
        grpc_ports, rest = ports[:n_servers], ports[n_servers:]
        http_ports = rest[:n_servers] if self.http else [None] * n_servers
        rest = rest[n_servers:] if self.http else rest
        metrics_ports = rest[:n_servers] if self.metrics else [None] * n_servers
        first = self.first_worker_index
        n_masters = self.n_masters
        # the coded endpoint's workers: the ones started here (gRPC, plaintext), unless given
        endpoint_workers = self._endpoint_workers
        if endpoint_workers is None and self.tls is None:
            endpoint_workers = [f"{connect_host(self.host)}:{port}" for port in grpc_ports[n_masters:]]
        roles = ["master"] * min(1, self.n_masters) + [f"master-{i}" for i in range(1, self.n_masters)]
        roles += [f"worker-{first + i}" for i in range(self._n_worker_servers)]
        name = self.meta.name
        for index, role in enumerate(roles):
            folder = self.workdir / role
            env, load = {}, []
            if self.repository is not None:
                repository = self.repository
                load = [m for m in repo.master_model_names(name) if (repository / m / "config.pbtxt").exists()
                        ] if _is_master(role) else [name]
            else:
                repository = folder / "models"
            if _is_master(role) and endpoint_workers:
                env = {WORKER_URLS_ENV: ",".join(endpoint_workers)}
            if _is_master(role) and self.repository is None:
                repo.write_master_models(repository, self.meta, absolute_paths=True,
                                         max_request_bytes=self.max_request_bytes,
                                         master_instances=self.master_instances, execution_env=self.execution_env,
                                         coded_instances=self.coded_instances,
                                         worker_urls=endpoint_workers or ())
            elif not _is_master(role):
                worker_index = int(role.split("-")[1])
                if self.repository is None:
                    repo.write_worker_model(repository, self.meta, absolute_paths=True, straggler=self.straggler,
                                            seed=self.seed, worker_index=worker_index,
                                            intra_op_threads=self.ort_threads, max_batch_size=self.worker_max_batch,
                                            execution_env=self.execution_env)
                # the environment carries the per-worker settings (the only way for a shared repository)
                env = {WORKER_ENV["worker_index"]: str(worker_index), WORKER_ENV["straggler"]: self.straggler,
                       WORKER_ENV["seed"]: str(self.seed), WORKER_ENV["device"]: self.device,
                       WORKER_ENV["fault"]: self.faults.get(worker_index, "none")}
            self.servers.append(TritonServer(
                role=role, repository=repository, grpc_port=grpc_ports[index], http_port=http_ports[index],
                shm_prefix=f"{self.token}_{role.replace('-', '')}_", log_path=folder / "tritonserver.log",
                host=self.host, metrics_port=metrics_ports[index], env=env, load_models=load,
            ))

    def _shm_sizes(self, server: TritonServer) -> tuple:
        """(default, growth) bytes of the Python-backend shm region: room for the largest tensor of one request."""
        if _is_master(server.role):
            # the largest tensor of one request: N coded inputs, or K <= N raw images (nominal size)
            largest = self.n_workers * max(self.meta.input_bytes, self.meta.raw_bytes)
        else:
            largest = self.meta.input_bytes + 4 * self.meta.n_classes
        size = max(_MiB, -(-2 * largest // _MiB) * _MiB)
        return size, size

    def _launch(self, binary: Path, backends: Path, server: TritonServer, env: dict) -> None:
        default_shm, growth_shm = self._shm_sizes(server)
        cmd = [
            str(binary),
            f"--model-repository={server.repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={server.host}", f"--grpc-port={server.grpc_port}",
            "--pinned-memory-pool-byte-size=0",
            # no pooled request/response objects: a pooled request keeps its largest input's buffer (protobuf's
            # Clear() keeps capacity), so one 200 MiB request left tritonserver 200 MiB larger for good
            "--grpc-infer-allocation-pool-size=0",
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={default_shm}",
            f"--backend-config=python,shm-growth-byte-size={growth_shm}",
        ]
        caches = binary.parent.parent / "caches"
        if caches.is_dir():
            cmd.append(f"--cache-directory={caches}")
        if server.http_port is not None:
            cmd += ["--allow-http=true", f"--http-address={server.host}", f"--http-port={server.http_port}"]
        else:
            cmd.append("--allow-http=false")
        if server.metrics_port is not None:
            # GPU metrics only where a GPU driver is there to report them (else DCGM noise at start)
            gpu = "true" if self.device != "cpu" and Path("/dev/nvidiactl").exists() else "false"
            cmd += ["--allow-metrics=true", f"--allow-gpu-metrics={gpu}", f"--metrics-address={server.host}",
                    f"--metrics-port={server.metrics_port}"]
        else:
            cmd += ["--allow-metrics=false", "--allow-gpu-metrics=false"]
        if self.tls is not None:
            cmd += self.tls.server_args()
        if self.restrict:
            cmd += restricted_protocol_args(self.admin_key, http=server.http_port is not None)
        if server.load_models:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in server.load_models]
        cmd += server.extra_args
        server.log_path.parent.mkdir(parents=True, exist_ok=True)
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(server.log_path, "wb") as log:
            shown = " ".join(cmd) if not self.admin_key else " ".join(cmd).replace(self.admin_key, "<admin-key>")
            log.write((shown + "\n").encode())
            log.flush()
            try:
                server.process = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**env, **server.env},
                    start_new_session=True,  # own process group: Ctrl-C in a terminal reaches us, not them
                    preexec_fn=_die_with_parent if in_main_thread else None,
                )
            except OSError as exc:
                raise ServerStartError(f"{server.role}: cannot execute {binary}: {exc}") from exc
        server.started_at = time.perf_counter()

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        deadline = time.perf_counter() + self.start_timeout_s
        pending = list(self.servers)
        clients = {}
        try:
            while pending:
                for server in list(pending):
                    code = server.process.poll()
                    if code is not None and self._retry_on_port_race(server):
                        clients.pop(server.role, None)
                        continue
                    if code is not None:
                        raise ServerStartError(self._failure(server, f"exited with code {code} while starting"))
                    client = clients.get(server.role)
                    if client is None:
                        tls = {} if self.tls is None else self.tls.probe_client_kwargs()
                        client = clients[server.role] = grpcclient.InferenceServerClient(server.url, **tls)
                    try:
                        ready = client.is_server_ready(client_timeout=1.0)
                    except InferenceServerException:
                        ready = False
                    if ready:
                        server.ready_at = time.perf_counter()
                        pending.remove(server)
                if pending and time.perf_counter() > deadline:
                    names = ", ".join(s.role for s in pending)
                    raise ServerStartError(self._failure(pending[0], f"not ready after {self.start_timeout_s:.0f} s "
                                                                     f"(still waiting: {names})"))
                if pending:
                    time.sleep(0.05)
        finally:
            for client in clients.values():
                try:
                    client.close()
                except Exception:
                    pass

    def _retry_on_port_race(self, server: TritonServer) -> bool:
        """Relaunch on fresh ports when a port we picked was taken before the server bound it (free ports only)."""
        if self.base_port is not None or server.port_retries >= _PORT_RETRIES \
                or any(v is not None for v in self.fixed_ports.values()):
            return False
        if not any(m in server.log_tail(40).lower() for m in ("already in use", "address in use")):
            return False
        server.port_retries += 1
        _signal_group(server.process.pid, signal.SIGKILL)  # its stub may still be up
        _wait_gone([server.process.pid], timeout_s=5.0)
        self._remove_shm(server)
        host = connect_host(server.host)
        server.grpc_port = free_ports(1, host)[0]
        if server.http_port is not None:
            server.http_port = free_ports(1, host)[0]
        if server.metrics_port is not None:
            server.metrics_port = free_ports(1, host)[0]
        self._launch(*self._launch_args[:2], server, self._launch_args[2])
        return True

    def _failure(self, server: TritonServer, what: str) -> str:
        tail = server.log_tail()
        hint = ""
        if "already in use" in tail.lower() or "address in use" in tail.lower():
            hint = f"\nport {server.grpc_port} is in use by another process: choose another base_port"
        return f"tritonserver {server.role} ({server.url}) {what}; log {server.log_path}:\n{tail}{hint}"

    # -- running -----------------------------------------------------------------------------------------
    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` (and its stub): the dead-worker scenario. Its URL stays in worker_urls."""
        workers = self.workers
        if not 0 <= index < len(workers):
            raise IndexError(f"worker index must be in 0..{len(workers) - 1}, got {index}")
        self._kill(workers[index])

    def kill_master(self, index: int) -> None:
        """SIGKILL master ``index`` (and its stubs): the dead-master scenario. Its URL stays in master_urls."""
        masters = self.masters
        if not 0 <= index < len(masters):
            raise IndexError(f"master index must be in 0..{len(masters) - 1}, got {index}")
        self._kill(masters[index])

    def pause_worker(self, index: int, paused: bool = True) -> None:
        """SIGSTOP (``paused``) or SIGCONT worker ``index`` and its stub: a frozen machine, not a dead one."""
        server = self.workers[index]
        if server.process is not None and not server.killed:
            _signal_group(server.process.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def _kill(self, server: TritonServer) -> None:
        if server.process is not None:
            _signal_group(server.process.pid, signal.SIGKILL)
            server.process.wait()
            _wait_gone([server.process.pid], timeout_s=5.0)
        server.killed = True
        self._remove_shm(server)

    def check(self) -> List[str]:
        """Roles of servers that died without being killed on purpose (empty when all is well)."""
        return [s.role for s in self.servers if not s.killed and not s.alive()]

    # -- stop ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after stop_timeout_s), remove shm regions and temp files."""
        with self._lock, _sigint_deferred():
            if not self._started:
                return
            running = [s for s in self.servers if s.process is not None and s.process.poll() is None]
            for server in running:
                _signal_group(server.process.pid, signal.SIGTERM)
                _signal_group(server.process.pid, signal.SIGCONT)  # a paused server must run to exit
            deadline = time.monotonic() + self.stop_timeout_s
            for server in running:
                try:
                    server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for server in self.servers:
                if server.process is None:
                    continue
                # the group may still hold a Python stub even when tritonserver itself exited
                _signal_group(server.process.pid, signal.SIGKILL)
                try:
                    server.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            # SIGKILL is asynchronous: return only once no member of our groups is left
            _wait_gone([s.process.pid for s in self.servers if s.process is not None], timeout_s=5.0)
            for server in self.servers:
                self._remove_shm(server)
            for path in glob.glob(str(SHM_DIR / (self.shm_prefix + "*"))):
                _unlink(path)
            if self._owns_workdir and self.workdir is not None and not self.keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self._started = False
            _LIVE.discard(self)

    @staticmethod
    def _remove_shm(server: TritonServer) -> None:
        for path in server.shm_regions():
            _unlink(path)


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C while stopping (a few seconds), so a second Ctrl-C cannot interrupt the cleanup half-way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)  # deliver it now that everything is stopped


def _wait_gone(pgids: Sequence[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while running_processes(pgids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def leftover_shm(prefix: str = "nercc") -> List[str]:
    """Shared-memory regions whose names start with ``prefix`` (for checks and cleanup scripts)."""
    return sorted(glob.glob(str(SHM_DIR / (prefix + "*"))))


def running_processes(pids: Sequence[int]) -> List[int]:
    """The pids of ``pids`` (and of their process groups) that still exist (zombies excluded)."""
    alive = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # fields after the ")" of the command: state, ppid, pgrp
        rest = stat.rsplit(")", 1)[1].split()
        state, pgrp = rest[0], int(rest[2])
        if state != "Z" and (int(proc.name) in pids or pgrp in pids):
            alive.append(int(proc.name))
    return sorted(alive)
