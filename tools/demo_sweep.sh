#!/usr/bin/env bash
# Train variants of the demo config in parallel on an offline GPU machine and evaluate each on the
# held-out synthetic scene (how configs/ops-demo_synthetic.py was chosen; docs/demo.md has the results).
#
#   on the GPU machine, with the wheels of ../shared/device/fetch_wheels.sh in .whl:
#   OUT=results/ bash tools/demo_sweep.sh tools/demo_sweep_runs.txt
#
# RUNS_FILE lines: NAME CONFIG SEED [key=value overrides...]. Every run trains with train.py on the GPU,
# then val.py evaluates its last checkpoint at the config's score_thr; $OUT gets results.txt and
# runs.tar.gz (logs and metrics per run). The synthetic world is rendered there when data/synthetic is
# absent (the demo's defaults: the same world as `make demo`).
# Two shortcuts keep the whole sweep within ten minutes, both for this sweep only:
# * mmcv-full's ops are not built (5 min): a stand-in mmcv._ext lets mmcv.ops import, and fails loudly
#   if any of its ops is called; OPS's own CUDA extension (models/csrc, 1 min) provides kNN and sampling;
# * the focal loss therefore runs mmdet's PyTorch implementation (the path mmdet takes on the CPU, the
#   same formula as mmcv's CUDA op).
set -u
T0=$(date +%s)
mkdir -p /tmp/site && python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
mkdir -p /tmp/mmcv-standin && tar xzf .whl/mmcv-full-1.7.2.tar.gz -C /tmp/mmcv-standin
cat > /tmp/mmcv-standin/mmcv-full-1.7.2/mmcv/_ext.py <<'PY'
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
export PYTHONPATH=/tmp/sc:/tmp/site:/tmp/mmcv-standin/mmcv-full-1.7.2:$PWD
bash tools/build_cuda_ops.sh python3 || exit 1
if [ ! -f data/synthetic/nuscenes_infos_val_mini_sweep.pkl ]; then
  python tools/make_synthetic_nuscenes.py --out data/synthetic --skip-if-exists --workers 16 --quiet &&
    python gen_sweep_info.py --data-root data/synthetic --version v1.0-mini --out-dir data/synthetic > /dev/null || exit 1
fi
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
  OMP_NUM_THREADS=2 timeout $(( DEADLINE - ($(date +%s) - T0) )) python val.py --config $CFG --device cuda --weights /tmp/w/$name/latest.pth \
    --summary-json $d/metrics.json --cfg-options "$@" > $d/val.out 2>&1
  echo "$name train $((e - s)) s, total $(( $(date +%s) - s )) s: $(python -c "import json; m = json.load(open('$d/metrics.json')); print('mIoU', m['mIoU'], 'RayIoU', m.get('RayIoU'))" 2>&1 | tail -1)"
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
