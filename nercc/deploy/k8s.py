"""Kubernetes manifests for a nercc cluster, and the container image they run (``nercc deploy k8s``).

What it writes into ``--out``:

``workers.yaml``
    a StatefulSet ``nercc-worker`` of N Triton workers behind the headless Service ``nercc-workers``: worker i
    is the pod ``nercc-worker-<i>`` with the stable DNS name ``nercc-worker-<i>.nercc-workers``; it learns its
    index from the pod-index label (Kubernetes 1.28+) and runs ``nercc worker --index i`` on the portable
    repository baked into the image. ``nvidia.com/gpu`` limits and the native onnxruntime backend on KIND_GPU
    instances when ``--gpus-per-worker`` > 0.
``masters.yaml``
    a Deployment ``nercc-master`` of 2 masters (encoder) behind the Service ``nercc-master``.
``config.yaml``
    the ConfigMap ``nercc-config``: the model's tuning profile (mounted over the one in the image, so a
    re-tune needs no rebuild) and the cluster description ``urls.json`` for clients inside the cluster.
``tls-secret.yaml`` (with ``--tls-cert/--tls-key``)
    a ``kubernetes.io/tls`` Secret; or ``--tls-secret NAME`` refers to one that exists.
``Containerfile``
    ``FROM`` the NGC tritonserver image, nercc installed in a virtual environment, the portable repository
    written at build time (``nercc serve --write-repository /models --copy``).

Every server has readiness and liveness probes on Triton's ``/v2/health/ready`` and ``/v2/health/live`` (HTTP
8000) and Prometheus scrape annotations for its metrics port 8002. gRPC (8001) carries the data.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from nercc.deploy.yaml import Block, dump_all

GRPC_PORT, HTTP_PORT, METRICS_PORT = 8001, 8000, 8002
#: NGC image with Triton 2.53: the first with the fix for cancellations that race a response (24.12).
DEFAULT_BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.12-py3"
DEFAULT_IMAGE = "nercc:latest"
REPOSITORY = "/models"  # portable repository with Python-backend workers (CPU, straggler injection)
GPU_REPOSITORY = "/models-gpu"  # the same model with native onnxruntime workers on KIND_GPU instances
TLS_DIR = "/etc/nercc/tls"
LABEL = "app.kubernetes.io/name"


@dataclass
class DeployOptions:
    model: str
    workers: int
    gpus_per_worker: int = 0
    masters: int = 2
    image: str = DEFAULT_IMAGE
    base_image: str = DEFAULT_BASE_IMAGE
    namespace: str | None = None
    tls_secret: str | None = None  # name of a kubernetes.io/tls Secret (tls.crt, tls.key, optional ca.crt)
    tls_mutual: bool = False  # the Secret has ca.crt and clients must present certificates
    straggler: str = "none"
    cpu: str = "1"
    memory: str = "1Gi"

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.masters < 1:
            raise ValueError(f"--masters must be >= 1, got {self.masters}")
        if self.gpus_per_worker and self.straggler != "none":
            raise ValueError("straggler injection runs in the Python-backend (CPU) worker; GPU workers use "
                             "Triton's native onnxruntime backend: drop --straggler or --gpus-per-worker")


def _meta(name: str, opts: DeployOptions, labels: Dict[str, str] | None = None) -> dict:
    meta = {"name": name, "labels": {LABEL: "nercc", "app.kubernetes.io/component": name,
                                      "nercc.io/model": opts.model, **(labels or {})}}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    return meta


def _ports() -> List[dict]:
    return [{"name": "grpc", "containerPort": GRPC_PORT}, {"name": "http", "containerPort": HTTP_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT}]


def _probes() -> dict:
    # Triton opens its ports only once every model loaded; large models on GPUs take a while
    return {
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                         "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                           "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3},
    }


def _scrape_annotations() -> dict:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics"}


def _tls_args(opts: DeployOptions) -> List[str]:
    if not opts.tls_secret:
        return []
    args = ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
    if opts.tls_mutual:
        args += ["--tls-ca", f"{TLS_DIR}/ca.crt"]
    return args


def server_args(role: str, opts: DeployOptions) -> List[str]:
    """The ``nercc worker|master`` command line of a pod (the test parses it with nercc's own parser)."""
    common = ["--model", opts.model, "--host", "0.0.0.0", "--port", str(GRPC_PORT), "--http-port", str(HTTP_PORT),
              "--metrics-port", str(METRICS_PORT), *_tls_args(opts)]
    if role == "master":
        return ["nercc", "master", *common, "--repository", REPOSITORY, "--workers", str(opts.workers)]
    gpu = opts.gpus_per_worker > 0
    args = ["nercc", "worker", *common, "--repository", GPU_REPOSITORY if gpu else REPOSITORY,
            "--index", "$(NERCC_POD_INDEX)", "--device", "cuda" if gpu else "cpu"]
    if opts.straggler != "none":
        args += ["--straggler", opts.straggler]
    return args


def _volumes(opts: DeployOptions, role: str):
    mounts = [{"name": "config", "mountPath": f"{REPOSITORY}/{opts.model}_encoder/tuning.json",
               "subPath": "tuning.json", "readOnly": True}] if role == "master" else []
    volumes = [{"name": "config", "configMap": {"name": "nercc-config"}}] if role == "master" else []
    if opts.tls_secret:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": opts.tls_secret}})
    return mounts, volumes


def _container(role: str, opts: DeployOptions) -> dict:
    mounts, _ = _volumes(opts, role)
    resources = {"requests": {"cpu": opts.cpu, "memory": opts.memory}, "limits": {"memory": opts.memory}}
    if role == "worker" and opts.gpus_per_worker > 0:
        resources["limits"]["nvidia.com/gpu"] = str(opts.gpus_per_worker)
    container = {"name": role, "image": opts.image, "imagePullPolicy": "IfNotPresent",
                 "args": server_args(role, opts), "ports": _ports(), **_probes(), "resources": resources}
    if role == "worker":
        # the pod's ordinal (nercc-worker-<i> -> i) is worker i: its place in urls.json and its straggler stream
        container["env"] = [{"name": "NERCC_POD_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}}]
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _pod_spec(role: str, opts: DeployOptions) -> dict:
    _, volumes = _volumes(opts, role)
    spec = {"containers": [_container(role, opts)], "terminationGracePeriodSeconds": 30,
            # Python-backend stubs exchange tensors through /dev/shm: the container default (64 MiB) is small
            "volumes": volumes + [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]}
    spec["containers"][0].setdefault("volumeMounts", []).append({"name": "dshm", "mountPath": "/dev/shm"})
    return spec


def manifests(opts: DeployOptions, tuning: dict | None = None, tls_files: dict | None = None) -> Dict[str, List[dict]]:
    """{file name: [Kubernetes objects]}; ``tls_files`` = PEM bytes {cert, key, ca?} for a Secret."""
    worker_labels = {LABEL: "nercc", "app.kubernetes.io/component": "nercc-worker"}
    master_labels = {LABEL: "nercc", "app.kubernetes.io/component": "nercc-master"}
    worker_urls = [f"nercc-worker-{i}.nercc-workers:{GRPC_PORT}" for i in range(opts.workers)]
    if opts.namespace:
        worker_urls = [u.replace(".nercc-workers:", f".nercc-workers.{opts.namespace}.svc:") for u in worker_urls]
    urls = {"model": opts.model, "master_urls": [f"nercc-master:{GRPC_PORT}"], "master_url": f"nercc-master:{GRPC_PORT}",
            "worker_urls": worker_urls, "tls": bool(opts.tls_secret)}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("nercc-config", opts),
              "data": {"tuning.json": Block(json.dumps(tuning or {}, indent=2) + "\n"),
                       "urls.json": Block(json.dumps(urls, indent=2) + "\n")}}
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": _meta("nercc-workers", opts),
                "spec": {"clusterIP": "None", "selector": worker_labels,
                         "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                                   for p in _ports()]}}
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta("nercc-worker", opts),
        "spec": {
            "serviceName": "nercc-workers", "replicas": opts.workers,
            "podManagementPolicy": "Parallel",  # workers are independent: start them all at once
            "selector": {"matchLabels": worker_labels},
            "template": {"metadata": {"labels": worker_labels, "annotations": _scrape_annotations()},
                         "spec": _pod_spec("worker", opts)},
        },
    }
    master_service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta("nercc-master", opts),
                      "spec": {"selector": master_labels,
                               "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                                         for p in _ports()]}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("nercc-master", opts),
        "spec": {"replicas": opts.masters, "selector": {"matchLabels": master_labels},
                 "template": {"metadata": {"labels": master_labels, "annotations": _scrape_annotations()},
                              "spec": _pod_spec("master", opts)}},
    }
    out = {"config.yaml": [config], "workers.yaml": [headless, statefulset],
           "masters.yaml": [master_service, deployment]}
    if tls_files is not None:
        data = {"tls.crt": tls_files["cert"], "tls.key": tls_files["key"]}
        if tls_files.get("ca") is not None:
            data["ca.crt"] = tls_files["ca"]
        out["tls-secret.yaml"] = [{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                                   "metadata": _meta(opts.tls_secret, opts),
                                   "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}]
    return out


def containerfile(opts: DeployOptions) -> str:
    """The image recipe: NGC Triton + nercc in a venv + the portable repositories, built from a checkout."""
    gpu_line = (f"RUN nercc serve --write-repository {GPU_REPOSITORY} --copy --native-onnxruntime --gpu "
                f"--role worker --model {opts.model}\n")
    return f"""# Generated by `nercc deploy k8s`: the image of every nercc pod (workers and masters).
# Build from the root of a nercc checkout in which the model is exported (model_repository/{opts.model}/1/model.onnx):
#   podman build -f Containerfile -t {opts.image} .      (or docker build)
FROM {opts.base_image}

# nercc and its serving dependencies in their own environment; Triton's Python-backend stub finds this
# interpreter first on PATH (nercc's launcher arranges it), so the encoder and workers import nercc from here.
RUN python3 -m venv /opt/nercc/venv
ENV PATH=/opt/nercc/venv/bin:$PATH \\
    NERCC_TRITONSERVER=/opt/tritonserver/bin/tritonserver
COPY pyproject.toml README.md /opt/nercc/src/
COPY nercc /opt/nercc/src/nercc
COPY python_backends /opt/nercc/src/python_backends
COPY model_repository/{opts.model} /opt/nercc/src/model_repository/{opts.model}
# editable: nercc finds python_backends/ and model_repository/ beside its source (nercc.paths.REPO_ROOT)
RUN pip install --no-cache-dir -e "/opt/nercc/src[metrics]" "tritonclient[grpc]>=2.50" "onnxruntime>=1.17" "pillow>=9"

# Portable repositories (real files, no links, no host paths); per-worker settings come from the command line.
WORKDIR /opt/nercc/src
RUN nercc serve --write-repository {REPOSITORY} --copy --model {opts.model}
{gpu_line}
EXPOSE {HTTP_PORT} {GRPC_PORT} {METRICS_PORT}
ENTRYPOINT []
CMD ["nercc", "worker", "--model", "{opts.model}", "--host", "0.0.0.0", "--repository", "{REPOSITORY}"]
"""


def write(out: Path, opts: DeployOptions, tuning: dict | None = None, tls_files: dict | None = None) -> List[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in manifests(opts, tuning, tls_files).items():
        path = out / name
        path.write_text(f"# Generated by `nercc deploy k8s --model {opts.model} --workers {opts.workers}`\n"
                        + dump_all(docs))
        written.append(path)
    path = out / "Containerfile"
    path.write_text(containerfile(opts))
    written.append(path)
    return written
