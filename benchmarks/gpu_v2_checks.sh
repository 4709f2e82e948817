#!/usr/bin/env bash
# OPUS-V2's GPU figures on a GPU machine, in one run of under 10 minutes:
#   bash benchmarks/gpu_v2_checks.sh [seconds]     (default 565; reports under $OUT: log.txt, e2e_v2.md, cpd.md,
#                                                   knn.md, gpu_tests.log, prof_v2t.md)
# OPS-T and OPUS-V2-T end to end (inference and training, faithful and fast, interleaved in one process: V2-T's
# fast training step against OPS-T's), the CPD modules by formulation x precision x chunk size, the 1-NN matching,
# the GPU tests of the sparse convs, the CPD modules and the training step, then a profile of V2-T's fast training
# step while time is left. Needs beside the working tree .whl and .bench_data (as benchmarks/gpu_checks.sh).
OUT=${OUT:-$PWD/gpu_out}; mkdir -p $OUT
B=${1:-565}
T0=$(date +%s); L=$OUT/log.txt
el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $L; }
left() { local l=$(( B - ($(date +%s) - T0) )); [ $l -lt $1 ] && echo $l || echo $1; }
. benchmarks/gpu_setup.sh >> $L 2>&1 || { tail -30 $L; exit 1; }
el setup done
[ -e ../shared/data ] || { mkdir -p ../shared && ln -s $PWD/.bench_data ../shared/data; }
F='mmcv - INFO|init_weights|torch.Size|Init: |^ *$|The value is the same|Warning|warn|"""'
timeout $(left 240) python benchmarks/bench_e2e.py --configs configs/ops-t_r50_704x256_8f_12e.py \
  configs/opusv2-t_r50_704x256_8f_50e.py --rounds 3 --samples 15 --warmup 4 --infer-modes faithful fast \
  --train-modes faithful fast --train-iters 3 --train-warmup 2 --out $OUT/e2e_v2.md 2>&1 | grep -Ev "$F" > $OUT/bench.log
el "e2e ${PIPESTATUS[0]}"
timeout $(left 60) python benchmarks/bench_cpd.py --rounds 3 --formulations chosen gathered-inputs \
  --out $OUT/cpd.md > $OUT/cpd.log 2>&1; el "cpd $?"
timeout $(left 40) python benchmarks/bench_knn.py --rounds 3 --out $OUT/knn.md > $OUT/knn.log 2>&1; el "knn $?"
timeout $(left 110) python -m pytest -q -rs tests/accel tests/models/test_opusv2_sparse_conv.py \
  tests/models/test_sparse_conv_strided.py tests/models/test_opusv2_densifier.py tests/models/test_knn.py \
  tests/models/csrc tests/engine/test_train_step.py tests/models/test_ops_cuda_graph.py \
  tests/engine/test_dist_cuda_graph.py -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
el "gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR" $OUT/gpu_tests.log | tail -8 | tee -a $L
if [ "$(left 150)" -gt 60 ]; then
  timeout $(left 150) python benchmarks/profile_e2e.py --config configs/opusv2-t_r50_704x256_8f_50e.py --mode fast \
    --skip-inference --out $OUT/prof_v2t.md 2>&1 | grep -Ev "$F" > $OUT/prof.log; el "prof ${PIPESTATUS[0]}"
fi
cat $L; cat $OUT/e2e_v2.md $OUT/cpd.md $OUT/knn.md 2>/dev/null | grep "|\|vs" | head -80
