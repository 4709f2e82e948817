#!/usr/bin/env bash
# Set up an offline GPU machine, one without a package registry (the wheels carried in .whl, see
# docs/performance.md, "GPU machine set-up"):
#   . benchmarks/gpu_setup.sh [full]       (sourced: it exports PYTHONPATH; logs under $OUT or ./gpu_out)
# Installs the wheels and builds OPS's CUDA extension; benchmarks/gpu_checks.sh then runs the GPU tests
# and the benchmarks.
# Without `full`, mmcv-full's own CUDA ops are not built (a 5-minute build): a stand-in mmcv._ext lets
# mmcv.ops import and fails loudly if any of its ops is called, and mmdet's focal loss runs its PyTorch
# path (the formula of mmcv's op; the tests that compare with mmcv's kernels are skipped then).
set -u
OUT=${OUT:-$PWD/gpu_out}; mkdir -p $OUT
T0=$(date +%s)
mkdir -p /tmp/site && python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
if [ "${1:-}" = full ]; then
  bash .whl/gpu_env.sh; MMCV=/tmp/mmcv; SC=
else
  mkdir -p /tmp/mmcv-src && tar xzf .whl/mmcv-full-1.7.2.tar.gz -C /tmp/mmcv-src
  printf 'def __getattr__(name):\n    def _missing(*a, **k):\n        raise RuntimeError(f"mmcv op {name} is not built here")\n    return _missing\n' \
    > /tmp/mmcv-src/mmcv-full-1.7.2/mmcv/_ext.py
  MMCV=/tmp/mmcv-src/mmcv-full-1.7.2; SC=/tmp/sc; mkdir -p $SC
  cat > $SC/sitecustomize.py <<'PY'
import torch.nn.functional as F
import mmdet.models.losses.focal_loss as fl
def _sigmoid_focal_loss(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction='mean', avg_factor=None):
    onehot = F.one_hot(target, num_classes=pred.size(1) + 1)[:, :pred.size(1)].type_as(pred)
    return fl.py_sigmoid_focal_loss(pred, onehot, weight, gamma, alpha, reduction, avg_factor)
fl.sigmoid_focal_loss = _sigmoid_focal_loss
PY
fi
export PYTHONPATH=$SC:/tmp/site:$MMCV:$PWD PYTHONUNBUFFERED=1
(cd models/csrc && TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python setup.py build_ext --inplace > $OUT/csrc_build.log 2>&1) \
  || { tail -20 $OUT/csrc_build.log; exit 1; }
[ "${1:-}" = full ] && WAIT_MMCV=1 bash .whl/gpu_env.sh
echo "setup done in $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
