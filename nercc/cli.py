"""`nercc` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module, which provides ``configure(parser)`` (add arguments) and
``main(args) -> int``. Modules are imported only when their command runs, so ``nercc --help`` stays
fast and serving never imports torch. ``--model-repository DIR`` (before or after the command) sets
``$NERCC_MODEL_REPOSITORY`` before any module reads it, so it also reaches the servers and tools the
command starts.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional, Sequence

# name -> (module, one-line help)
COMMANDS = {
    "export": ("nercc.export.cli", "train or load a model and export it to ONNX in model_repository/"),
    "add-model": ("nercc.addmodel", "serve your own ONNX model: check it, tune it, write model_repository/<name>/"),
    "serve": ("nercc.serving.cli", "start a local Triton cluster (master + N workers) and keep it up"),
    "worker": ("nercc.serving.worker_cli", "start one worker tritonserver on this host (multi-host clusters)"),
    "master": ("nercc.serving.master_cli", "start one master tritonserver on this host (multi-host clusters)"),
    "deploy": ("nercc.deploy.cli", "write Kubernetes manifests and a Containerfile (StatefulSet of workers, masters)"),
    "demo": ("nercc.demo", "the main job: local cluster, LeNet5, stragglers, every scheme, latency/accuracy table"),
    "loadtest": ("nercc.loadtest.run", "Locust tail-latency benchmark of uncoded / replication / BACC / NeRCC"),
    "tune": ("nercc.bench.tune", "jointly tune (lam_enc, lam_dec) for a model and write its tuning profile"),
    "bench": ("nercc.bench.cli", "accuracy reproduction (MSE / RelAcc vs stragglers), coding cost, figures"),
    "simulate": ("nercc.simulate.cli", "calibrated discrete-event simulation of N workers (any N): latency and RelAcc"),
    "plan": ("nercc.simulate.plan", "cheapest (N, K, M, deadline) that meets a p99 SLO and a RelAcc floor"),
}


MODEL_REPOSITORY_FLAG = "--model-repository"


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise SystemExit(f"nercc: {module_name} is not built yet (module not found)") from exc
        raise SystemExit(
            f"nercc: this command needs the Python package {missing!r}; install the extras with "
            f"`make venv` or `pip install 'nercc[all]'`"
        ) from exc


def _take_model_repository(argv: List[str]) -> List[str]:
    """Remove ``--model-repository DIR`` (or ``=DIR``) from argv and export it as $NERCC_MODEL_REPOSITORY."""
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == MODEL_REPOSITORY_FLAG:
            if i + 1 >= len(argv):
                raise SystemExit(f"nercc: {MODEL_REPOSITORY_FLAG} needs a folder")
            value, i = argv[i + 1], i + 2
        elif arg.startswith(MODEL_REPOSITORY_FLAG + "="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            rest.append(arg)
            i += 1
            continue
        if not os.path.isdir(value):
            raise SystemExit(f"nercc: {MODEL_REPOSITORY_FLAG} {value}: no such folder")
        os.environ["NERCC_MODEL_REPOSITORY"] = os.path.abspath(value)
        if "nercc.paths" in sys.modules:  # read at import: re-read it (only `nercc` itself was loaded yet)
            importlib.reload(sys.modules["nercc.paths"])
    return rest


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import nercc

    try:
        return version("nercc")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return nercc.__version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = _take_model_repository(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="nercc",
        description="Straggler-resilient prediction serving on Triton with NeRCC / BACC coded computing.",
        epilog=f"{MODEL_REPOSITORY_FLAG} DIR (any position, or $NERCC_MODEL_REPOSITORY): the model repository "
               "every command reads (default: the checkout's model_repository/, or the models shipped in the wheel).",
    )
    parser.add_argument("--version", action="version", version=f"nercc {_version()}")
    parser.add_argument(MODEL_REPOSITORY_FLAG, metavar="DIR", help="model repository (see below)")
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
    if not any(MODEL_REPOSITORY_FLAG in action.option_strings for action in cmd_parser._actions):
        cmd_parser.add_argument(MODEL_REPOSITORY_FLAG, metavar="DIR", dest="model_repository_dir",
                                help="model repository to read models from (also $NERCC_MODEL_REPOSITORY); "
                                     "applied before the command starts")
    return module, cmd_parser


if __name__ == "__main__":
    sys.exit(main())
