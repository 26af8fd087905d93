#!/usr/bin/env bash
# Every GPU figure the project still lacks, in one prepared run on a CUDA machine (an H200 in the
# project's notes): the CUDA tests (counter generator on the GPU = on the CPU, CUDA graphs that
# replay bounces), then the benchmarks, each under its own time limit so that one slow part
# cannot eat the others' time. About 9 minutes in all; results and logs go to $OUT (default
# ./gpu_results). Uses the machine's own python3 with a CUDA build of torch and this checkout's
# src/ (nothing is installed).
#
#   bash benchmarks/gpu_checks.sh            # then copy $OUT/*.json figures into benchmarks/README.md
#
# Limits (seconds) can be changed: LIMIT_TESTS, LIMIT_STEP, LIMIT_PDE, LIMIT_VISION, LIMIT_TRAIN.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}

part() {  # part NAME LIMIT COMMAND...: run COMMAND under LIMIT seconds, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local status=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $status"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

part cuda_tests "${LIMIT_TESTS:-120}" "$PY" -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_counter_rng.py tests/test_pde_graph.py tests/test_sync_free.py tests/test_optimizer.py
# BBI/ECDSep steps vs SGD on the ResNet-18, MLP and 125M sets: ms, x SGD-foreach, blocking syncs
# per step (target 0), peak extra memory; the eager and capturable (bounces, counter draws) paths
part step_cost "${LIMIT_STEP:-150}" "$PY" benchmarks/step_cost.py --device cuda --rounds 5 \
    --only sgd_foreach,sgd_fused,adam_fused,bbi,bbi_capturable,ecdsep,ecdsep_capturable,ecdsep_every8,unit_speed \
    --json "$OUT/step_cost_cuda.json"
# the PDE paper preset: eager vs one CUDA graph per iteration with the preset's bounces (target
# <= 1.5 ms per iteration)
part pde_gpu "${LIMIT_PDE:-100}" "$PY" benchmarks/pde_gpu.py --device cuda --iterations 300 \
    --json "$OUT/pde_gpu.json"
# ResNet-18 at batch 512, bf16, channels-last: the training step with BBI vs SGD (target <= 1.05x)
part vision_gpu "${LIMIT_VISION:-120}" "$PY" benchmarks/vision_gpu.py --images 10240 --repeats 30 \
    --json "$OUT/vision_gpu.json"
# end to end at the CPU benchmark's batch sizes, on the GPU
part train_step "${LIMIT_TRAIN:-90}" "$PY" benchmarks/train_step.py --device cuda --rounds 5 \
    --steps 8 --json "$OUT/train_step_cuda.json"
ls -l "$OUT"
