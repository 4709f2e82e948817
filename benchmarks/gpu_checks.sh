#!/usr/bin/env bash
# The GPU checks on a GPU machine, in one run of under 10 minutes:
#   bash benchmarks/gpu_checks.sh            (reports under $OUT: log.txt, gpu_tests.log, e2e_t.md, e2e_l.md, knn.md, demo.md)
# The GPU tests run beside two trainings of the demo config (faithful, --fast); then the T and L
# end-to-end benchmarks alone on the machine; then val.py of both trainings, faithful and --fast, and
# the voxel agreement of their predictions. Needs beside the working tree: .whl (the wheels,
# docs/performance.md, "GPU machine set-up"), .bench_data (copies of ../shared/data/nuscenes-keyframe
# and occ3d-sample, linked as ../shared/data there) and data/synthetic
# (`python tools/make_synthetic_nuscenes.py` + gen_sweep_info.py, as `make demo` writes it). Each stage
# is cut at the 540 s mark.
OUT=${OUT:-$PWD/gpu_out}; mkdir -p $OUT
T0=$(date +%s); L=$OUT/log.txt; D=$OUT/demo.md
el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $L; }
left() { local l=$(( 540 - ($(date +%s) - T0) )); [ $l -lt $1 ] && echo $l || echo $1; }
. benchmarks/gpu_setup.sh >> $L 2>&1 || { tail -30 $L; exit 1; }
el setup done
[ -e ../shared/data ] || { mkdir -p ../shared && ln -s $PWD/.bench_data ../shared/data; }
F='mmcv - INFO|init_weights|torch.Size|Init: |^ *$|The value is the same|Warning|warn|"""'
C=configs/ops-demo_synthetic.py
for m in faithful fast; do
  X=; [ $m = fast ] && X=--fast
  ( s=$(date +%s); timeout 220 python train.py --config $C --work-dir /tmp/d_$m --device cuda --no-validate --no-progress $X > /tmp/tr_$m.log 2>&1
    echo "train $m rc=$? in $(( $(date +%s) - s )) s" >> /tmp/tr_status ) &
done
timeout $(left 120) python -m pytest -q -rs tests/models/test_ops_cuda_graph.py tests/accel \
  tests/models/test_occ_postprocess.py tests/engine/test_train_step.py tests/models/test_weights.py \
  tests/loaders/test_gpu_decode.py tests/models/test_lidar_voxelize.py tests/engine/test_dist_cuda_graph.py \
  tests/engine/test_throughput.py tests/engine/test_gpu_decode_policy.py tests/models/csrc -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
el "gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR|SKIPPED" $OUT/gpu_tests.log | tail -12 | tee -a $L
wait; el trainings; cat /tmp/tr_status | tee -a $L
timeout $(left 150) python benchmarks/bench_e2e.py --configs configs/ops-t_r50_704x256_8f_12e.py --rounds 5 --samples 20 \
  --train-iters 5 --train-batches 1 8 --out $OUT/e2e_t.md 2>&1 | grep -Ev "$F" > $OUT/bench.log; el "e2e T ${PIPESTATUS[0]}"
timeout $(left 110) python benchmarks/bench_e2e.py --configs configs/ops-l_r50_704x256_8f_12e.py --rounds 5 --samples 20 \
  --train-iters 4 --out $OUT/e2e_l.md 2>&1 | grep -Ev "$F" >> $OUT/bench.log; el "e2e L ${PIPESTATUS[0]}"
timeout $(left 60) python benchmarks/bench_knn.py --rounds 3 --out $OUT/knn.md >> $OUT/bench.log 2>&1; el "knn $?"
echo "# demo config on the H200: faithful vs fast training, faithful vs fast inference" > $D
cat /tmp/tr_status >> $D
for m in faithful fast; do echo "## train $m log" >> $D; grep -h "Epoch \[\|training took" /tmp/d_$m/*.log | sed 's/.*Epoch/Epoch/' >> $D; done
for v in faithful:faithful faithful:fast fast:faithful; do
  w=${v%%:*}; i=${v##*:}; X=; [ $i = fast ] && X=--fast
  ( s=$(date +%s); timeout $(left 90) python val.py --config $C --weights /tmp/d_$w/latest.pth --device cuda $X \
      --save-dir /tmp/p_${w}_$i --summary-json /tmp/s_${w}_$i.json > /tmp/v_${w}_$i.log 2>&1
    echo "val weights=$w inference=$i rc=$? wall $(( $(date +%s) - s )) s: $(cat /tmp/s_${w}_$i.json 2>/dev/null)" >> /tmp/v_status
    grep -h "inference:" /tmp/v_${w}_$i.log >> /tmp/v_status ) &
done
wait; el vals; cat /tmp/v_status >> $D
python benchmarks/compare_predictions.py /tmp/p_faithful_faithful /tmp/p_faithful_fast >> $D 2>&1
python benchmarks/compare_predictions.py /tmp/p_faithful_faithful /tmp/p_fast_faithful >> $D 2>&1
cat $L $D; cat $OUT/e2e_t.md $OUT/e2e_l.md $OUT/knn.md 2>/dev/null | grep "|\|vs"
