#!/usr/bin/env bash
# The GPU checks in one prepared run (about 8 minutes on one H100/H200). On the GPU machine, from the repository root:
#   bash benchmarks/gpu_check.sh [output.json]
# The machine's own torch is used; ltlib's pure-Python dependencies it lacks travel as wheels in .whl/ (if present).
# Before carrying: `python benchmarks/gpu_check.py --prepare` writes .gpu_carry/cifar10-lt.npz (the CIFAR-10-LT data).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${1:-results/benchmarks/gpu_check.json}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
timeout 480 python3 benchmarks/gpu_check.py --out "$out"
