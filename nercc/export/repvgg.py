"""RepVGG on CIFAR-10: multi-branch training, structural re-parameterization, ONNX export.

RepVGG (Ding et al., CVPR 2021) trains blocks with three parallel branches, 3x3 conv + BN, 1x1 conv + BN and
(when shapes allow) an identity BN, summed and passed through ReLU. At inference every branch is a linear map
of the input, so the block collapses into one 3x3 convolution with bias:

    W = W3 * g3/s3 + pad(W1) * g1/s1 + I * gi/si ,   b = sum over branches of (beta - mu * g/s)

(g, beta, mu, s = BN weight, bias, running mean, sqrt(running var + eps); ``pad`` puts the 1x1 kernel at the
centre of a 3x3 one; ``I`` is the identity as a 3x3 kernel). The exported graph is a plain VGG-style stack of
3x3 conv + ReLU, a global average pool and a linear layer, ending in softmax.

Adapted to 32x32 inputs: the stem keeps full resolution (stride 1) and three stride-2 stages follow, so the
last stage works at 4x4. Training is resumable (a checkpoint every epoch) and bounded by a wall-clock budget:
the learning-rate schedule advances by whichever is further along, the step count or the elapsed fraction of
the budget, so a slow or busy machine still ends with a fully annealed model at the deadline.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nercc.data import load_cifar10
from nercc.export import common
from nercc.paths import REPO_ROOT
from nercc.preprocessing import preprocess

NAME = "repvgg_cifar10"
MONITOR = "every 5th CIFAR-10 test image (2000, 200 per class)"
CHECKPOINT_DIR = REPO_ROOT / "export" / "checkpoints"  # beside the checkout (gitignored), or the working dir
# CIFAR-10 training-set channel statistics, in [0, 1] units.
PREPROCESS = {"scale": 1.0 / 255.0, "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616],
              "layout": "NCHW", "resize": None, "crop": None}
META = {
    "name": NAME, "dataset": "cifar10", "n_classes": 10,
    "input_name": "input", "input_shape": [3, 32, 32], "input_dtype": "float32", "output_name": "probs",
    "raw_shape": [32, 32, 3], "raw_dtype": "uint8", "preprocess": PREPROCESS,
}


@dataclass(frozen=True)
class RepVGGConfig:
    """Stem width, then one (width, blocks) pair per stride-2 stage."""

    stem: int = 32
    stages: Tuple[Tuple[int, int], ...] = ((64, 2), (128, 2), (256, 2))
    n_classes: int = 10


PRESETS = {
    # ~1.1M params, ~65M MACs per image: sized to train in about an hour on two busy CPU cores.
    "cifar-s": RepVGGConfig(stem=32, stages=((64, 2), (128, 2), (256, 2))),
    "cifar-xs": RepVGGConfig(stem=24, stages=((48, 2), (96, 2), (192, 2))),
    "tiny": RepVGGConfig(stem=8, stages=((8, 2), (16, 1))),  # for tests
}


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)
    )


def _fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    std = torch.sqrt(bn.running_var + bn.eps)
    factor = bn.weight / std
    return kernel * factor.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * factor


class RepVGGBlock(nn.Module):
    """Training-time block: ReLU(BN(conv3x3 x) + BN(conv1x1 x) [+ BN(x)]); ``fused()`` gives the 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.conv3 = _conv_bn(c_in, c_out, 3, stride)
        self.conv1 = _conv_bn(c_in, c_out, 1, stride)
        self.identity = nn.BatchNorm2d(c_in) if c_in == c_out and stride == 1 else None

    def forward(self, x):
        y = self.conv3(x) + self.conv1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return F.relu(y)

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """The single 3x3 convolution (with bias) equal to this block's branches in eval mode (before ReLU)."""
        k3, b3 = _fuse_bn(self.conv3[0].weight, self.conv3[1])
        k1, b1 = _fuse_bn(F.pad(self.conv1[0].weight, [1, 1, 1, 1]), self.conv1[1])
        kernel, bias = k3 + k1, b3 + b1
        if self.identity is not None:
            eye = torch.zeros(self.c_in, self.c_in, 3, 3, dtype=kernel.dtype)
            eye[torch.arange(self.c_in), torch.arange(self.c_in), 1, 1] = 1.0
            ki, bi = _fuse_bn(eye, self.identity)
            kernel, bias = kernel + ki, bias + bi
        conv = nn.Conv2d(self.c_in, self.c_out, 3, stride=self.stride, padding=1, bias=True)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        return conv


