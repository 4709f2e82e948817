#!/usr/bin/env bash
# Create (or bring up to date) the project's virtual environment in .venv.
#
# The one install path of OPS: the README, CI and developers all call it (through `make env`).
# Order matters: torch + torchvision first, then mmcv-full 1.7.2 compiled against that torch
# (its setup.py imports torch and pkg_resources, hence no build isolation and setuptools<81),
# then the pure-Python stack, then the project itself in development mode, then (where nvcc and a GPU
# are found) the project's CUDA sampling op, built in place for that GPU.
# A second run returns in seconds when nothing changed (stamp = hash of the inputs + a working
# import check).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${OPS_VENV:-$root/.venv}
python_bin=${PYTHON:-python3}
constraints=requirements/constraints.txt
stamp_file=$venv/.ops-install-stamp

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

inputs_hash() {
    cat tools/install_env.sh tools/build_cuda_ops.sh requirements/*.txt setup.py pyproject.toml models/csrc/*.py \
        models/csrc/*.cu models/csrc/*.cpp 2>/dev/null | sha256sum | cut -d' ' -f1
}

verify_imports() {
    "$venv/bin/python" - <<'EOF'
import mmcv, mmcv.ops, mmdet, torch, torchvision  # noqa: F401
from mmcv.ops import nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # needs the compiled mmcv._ext matching this torch
import models, loaders  # noqa: F401  (the project, installed in development mode)
import glob
from models.csrc import cuda_op_available
if glob.glob('models/csrc/_msmv_sampling_cuda*.so'):   # built by tools/build_cuda_ops.sh: it must load
    assert cuda_op_available(), 'models/csrc/_msmv_sampling_cuda is built but does not import'
print(f"[install] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}")
EOF
}

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$(inputs_hash)" ] && verify_imports 2>/dev/null; then
    log "environment $venv is up to date"
    exit 0
fi

"$python_bin" - <<'EOF' || die "Python >= 3.11 is required (set PYTHON=/path/to/python3.11)"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
EOF

if [ ! -x "$venv/bin/python" ]; then
    log "creating virtual environment $venv"
    "$python_bin" -m venv "$venv" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's site config lists local mirrors that may lack a package; their warnings are noise here.
pip_() { "$venv/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
pip=(pip_)

log "step 1/7: build tools"
"${pip[@]}" install -q -c "$constraints" "setuptools>=77,<81" wheel

log "step 2/7: torch + torchvision"
"${pip[@]}" install -q -c "$constraints" torch torchvision

log "step 3/7: mmcv-full 1.7.2 with its ops, compiled against this torch (about 11 min on 2 cores when not cached)"
install_mmcv() {
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${pip[@]}" install -q --no-build-isolation \
        -c "$constraints" "$@" mmcv-full
}
mmcv_ok() { "$venv/bin/python" -c "import mmcv.ops" >/dev/null 2>&1; }
if ! mmcv_ok; then
    install_mmcv
    if ! mmcv_ok; then
        # pip reuses a cached wheel built against another torch: rebuild it from source.
        log "cached mmcv-full wheel does not match this torch; rebuilding without the pip cache"
        install_mmcv --no-cache-dir --force-reinstall --no-deps
        mmcv_ok || die "mmcv-full 1.7.2 installed but 'import mmcv.ops' fails; see the output above"
    fi
fi

log "step 4/7: system JPEG library for pyturbojpeg"
if ldconfig -p 2>/dev/null | grep -q libturbojpeg; then
    log "libturbojpeg present"
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q libturbojpeg0 >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libturbojpeg0 >/dev/null 2>&1; }) &&
        log "installed Debian package libturbojpeg0" ||
        log "could not install libturbojpeg0 with apt; images will be decoded with OpenCV (same pixels within JPEG tolerance, slower)"
else
    log "libturbojpeg not found and apt-get is not usable here; images will be decoded with OpenCV."
    log "For faster loading install it yourself (Debian/Ubuntu: apt-get install libturbojpeg0)."
fi

log "step 5/7: mmdet, nuscenes-devkit and the rest"
"${pip[@]}" install -q -c "$constraints" -r requirements/runtime.txt

# pillow-simd is optional, as in the original code: a faster drop-in PIL when it compiles here.
# It is installed over Pillow (same import name) so packages that require "pillow" stay satisfied.
if [ "${OPS_SKIP_PILLOW_SIMD:-0}" != 1 ] && ! "$venv/bin/python" -c "import PIL, sys; sys.exit('.post' not in PIL.__version__)" 2>/dev/null; then
    if "${pip[@]}" install -q --no-deps -c "$constraints" pillow-simd >/dev/null 2>&1; then
        log "pillow-simd built and installed over Pillow"
    else
        log "pillow-simd did not build here (needs libjpeg and zlib headers); keeping Pillow"
    fi
fi

log "step 6/7: OPS in development mode"
"${pip[@]}" install -q --no-build-isolation --no-deps -e .

log "step 7/7: the CUDA sampling op (models/csrc), where nvcc and a GPU are found"
bash tools/build_cuda_ops.sh "$venv/bin/python" || die "the CUDA sampling op failed to build (see above)"

"${pip[@]}" check || die "pip check found broken requirements (see above)"
verify_imports || die "the environment does not import (see the traceback above)"
inputs_hash > "$stamp_file"
log "done: activate with 'source .venv/bin/activate'"
