"""LeNet5 on MNIST: train here (seeded, a few epochs on CPU), export to ONNX, verify, write nercc.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from nercc.data import load_mnist
from nercc.export import common
from nercc.preprocessing import preprocess

NAME = "lenet5"
PREPROCESS = {"scale": 1.0 / 255.0, "mean": [0.1307], "std": [0.3081], "layout": "NCHW", "resize": None, "crop": None}
META = {
    "name": NAME, "dataset": "mnist", "n_classes": 10,
    "input_name": "input", "input_shape": [1, 28, 28], "input_dtype": "float32", "output_name": "probs",
    "raw_shape": [28, 28], "raw_dtype": "uint8", "preprocess": PREPROCESS,
}


class LeNet5(nn.Module):
    """LeCun et al. 1998: conv 5x5 (6) - pool - conv 5x5 (16) - pool - FC 120 - FC 84 - FC 10.

    The first convolution pads by 2 so 28x28 MNIST digits play the role of the original 32x32 input;
    ReLU and max pooling replace the original tanh / subsampling (the usual modern variant).
    61,706 parameters. Returns logits.
    """

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def train(epochs: int = 4, seed: int = 0, batch_size: int = 128, lr: float = 2e-3) -> tuple:
    """Train LeNet5 on the full MNIST training set; returns (model, test accuracy in torch, seconds)."""
    from nercc.progress import progress_bar

    common.seed_everything(seed)
    x_train_raw, y_train = load_mnist("train")
    x_test_raw, y_test = load_mnist("test")
    x_train = torch.from_numpy(preprocess(META, x_train_raw))
    x_test = torch.from_numpy(preprocess(META, x_test_raw))
    y_train_t, y_test_t = torch.from_numpy(y_train), torch.from_numpy(y_test)
    model = LeNet5()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        bar = progress_bar(range(0, len(x_train), batch_size), desc=f"lenet5 epoch {epoch + 1}/{epochs}", unit="batch")
        for i in bar:
            idx = order[i : i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train_t[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            if i % (50 * batch_size) == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = evaluate(model, x_test, y_test_t)
        print(f"lenet5 epoch {epoch + 1}: test accuracy {acc:.4f}")
    return model, acc, time.perf_counter() - start


def export(epochs: int = 4, seed: int = 0, out: Optional[Path] = None, checkpoint: Optional[Path] = None) -> dict:
    """Train (or load ``checkpoint``, a state_dict), export ONNX, verify against torch, write nercc.json."""
    if checkpoint is not None:
        model = LeNet5()
        model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        train_seconds = None
        weights = f"loaded from {Path(checkpoint).name}"
    else:
        model, _, train_seconds = train(epochs=epochs, seed=seed)
        weights = f"trained here on full MNIST (60,000 images), {epochs} epochs, Adam + one-cycle, seed {seed}"
    model.eval()
    wrapped = common.WithSoftmax(model).eval()
    path = common.onnx_path(NAME, out)
    x_test_raw, y_test = load_mnist("test")
    x_test = preprocess(META, x_test_raw)
    size = common.export_onnx(wrapped, torch.from_numpy(x_test[:2]), path)
    diff = common.check_ort_matches_torch(wrapped, path, x_test[:512])
    accuracy = common.ort_accuracy(path, x_test, y_test, progress="lenet5 onnx test accuracy")
    meta = dict(META)
    meta.update({
        "accuracy": {"top1": round(accuracy, 4), "split": "test", "n": int(len(y_test))},
        "trained": True, "weights": weights, "params": common.count_params(model), "onnx_bytes": size,
        "opset": common.OPSET,
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        "ort_max_abs_diff": diff,
    })
    meta_path = common.write_metadata(NAME, meta, out)
    print(f"lenet5: {path} ({size} bytes), ORT vs torch max abs diff {diff:.2e}, "
          f"ONNX test accuracy {accuracy:.4f} on {len(y_test)} images; metadata {meta_path}")
    return meta


if __name__ == "__main__":
    export()