class RepVGG(nn.Module):
    """Multi-branch RepVGG for 32x32 inputs; returns logits."""

    def __init__(self, config: RepVGGConfig = PRESETS["cifar-s"]):
        super().__init__()
        self.config = config
        blocks = [RepVGGBlock(3, config.stem, 1)]
        c_in = config.stem
        for width, count in config.stages:
            for i in range(count):
                blocks.append(RepVGGBlock(c_in, width, 2 if i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, config.n_classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.blocks(x), 1), 1))


class RepVGGPlain(nn.Module):
    """The re-parameterized network: 3x3 conv + ReLU stack, global average pool, linear; returns logits."""

    def __init__(self, convs: Sequence[nn.Conv2d], head: nn.Linear):
        super().__init__()
        layers = []
        for conv in convs:
            layers += [conv, nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = head

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1))


def build_multibranch(config: RepVGGConfig | str = "cifar-s", seed: Optional[int] = None) -> RepVGG:
    """A (randomly initialised) training-time RepVGG; ``config`` is a RepVGGConfig or a PRESETS name."""
    if seed is not None:
        torch.manual_seed(seed)
    return RepVGG(PRESETS[config] if isinstance(config, str) else config)


def reparameterize(model: RepVGG) -> RepVGGPlain:
    """Collapse every block into one 3x3 conv (uses BN running statistics, i.e. eval-mode semantics)."""
    import copy

    plain = RepVGGPlain([b.fused() for b in model.blocks], copy.deepcopy(model.head))
    return plain.eval()


# ---------------------------------------------------------------------------------------------- training


