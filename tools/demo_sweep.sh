#!/usr/bin/env bash
# Train variants of the demo config in parallel on a lent GPU machine and evaluate each on the held-out
# synthetic scene (how configs/ops-demo_synthetic.py was chosen; docs/demo.md has the results).
#
#   device call, carrying .whl and data/synthetic:  bash tools/demo_sweep.sh tools/demo_sweep_runs.txt
#
# RUNS_FILE lines: NAME CONFIG SEED [key=value overrides...]. Every run trains with train.py on the GPU,
# then val.py evaluates its last checkpoint at score_thr 0.3 and 0.5; $OUT gets results.txt, the
# pytest log of the engine tests and runs.tar.gz (logs and metrics per run).
# Two shortcuts keep the whole sweep within one 10-minute call, both for this sweep only:
# * mmcv-full's ops are not built (5 min): a stand-in mmcv._ext lets mmcv.ops import, and fails loudly
#   if any of its ops is called; OPS's own CUDA extension (models/csrc, 1 min) provides kNN and sampling;
# * the focal loss therefore runs mmdet's PyTorch implementation (the path mmdet takes on the CPU, the
#   same formula as mmcv's CUDA op).
set -u
T0=$(date +%s)
mkdir -p /tmp/site && python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
mkdir -p /tmp/mmcv-src && tar xzf .whl/mmcv-full-1.7.2.tar.gz -C /tmp/mmcv-src
cat > /tmp/mmcv-src/mmcv-full-1.7.2/mmcv/_ext.py <<'PY'
def __getattr__(name):
    def _missing(*args, **kwargs):
        raise RuntimeError(f'mmcv op {name} is not built here')
    return _missing
PY
mkdir -p /tmp/sc && cat > /tmp/sc/sitecustomize.py <<'PY'
# experiment only: mmcv's CUDA focal-loss op is not built here; use mmdet's own PyTorch path (its CPU branch)
import torch.nn.functional as F
import mmdet.models.losses.focal_loss as fl
def _sigmoid_focal_loss(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction='mean', avg_factor=None):
    onehot = F.one_hot(target, num_classes=pred.size(1) + 1)[:, :pred.size(1)].type_as(pred)
    return fl.py_sigmoid_focal_loss(pred, onehot, weight, gamma, alpha, reduction, avg_factor)
fl.sigmoid_focal_loss = _sigmoid_focal_loss
PY
export PYTHONPATH=/tmp/sc:/tmp/site:/tmp/mmcv-src/mmcv-full-1.7.2:$PWD
(cd models/csrc && TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python setup.py build_ext --inplace > $OUT/csrc_build.log 2>&1) || { tail -20 $OUT/csrc_build.log; exit 1; }
python -m pytest -q tests/test_engine_parallel.py > $OUT/pytest.txt 2>&1; tail -1 $OUT/pytest.txt
echo "setup done in $(( $(date +%s) - T0 )) s"
python -c "import models.knn as k; print('csrc knn', k._load('csrc'))"
DEADLINE=${DEADLINE:-575}; TRAIN_DEADLINE=${TRAIN_DEADLINE:-500}
run_one() {
  name=$1; CFG=$2; SEED=$3; shift 3
  d=$OUT/$name; mkdir -p $d
  s=$(date +%s)
  OMP_NUM_THREADS=2 timeout $(( TRAIN_DEADLINE - ($(date +%s) - T0) )) python train.py --config $CFG --device cuda --work-dir /tmp/w/$name \
    --no-validate --no-auto-resume --no-progress --seed $SEED --cfg-options "$@" > $d/train.out 2>&1
  cp /tmp/w/$name/*.log.json $d/ 2>/dev/null
  e=$(date +%s)
  for thr in 0.3 0.5; do
    OMP_NUM_THREADS=2 timeout $(( DEADLINE - ($(date +%s) - T0) )) python val.py --config $CFG --device cuda --weights /tmp/w/$name/latest.pth \
      --summary-json $d/metrics_thr$thr.json --cfg-options "$@" model.test_cfg.pts.score_thr=$thr > $d/val_$thr.out 2>&1
  done
  echo "$name train $((e - s)) s, total $(( $(date +%s) - s )) s: $(python -c "import json;print({t: json.load(open('$d/metrics_thr'+t+'.json'))['mIoU'] for t in ('0.3','0.5')})" 2>&1 | tail -1)"
}
pids=()
while read -r name opts; do
  [ -z "$name" ] && continue
  case $name in \#*) continue;; esac
  run_one $name $opts >> $OUT/results.txt &
  pids+=($!)
done < "$1"
wait "${pids[@]}"
cat $OUT/results.txt
for f in $OUT/*/train.out; do n=$(basename $(dirname $f)); echo "== $n"; grep -o "Epoch \[[0-9]*\]\[[0-9]*/[0-9]*\].*time: [0-9.]*" $f | tail -1; grep -o "loss_cls: [0-9.]*, loss_pts: [0-9.]*, loss: [0-9.]*" $f | tail -1; grep -i "error\|Traceback" $f | head -3; done
cd $OUT && tar czf runs.tar.gz */ && rm -rf */
