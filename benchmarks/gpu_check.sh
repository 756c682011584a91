#!/usr/bin/env bash
# The GPU checks of the speed issue in one short run (about 8 minutes on an H100; each step has
# its own time limit so the whole stays within 9): precision speed and fidelity on CUDA, and one
# model's study at paper scale, extrapolated to the paper's ImageNet study (goal: at most one
# GPU-hour for the study on an H100-class GPU). Random weights and grids: nothing downloads.
#
#   bash benchmarks/gpu_check.sh [OUT]        # results in OUT (default benchmarks/out/gpu)
#
# Then copy the tables it prints into benchmarks/RESULTS.md ("GPU" section) with the device name.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-benchmarks/out}/gpu}"  # relative to the repository root
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"

status=0
# 1. bf16 and tf32 against fp32: attributions per second and fidelity, both paper models (~3.5 min)
timeout 240 python benchmarks/bench_precision.py --device cuda --models vgg11,resnet18 --grids 8 \
    --batch-size 16 --out "$OUT/bench_precision_cuda.json" 2>&1 | tee "$OUT/bench_precision.log" || status=1

# 2. one model's study at paper scale (448-pixel grids, presets, every layer and setting), fp32
#    and bf16, extrapolated to 2,000 attributions per key (~2 min each)
for precision in fp32 bf16; do
    timeout 130 python benchmarks/bench_gpu_study.py --model resnet18 --grids 8 --device cuda \
        --precision "$precision" --out-dir "$OUT" 2>&1 | tee "$OUT/bench_gpu_study_$precision.log" || status=1
done
ls -l "$OUT"
exit $status
