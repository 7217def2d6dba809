#!/usr/bin/env bash
# The GPU figures in one go (about 5 minutes on one H100): the card, seconds per
# training step at the paper's size, scan throughput per precision, and the
# autocast test that runs the default model on the GPU.
#
#     bash benchmarks/gpu.sh RESULTS_DIR
#
# Needs a CUDA build of torch and fieldmon's dependencies importable (pip install -e .,
# or PYTHONPATH=src with them installed elsewhere).
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu.sh RESULTS_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
python3 benchmarks/train_step.py --device cuda --steps 5 --json "$out/train_step.json" 2>&1 | tee "$out/train_step.log" || status=1
# 2 h, so that loading the model is a small part of an end-to-end scan that the
# target (1 h of audio per second) would finish in seconds.
python3 benchmarks/scan.py throughput --hours 2 --model default --device cuda --precision fp32,bf16,fp16 \
    --batch-size 256 --workers 12 --stage-windows 2048 --json "$out/scan.json" 2>&1 | tee "$out/scan.log" || status=1
python3 -m pytest -q -p no:cacheprovider tests/test_autocast.py 2>&1 | tee "$out/test_autocast.log" || status=1
exit $status
