#!/usr/bin/env bash
# Build the project's CUDA sampling op (models/csrc) in place for the GPU this machine has, and check that
# it loads and agrees with the exact PyTorch fallback. Without nvcc or a GPU it says why in one line and
# exits 0: OPS then runs on the fallback. Called by tools/install_env.sh; usage: build_cuda_ops.sh [PYTHON]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${1:-python3}
case $py in */*) py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" ;; esac  # the build runs in models/csrc
log() { printf '[install] %s\n' "$*"; }

reason=$(cd "$root/models/csrc" && "$py" -c 'import build; print(build.unavailable_reason() or "")')
if [ -n "$reason" ]; then
    log "CUDA sampling op not built: $reason; OPS uses its exact PyTorch fallback"
    exit 0
fi
archs=$(cd "$root/models/csrc" && "$py" -c 'import build; print(build.target_archs())')
build_log="$root/models/csrc/build.log"
log "building the CUDA sampling op for TORCH_CUDA_ARCH_LIST=$archs (log: models/csrc/build.log)"
if ! (cd "$root/models/csrc" && MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" setup.py build_ext --inplace >"$build_log" 2>&1); then
    tail -n 30 "$build_log" >&2
    printf '[install] ERROR: the CUDA sampling op did not compile (models/csrc/build.log above)\n' >&2
    exit 1
fi
"$py" - <<'PY'
import torch
from models.csrc import cuda_op_available, msmv_sampling, msmv_sampling_pytorch
assert cuda_op_available(), 'built, but models.csrc._msmv_sampling_cuda does not import'
# one small call on the GPU against the exact fallback (float32 bilinear sampling: a handful of
# multiply-adds per output, so both sides agree to a few float32 ulps of values of order 1)
g = torch.Generator().manual_seed(0)
feats = [torch.randn(2, 3, h, w, 8, generator=g).cuda() for h, w in ((8, 12), (4, 6))]
loc = torch.rand(2, 5, 4, 3, generator=g)
loc[..., 2] = torch.randint(0, 3, (2, 5, 4), generator=g) / 2  # view k of 3 as k / (N - 1)
loc = loc.cuda()
weights = torch.rand(2, 5, 4, 2, generator=g).cuda()
got, ref = msmv_sampling(feats, loc, weights), msmv_sampling_pytorch(feats, loc, weights)
torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
print(f'[install] CUDA sampling op built and checked against the fallback on {torch.cuda.get_device_name()}')
PY
