"""Accuracy reproduction (MSE / RelAcc vs stragglers), smoothness sweeps, coding cost and figures.

Sub-commands:
  accuracy  MSE and RelAcc vs straggler count for BACC, NeRCC-0 and tuned NeRCC (nercc/bench/accuracy.py)
  geometry  systematic NeRCC's parity-point geometries compared: recovered-input MSE and RelAcc vs S
            (nercc/bench/systematic.py)
  sweep     MSE over a (lam_enc, lam_dec) grid at one setting: the smoothness-effect data (nercc/bench/tune.py)
  figures   PNG figures from the results in bench/results/ (nercc/bench/figures.py)
  cost      encode/decode cost next to a plain matmul (nercc/bench/coding_cost.py)
  client-cost  per serving scheme, concurrency 1: latency and CPU per batch, ratios to replication
            (nercc/bench/client_cost.py)
  transport-fanout  N plain worker requests at once: grpc.aio vs http+gevent vs grpc+gevent (nercc/bench/transport_fanout.py)
  all       regenerate bench/results/: tune, accuracy for every exported model, sweep, tables, figures
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

# name -> (module, help); each module has configure(parser) and main(args)
SUBCOMMANDS = {
    "accuracy": ("nercc.bench.accuracy", "MSE and RelAcc vs stragglers for BACC, NeRCC-0 and tuned NeRCC"),
    "geometry": ("nercc.bench.systematic", "systematic NeRCC: parity-point geometries compared (recovered-input MSE)"),
    "sweep": ("nercc.bench.tune", "MSE over a (lam_enc, lam_dec) grid at one (model, N, K, S): smoothness data"),
    "figures": ("nercc.bench.figures", "PNG figures from bench/results/"),
    "cost": ("nercc.bench.coding_cost", "time to build matrices, encode and decode, next to a plain matmul"),
    "client-cost": ("nercc.bench.client_cost", "per scheme at concurrency 1: p50/p99 and CPU ms per batch vs replication"),
    "transport-fanout": ("nercc.bench.transport_fanout", "fan-out of N worker requests: grpc.aio, http+gevent, grpc+gevent"),
    "all": (None, "regenerate bench/results/ with the default settings (one command)"),
}

#: Models run by `nercc bench all`, in order; a model whose ONNX is not exported is skipped with a note.
ALL_MODELS = ("lenet5", "repvgg_cifar10", "efficientnet_lite0", "vit_b16")

#: Extra `nercc tune` arguments per model for `bench all`, where one forward pass is expensive: ViT-B/16
#: (~1 s per image here, untrained) keeps lam_enc = 0 and tunes lam_dec only (decoding is cheap); RepVGG
#: searches lam_enc on a short grid (the tuned lam_enc was 0 or <= 2e-7 for LeNet5 and EfficientNet-Lite0).
MODEL_TUNE_ARGS = {
    "repvgg_cifar10": ["--enc-grid", "0,1e-9:1e-6:1", "--refine", "2"],
    "vit_b16": ["--enc-grid", "0", "--no-by-arrived"],
}

#: Serving settings (model, N, K, stragglers) used by `make demo` (N=12, K=4) and the serving tests (N=6, K=2):
#: `bench all` tunes their profile entries too and measures their accuracy.
SERVING_SETTINGS = (("lenet5", 12, 4, "0:4:1"), ("lenet5", 6, 2, "0:2:1"))
SERVING_TRIALS = 500


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if module_name is None:
            configure_all(p)
        elif name == "sweep":
            importlib.import_module(module_name).configure_sweep(p)
        else:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                p.set_defaults(missing=module_name)
                continue
            module.configure(p)


def configure_all(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(ALL_MODELS),
                        help="comma-separated models; models not exported yet are skipped with a note")
    parser.add_argument("--retune", action="store_true",
                        help="tune every setting again even where the profile already has an entry")
    parser.add_argument("--skip-cost", action="store_true", help="do not run the coding-cost benchmark")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args) -> int:
    from nercc.bench.experiment import exit_code_of

    return exit_code_of(f"nercc bench {args.bench_command}", lambda: _dispatch(args))


def _dispatch(args) -> int:
    if getattr(args, "missing", None):
        print(f"nercc bench {args.bench_command}: {args.missing} is not built yet", file=sys.stderr)
        return 2
    if args.bench_command == "all":
        return run_all(args)
    if args.bench_command == "sweep":
        return importlib.import_module("nercc.bench.tune").main_sweep(args)
    module = importlib.import_module(SUBCOMMANDS[args.bench_command][0])
    return int(module.main(args) or 0)


def run_all(args) -> int:
    """Tune missing profile entries, run the accuracy benchmark per model, the sweep, tables and figures."""
    from nercc.bench import accuracy, figures, tune
    from nercc.models import load_model_info

    started = time.perf_counter()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    done, skipped = [], []
    for model in models:
        try:
            info = load_model_info(model)
        except (FileNotFoundError, ValueError) as exc:
            skipped.append(f"{model}: {exc}")
            continue
        if not info.onnx_path.exists():
            skipped.append(f"{model}: {info.onnx_path} missing (run `nercc export {model}`)")
            continue
        cfg = accuracy.DEFAULTS.get(model, accuracy.FALLBACK_DEFAULTS)
        print(f"== {model}: tune N={cfg['workers']} K={cfg['inputs']} S={cfg['stragglers']}", flush=True)
        tune_argv = ["--model", model, "--workers", str(cfg["workers"]), "--inputs", str(cfg["inputs"]),
                     "--stragglers", ",".join(map(str, cfg["stragglers"])), "--seed", str(args.seed),
                     "--threads", str(args.threads)] + (["--quiet"] if args.quiet else []) + \
            MODEL_TUNE_ARGS.get(model, [])
        if not args.retune:
            tune_argv.append("--missing-only")
        if tune.main(_parse(tune.configure, tune_argv)) != 0:
            return 1
        print(f"== {model}: accuracy", flush=True)
        acc_argv = ["--model", model, "--seed", str(args.seed), "--threads", str(args.threads)]
        if accuracy.main(_parse(accuracy.configure, acc_argv + (["--quiet"] if args.quiet else []))) != 0:
            return 1
        done.append(model)
    for model, n_workers, n_inputs, stragglers in SERVING_SETTINGS:
        if model not in done:
            continue
        print(f"== {model}: serving setting N={n_workers} K={n_inputs} S={stragglers}", flush=True)
        common = ["--model", model, "--workers", str(n_workers), "--inputs", str(n_inputs), "--stragglers",
                  stragglers, "--seed", str(args.seed), "--threads", str(args.threads)] + \
                 (["--quiet"] if args.quiet else [])
        if tune.main(_parse(tune.configure, common + ([] if args.retune else ["--missing-only"]))) != 0:
            return 1
        if accuracy.main(_parse(accuracy.configure, common + ["--trials", str(SERVING_TRIALS)])) != 0:
            return 1
    if "lenet5" in done:
        print("== lenet5: smoothness sweep", flush=True)
        tune.main_sweep(_parse(tune.configure_sweep, ["--model", "lenet5", "--threads", str(args.threads)]
                               + (["--quiet"] if args.quiet else [])))
    if not args.skip_cost:
        try:
            cost = importlib.import_module("nercc.bench.coding_cost")
            print("== coding cost", flush=True)
            cost_parser = argparse.ArgumentParser()
            cost.configure(cost_parser)
            cost.main(cost_parser.parse_args(["--json", str(accuracy.RESULTS_DIR / "coding_cost.json")]))
        except ModuleNotFoundError:
            skipped.append("coding cost: nercc/bench/coding_cost.py is not built yet")
    print("== tables and figures", flush=True)
    figures.main(_parse(figures.configure, []))
    for note in skipped:
        print(f"skipped {note}")
    print(f"bench all: {len(done)} model(s) in {time.perf_counter() - started:.0f} s")
    return 0


def _parse(configure_fn, argv):
    parser = argparse.ArgumentParser()
    configure_fn(parser)
    return parser.parse_args(argv)
