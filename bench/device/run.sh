#!/usr/bin/env bash
# GPU bench, one command on a GPU machine (under 10 minutes on one H200):
#   bash bench/device/run.sh [OUT_DIR]          (default: bench/results/gpu, or $OUT when set)
# Sets up (carried wheels from .whl/ when the machine has no network), exports EfficientNet-Lite0 and
# ViT-B/16 to ONNX, runs the coded-accuracy bench with f on the GPU (torch, CUDA), f's cost on GPU vs
# ONNX Runtime on the CPU, and N workers sharing the GPU (in-process, one CUDA stream per worker).
# What it does not do: start tritonserver (the GPU machine has none; a Triton loadtest with GPU workers needs
# the NGC image: docs/deploy.md). Data: $NERCC_DATA_DIR, else .whl/data (carried), else ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR="${1:-${OUT:-bench/results/gpu}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 NERCC_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${NERCC_DATA_DIR:-}" ] && [ -d .whl/data ]; then export NERCC_DATA_DIR="$PWD/.whl/data"; fi

# set-up: packages the GPU image lacks travel as wheels (.whl/*.whl), installed without the network
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nercc-site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/nercc-site"
fi
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT_DIR/environment.txt"

DEVICE="${NERCC_GPU_DEVICE:-cuda}"
"$PY" - <<'PY' || DEVICE=cpu
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PY
if [ "$DEVICE" = cpu ]; then echo "no CUDA device: running the same bench on the CPU (numbers are not GPU numbers)"; fi

time "$PY" bench/device/gpu_bench.py --device "$DEVICE" --out "$OUT_DIR" "${@:2}" 2>&1 | tee "$OUT_DIR/log.txt"
