#!/usr/bin/env bash
# One prepared GPU check for a lent H100/H200 (run from the repository root): GPU-only tests, the clipfast vs
# transformers sweep (bf16/fp16, sdpa/flash, batch 1-1024, ViT-B/32 and ViT-L/14) and the end-to-end JPEG path
# with CLIPImageProcessorFast(device="cuda"). Every step has its own timeout inside one overall budget (default
# 540 s, under the device's 600 s per command); logs and JSON go to $OUT (default benchmarks/results/gpu).
#
#     OUT=/some/dir BUDGET_S=540 bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-benchmarks/results/gpu}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)

# step NAME LIMIT_S COMMAND...: run COMMAND with at most LIMIT_S seconds (less if the budget is nearly spent)
step() {
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then echo "$name skipped: budget spent" | tee -a "$OUT/steps.log"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $(($(date +%s) - t0))s" | tee -a "$OUT/steps.log"
    tail -n 15 "$OUT/$name.log"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step env 30 python -c "import torch, transformers, open_clip; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0), transformers.__version__, open_clip.__version__); \
import importlib.util as u; print('flash_attn', u.find_spec('flash_attn') is not None)"
step tests 120 python -m pytest -q -x tests -k "cuda or gpu"
step sweep 300 python benchmarks/bench_gpu.py --out "$OUT" --budget-s 270
step end_to_end 90 python benchmarks/bench_end_to_end.py --device cuda --dtype bfloat16 --images 256 --batch 128 --quick
cp benchmarks/results/end_to_end_cuda_*.json "$OUT"/ 2>/dev/null
echo "total $(($(date +%s) - START))s" | tee -a "$OUT/steps.log"
