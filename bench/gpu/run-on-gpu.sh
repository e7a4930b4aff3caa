#!/usr/bin/env bash
# capinfer characterize for ResNet-50 and MobileNet-V2 on the GPU of this machine.
#
# Meant for a lent GPU machine (Python with PyTorch, torchvision, nvidia-ml-py, PyYAML and
# matplotlib installed; no network), run from the repository root. capinfer is used
# straight from the working tree (no install, no dependencies fetched). Clocks and power
# limits are never changed: no --clock-sweep here.
#
# Results: $OUT/characterize.tar.gz (every file), $OUT/<model>-summary.md and
# $OUT/characterize.log when OUT is set (the device tool's output folder, which takes few
# files); otherwise the folders under ./characterize-output.
#
# Environment: SECONDS_PER_POINT (default 5), BATCH_SIZES (default 1,2,...,256),
# MODELS (default "resnet50 mobilenet_v2"), PYTHON (default python3).
set -euo pipefail

cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-resnet50 mobilenet_v2}
SECONDS_PER_POINT=${SECONDS_PER_POINT:-5}
BATCH_SIZES=${BATCH_SIZES:-1,2,4,8,16,32,64,128,256}
export PYTHONPATH="$PWD/operator:$PWD/sidecar:$PWD/node:$PWD/cli${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

if [[ -n "${OUT:-}" ]]; then
    results=$(mktemp -d)/characterize
else
    results=$PWD/characterize-output
fi
mkdir -p "$results"
log=$results/characterize.log

{
    echo "== $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,uuid,driver_version,power.limit,clocks.max.sm,memory.total \
        --format=csv || echo "nvidia-smi failed: the GPU facts come from NVML alone"
    "$PYTHON" -c 'import sys, torch, torchvision, pynvml, yaml, matplotlib
print("python", sys.version.split()[0], "torch", torch.__version__,
      "torchvision", torchvision.__version__, "cuda", torch.version.cuda)' \
        || echo "a package capinfer characterize needs is missing (see the error above)"
} 2>&1 | tee "$log"

status=0
for model in $MODELS; do
    echo "== $model" | tee -a "$log"
    # The module entry point, not the full `capinfer` CLI: that one imports the Triton
    # client, which GPU machines do not have.
    if ! "$PYTHON" -m capinfer.characterize_gpu --model "$model" \
        --batch-sizes "$BATCH_SIZES" --seconds-per-point "$SECONDS_PER_POINT" \
        --out "$results/$model" 2>&1 | tee -a "$log"; then
        echo "== $model FAILED" | tee -a "$log"
        status=1
    fi
done

if [[ -n "${OUT:-}" ]]; then
    tar -czf "$OUT/characterize.tar.gz" -C "$(dirname "$results")" characterize
    cp "$log" "$OUT/characterize.log"
    for model in $MODELS; do
        [[ -f "$results/$model/summary.md" ]] && cp "$results/$model/summary.md" "$OUT/$model-summary.md"
    done
    echo "results: $OUT/characterize.tar.gz (all files), $OUT/*-summary.md, $OUT/characterize.log"
else
    echo "results: $results/<model>/ (summary.md, <model>.profile.yaml, rows.csv, rows.json, PNGs)"
fi
exit $status