def _augment(padded: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32x32 crop from the zero-padded 40x40 images and a random horizontal flip (uint8 HWC)."""
    n = len(idx)
    dy, dx = rng.integers(0, 9, size=n), rng.integers(0, 9, size=n)
    flip = rng.random(n) < 0.5
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for j, i in enumerate(idx):
        crop = padded[i, dy[j] : dy[j] + 32, dx[j] : dx[j] + 32]
        out[j] = crop[:, ::-1] if flip[j] else crop
    return out


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(preprocess(META, x[i : i + batch])).contiguous(memory_format=torch.channels_last)
            correct += int((model(xb).argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


@dataclass
class TrainSettings:
    preset: str = "cifar-s"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    time_budget_min: Optional[float] = None  # wall-clock budget (evaluations included); None = every epoch
    threads: int = 2
    # bfloat16 autocast for the training forward/backward (fp32 master weights and evaluation): with AMX
    # (Sapphire Rapids and later) one cifar-s step takes 0.42 s of CPU instead of ~1 s in fp32.
    bf16: bool = True


def _bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _lr_factor(progress: float, warmup: float = 0.15) -> float:
    """One-cycle shape on training progress in [0, 1]: linear warm-up to 1, then cosine down to 0."""
    if progress < warmup:
        return 0.04 + 0.96 * progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay on weights only (not on biases and BN parameters)."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, momentum=0.9, nesterov=True,
    )


def _resume(last: Path, settings: TrainSettings, model: nn.Module, optimizer) -> dict:
    """Load model and optimizer from the checkpoint ``last``; returns its training state."""
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    # Thread count and time budget may change between runs (a busier or a freer machine); the rest may not.
    same = {k for k in asdict(settings) if k not in ("threads", "time_budget_min")}
    if any(ckpt["settings"].get(k) != v for k, v in asdict(settings).items() if k in same):
        raise ValueError(f"{last} was made with other settings {ckpt['settings']}; use --fresh to start over")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    state = ckpt["state"]
    print(f"repvgg: resumed from {last} at epoch {state['epoch']} ({state['elapsed'] / 60:.1f} min trained)")
    return state


def _end_epoch(model, optimizer, settings: TrainSettings, state: dict, test_set, train_loss: float,
               epoch_start: float, progress, elapsed, last: Path) -> None:
    """Evaluate on the monitor images, record the epoch in ``state`` and write the checkpoint ``last``."""
    x_test, y_test = test_set
    t_eval = time.perf_counter()
    # Every 5th test image (200 per class) to follow training; the export measures all 10,000.
    # (Not the first 2000: the npz test split is sorted by class, so those are two classes only.)
    acc = evaluate(model, x_test[::5], y_test[::5])
    state["monitor"] = MONITOR
    state["epoch"] += 1  # a partial last epoch (budget reached) counts as one
    state["history"].append({"epoch": state["epoch"], "train_loss": train_loss, "monitor_acc": acc,
                             "epoch_minutes": (time.perf_counter() - epoch_start) / 60,
                             "eval_seconds": time.perf_counter() - t_eval, "progress": progress()})
    state["best_acc"] = max(state["best_acc"], acc)
    state["elapsed"] = elapsed()
    if progress() >= 1.0:
        state["done"] = True
    ckpt = {"settings": asdict(settings), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "state": state}
    tmp = last.with_name(last.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(last)
    print(f"repvgg epoch {state['epoch']}: loss {train_loss:.4f}, test accuracy {acc:.4f}, "
          f"{state['elapsed'] / 60:.1f} min trained, progress {progress():.2f}", flush=True)


def train(settings: TrainSettings, checkpoint_dir: Path = CHECKPOINT_DIR, resume: bool = True,
          max_batches: Optional[int] = None) -> dict:
    """Train (resuming from ``checkpoint_dir/last.pt`` when present); returns the final checkpoint dict.

    ``max_batches`` stops after that many batches (used to time an epoch before choosing a size).
    """
    from nercc.progress import progress_bar

    torch.set_num_threads(settings.threads)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = checkpoint_dir / "last.pt"
    x_train, y_train = load_cifar10("train")
    x_test, y_test = load_cifar10("test")
    padded = np.pad(x_train, ((0, 0), (4, 4), (4, 4), (0, 0)))
    model = build_multibranch(settings.preset, seed=settings.seed).to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, settings)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    steps_per_epoch = len(x_train) // settings.batch_size  # drop the ragged last batch
    total_steps = settings.epochs * steps_per_epoch
    state = {"epoch": 0, "step": 0, "elapsed": 0.0, "history": [], "best_acc": 0.0, "done": False}
    if resume and last.exists():
        state = _resume(last, settings, model, optimizer)
    budget_s = settings.time_budget_min * 60 if settings.time_budget_min else None
    use_bf16 = settings.bf16 and _bf16_supported()
    print(f"repvgg: preset {settings.preset}, {'bfloat16 autocast' if use_bf16 else 'float32'}, "
          f"{settings.threads} thread(s), budget {settings.time_budget_min} min", flush=True)
    # Wall-clock time of this run, evaluations and checkpoints included, on top of earlier runs' time.
    session_start, earlier = time.perf_counter(), state["elapsed"]

    def elapsed() -> float:
        return earlier + time.perf_counter() - session_start

    def progress() -> float:
        p = state["step"] / total_steps
        return max(p, elapsed() / budget_s) if budget_s else p

    while state["epoch"] < settings.epochs and not state["done"]:
        model.train()
        rng = np.random.default_rng([settings.seed, state["epoch"]])
        order = rng.permutation(len(x_train))
        epoch_start, epoch_loss, seen = time.perf_counter(), 0.0, 0
        bar = progress_bar(range(steps_per_epoch), desc=f"repvgg epoch {state['epoch'] + 1}/{settings.epochs}", unit="batch",
                   mininterval=10)
        for b in bar:
            p = progress()
            if p >= 1.0:
                state["done"] = True
                break
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * _lr_factor(p)
            idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            xb = torch.from_numpy(preprocess(META, _augment(padded, idx, rng))).contiguous(
                memory_format=torch.channels_last)
            yb = torch.from_numpy(y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            epoch_loss += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{epoch_loss / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3f}", refresh=False)
            if max_batches is not None and b + 1 >= max_batches:
                sec = (time.perf_counter() - epoch_start) / (b + 1)
                print(f"repvgg timing: {sec:.3f} s/batch -> {sec * steps_per_epoch / 60:.1f} min/epoch")
                return {"seconds_per_batch": sec, "minutes_per_epoch": sec * steps_per_epoch / 60}
        if seen == 0:  # the budget ran out exactly at an epoch boundary: the last checkpoint is final
            break
        _end_epoch(model, optimizer, settings, state, (x_test, y_test), epoch_loss / max(seen, 1), epoch_start,
                   progress, elapsed, last)
    state["done"] = True
    state["elapsed"] = elapsed()
    return {"settings": asdict(settings), "model": model.state_dict(), "state": state}


def export(checkpoint: Optional[Path] = None, out: Optional[Path] = None) -> dict:
    """Re-parameterize the trained multi-branch model from ``checkpoint`` and export it with nercc.json."""
    path_ckpt = Path(checkpoint) if checkpoint is not None else CHECKPOINT_DIR / "last.pt"
    if not path_ckpt.exists():
        raise FileNotFoundError(f"{path_ckpt} does not exist: train first with `nercc export train-repvgg`")
    ckpt = torch.load(path_ckpt, map_location="cpu", weights_only=False)
    settings = TrainSettings(**ckpt["settings"])
    model = build_multibranch(settings.preset)
    model.load_state_dict(ckpt["model"])
    model.eval()
    plain = reparameterize(model)
    x_test_raw, y_test = load_cifar10("test")
    x_test = preprocess(META, x_test_raw)
    with torch.no_grad():
        xt = torch.from_numpy(x_test[:256])
        branch_diff = float((torch.softmax(model(xt), 1) - torch.softmax(plain(xt), 1)).abs().max())
    wrapped = common.WithSoftmax(plain).eval()
    path = common.onnx_path(NAME, out)
    size = common.export_onnx(wrapped, torch.from_numpy(x_test[:2]), path)
    diff = common.check_ort_matches_torch(wrapped, path, x_test[:512])
    accuracy = common.ort_accuracy(path, x_test, y_test, progress="repvgg onnx test accuracy")
    state = ckpt["state"]
    meta = dict(META)
    meta.update({
        "accuracy": {"top1": round(accuracy, 4), "split": "test", "n": int(len(y_test))},
        "trained": True,
        "weights": (f"trained here on full CIFAR-10 (50,000 images, random crop pad 4 + flip), preset "
                    f"{settings.preset}, {state['epoch']} epochs in {state['elapsed'] / 60:.0f} min "
                    f"(budget {settings.time_budget_min} min), SGD nesterov + one-cycle cosine, peak lr {settings.lr}, "
                    f"label smoothing {settings.label_smoothing}, batch {settings.batch_size}, "
                    f"{'bf16 autocast' if settings.bf16 else 'fp32'}, seed {settings.seed}"),
        "params": common.count_params(plain), "onnx_bytes": size, "opset": common.OPSET,
        "train_params": common.count_params(model),
        "architecture": {"stem": model.config.stem, "stages": [list(s) for s in model.config.stages]},
        "train_seconds": round(state["elapsed"], 1), "epochs": state["epoch"],
        "monitor_acc_per_epoch": [round(h.get("monitor_acc", h.get("test_acc_2000", 0.0)), 4) for h in state["history"]],
        # Runs before the monitor fix followed the first 2000 test images (airplane and automobile only).
        "monitor": state.get("monitor", "first 2000 CIFAR-10 test images (classes 0-1 only: the split is sorted by class)"),
        "ort_max_abs_diff": diff, "reparam_max_abs_diff": branch_diff,
    })
    meta_path = common.write_metadata(NAME, meta, out)
    print(f"repvgg: {path} ({size} bytes), multi-branch vs re-parameterized max abs diff {branch_diff:.2e}, "
          f"ORT vs torch {diff:.2e}, ONNX test accuracy {accuracy:.4f} on {len(y_test)} images; metadata {meta_path}")
    return meta
