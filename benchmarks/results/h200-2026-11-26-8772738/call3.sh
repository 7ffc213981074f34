#!/usr/bin/env bash
# GPU call 3: the 8x8 / 4-warp fused loss config: its GPU tests, loss bench, model bench. Deadline 190 s.
set -u
T0=$(date +%s); DEADLINE=$((T0 + 190))
left() { echo $(( DEADLINE - $(date +%s) )); }
lim() { local l; l=$(left); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
export SEMASK_COMMIT=8772738703844e882c255a9cfc8a8342b97f063c
export TESTS="tests/kernels/test_upsample_cross_entropy_triton.py tests/models/test_fused_model.py -k triton"
SUITE_BUDGET=110 OUT=$OUT bash benchmarks/gpu_suite.sh setup tests 2>&1 | grep -E "passed|failed|FAIL|Error|: ok|TIMEOUT" | tail -n 12
R=$(ls -d "$OUT"/*/ | head -1)
sed -i '/^print("\\nsweep/,$d' .devtmp/loss_bench2.py
echo "=== loss bench [left $(left)s]"
timeout -k 5 "$(lim 30)" python3 .devtmp/loss_bench2.py 2>&1 | tee "$R/loss_bench.md" | tail -n 6
echo "=== model bench [left $(left)s]"
timeout -k 5 "$(lim 40)" python3 benchmarks/run.py --device cuda --no-model-flops --cases model/semask_swin_tiny --providers reference,triton --out "$R/model" 2>&1 | grep -E "model/|skipped|Error|error" | tail -n 6
echo "done in $(( $(date +%s) - T0 ))s"
