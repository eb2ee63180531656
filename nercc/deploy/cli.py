"""Write deployment artefacts: `nercc deploy k8s --model M --workers N --out DIR` (manifests + Containerfile).

Nothing is applied: review the files, build the image (``podman build -f DIR/Containerfile -t IMAGE .``), push
it, then ``kubectl apply -f DIR``. docs/deploy.md walks through it and says what was validated where.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    k8s = sub.add_parser("k8s", help="Kubernetes: StatefulSet of workers, Deployment of masters, Services, "
                                     "ConfigMap, optional TLS Secret, Containerfile",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    k8s.add_argument("--model", default="lenet5", help="exported model (model_repository/<model>)")
    k8s.add_argument("--workers", type=int, required=True, help="N: worker pods (StatefulSet replicas)")
    k8s.add_argument("--gpus-per-worker", type=int, default=0,
                     help="nvidia.com/gpu per worker pod; > 0 serves the ONNX on Triton's onnxruntime backend, KIND_GPU")
    k8s.add_argument("--masters", type=int, default=2, help="master pods (Deployment replicas)")
    k8s.add_argument("--out", type=Path, required=True, help="folder for the manifests and the Containerfile")
    k8s.add_argument("--image", default=None, help="image the pods run (default: nercc:latest)")
    k8s.add_argument("--base-image", default=None, help="NGC tritonserver image the Containerfile builds FROM")
    k8s.add_argument("--namespace", default=None, help="Kubernetes namespace of every object")
    k8s.add_argument("--straggler", default="none", help="straggler injection in every worker (benchmarks only)")
    k8s.add_argument("--cpu", default="1", help="CPU request per pod")
    k8s.add_argument("--memory", default="1Gi", help="memory request and limit per pod")
    tls = k8s.add_argument_group("TLS (gRPC)")
    tls.add_argument("--tls-secret", default=None,
                     help="name of a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt for mutual TLS); written "
                          "from --tls-cert/--tls-key/--tls-ca when those are given, else it must exist")
    tls.add_argument("--tls-cert", type=Path, default=None, help="server certificate (PEM) for the Secret")
    tls.add_argument("--tls-key", type=Path, default=None, help="server key (PEM) for the Secret")
    tls.add_argument("--tls-ca", type=Path, default=None, help="CA (PEM): clients must present certificates it signed")
    tls.add_argument("--tls-mutual", action="store_true", help="with --tls-secret alone: the Secret has ca.crt")


def main(args) -> int:
    from nercc.deploy import k8s
    from nercc.serving.repository import read_model_meta
    from nercc.serving.stragglers import parse_straggler

    try:
        meta = read_model_meta(args.model)
        parse_straggler(args.straggler)
        tls_files = None
        secret = args.tls_secret
        if args.tls_cert or args.tls_key or args.tls_ca:
            if not (args.tls_cert and args.tls_key):
                raise ValueError("a TLS Secret needs both --tls-cert and --tls-key")
            tls_files = {"cert": args.tls_cert.read_bytes(), "key": args.tls_key.read_bytes(),
                         "ca": args.tls_ca.read_bytes() if args.tls_ca else None}
            secret = secret or "nercc-tls"
        opts = k8s.DeployOptions(
            model=meta.name, workers=args.workers, gpus_per_worker=args.gpus_per_worker, masters=args.masters,
            image=args.image or k8s.DEFAULT_IMAGE, base_image=args.base_image or k8s.DEFAULT_BASE_IMAGE,
            namespace=args.namespace, tls_secret=secret,
            tls_mutual=bool(args.tls_ca) or args.tls_mutual, straggler=args.straggler, cpu=args.cpu,
            memory=args.memory)
        tuning_path = meta.dir / "tuning.json"
        tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else {}
        written = k8s.write(args.out, opts, tuning, tls_files)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"nercc deploy: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"wrote {len(written)} files to {args.out}: build the image from the checkout root with "
          f"`podman build -f {args.out}/Containerfile -t {opts.image} .`, push it, then `kubectl apply -f {args.out}`")
    return 0
