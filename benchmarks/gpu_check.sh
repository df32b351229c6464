#!/usr/bin/env bash
# One prepared GPU check for a lent H100/H200 (run from the repository root): the CUDA tests, the clipfast vs
# transformers vs open_clip sweep (bf16/fp16, sdpa/flash, batch 1-1024, ViT-B/32 and ViT-L/14, eager and
# compiled), a kernel profile, the image processors on CUDA and the end-to-end JPEG path. Every step has its own
# timeout inside one overall budget (default 460 s, under the device's 600 s per command); logs and JSON go to
# $OUT (default benchmarks/results/gpu).
#
# The GPU machine has another transformers and no open_clip; wheels in .whl/ are installed to /tmp/site first
# when present, so the reference is the same version as in CI. Fetch them (ignored by git) with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0
#
#     OUT=/some/dir BUDGET_S=460 bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-benchmarks/results/gpu}
BUDGET_S=${BUDGET_S:-460}
PY=${PY:-python3}
mkdir -p "$OUT"
START=$(date +%s)
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUT/wheels.log" 2>&1 && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

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
    tail -n 12 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
step env 30 $PY -c "import torch, transformers, open_clip, PIL; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0), 'transformers', transformers.__version__, 'open_clip', open_clip.__version__, \
'pillow', PIL.__version__); import importlib.util as u; print('flash_attn', u.find_spec('flash_attn') is not None)"
step tests 100 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_image_processing.py::test_fast_on_cuda_matches tests/test_modeling_parity.py::test_gpu_half_precision_matches_fp32 \
    tests/test_pipeline.py::test_snippet_one_pipeline_fp32 tests/test_pipeline.py::test_snippet_one_pipeline_bf16
step sweep 230 $PY benchmarks/bench_gpu.py --out "$OUT" --budget-s 200 --quick
step profile 40 $PY benchmarks/bench_gpu.py --out "$OUT" --profile
step image_processing 60 $PY benchmarks/bench_image_processing.py --images 256 --rounds 2
cp benchmarks/results/image_processing.json "$OUT"/ 2>/dev/null
step end_to_end 90 $PY benchmarks/bench_end_to_end.py --device cuda --dtype bfloat16 --images 512 --batch 256 --quick
cp benchmarks/results/end_to_end_cuda_*.json "$OUT"/ 2>/dev/null
echo "total $(($(date +%s) - START))s" | tee -a "$OUT/steps.log"
