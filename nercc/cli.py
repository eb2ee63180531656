"""`nercc` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module, which provides ``configure(parser)`` (add arguments) and
``main(args) -> int``. Modules are imported only when their command runs, so ``nercc --help`` stays
fast and serving never imports torch. Commands implemented in the checkout's top-level folders
(export/, bench/, loadtest/) are imported with the checkout on sys.path.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from nercc.paths import REPO_ROOT

# name -> (module, one-line help)
COMMANDS = {
    "export": ("export.cli", "train or load a model and export it to ONNX in model_repository/"),
    "serve": ("nercc.serving.cli", "start a local Triton cluster (master + N workers) and keep it up"),
    "worker": ("nercc.serving.worker_cli", "start one worker tritonserver on this host (multi-host clusters)"),
    "master": ("nercc.serving.master_cli", "start one master tritonserver on this host (multi-host clusters)"),
    "deploy": ("nercc.deploy.cli", "write Kubernetes manifests and a Containerfile (StatefulSet of workers, masters)"),
    "demo": ("nercc.demo", "the main job: local cluster, LeNet5, stragglers, every scheme, latency/accuracy table"),
    "loadtest": ("loadtest.run", "Locust tail-latency benchmark of uncoded / replication / BACC / NeRCC"),
    "tune": ("bench.tune", "jointly tune (lam_enc, lam_dec) for a model and write its tuning profile"),
    "bench": ("bench.cli", "accuracy reproduction (MSE / RelAcc vs stragglers), coding cost, figures"),
    "simulate": ("nercc.simulate.cli", "calibrated discrete-event simulation of N workers (any N): latency and RelAcc"),
    "plan": ("nercc.simulate.plan", "cheapest (N, K, M, deadline) that meets a p99 SLO and a RelAcc floor"),
}


def _load(module_name: str):
    if not module_name.startswith("nercc.") and str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise SystemExit(f"nercc: {module_name} is not built yet (module not found)") from exc
        raise SystemExit(
            f"nercc: this command needs the Python package {missing!r}; install the extras with "
            f"`make venv` or `pip install -e '.[all]'`"
        ) from exc


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="nercc",
        description="Straggler-resilient prediction serving on Triton with NeRCC / BACC coded computing.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module, cmd_parser = command_parser(name)
    args = cmd_parser.parse_args(argv[1:])
    return int(module.main(args) or 0)


def command_parser(name: str):
    """(module, argparse parser) of ``nercc <name>`` (also used to check generated command lines)."""
    module = _load(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(
        prog=f"nercc {name}",
        description=(module.__doc__ or COMMANDS[name][1]).strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    module.configure(cmd_parser)
    return module, cmd_parser


if __name__ == "__main__":
    sys.exit(main())
