#!/usr/bin/env bash
# Usage: bash dist_train.sh NUM_PROCESSES CONFIG [train.py options...]
# One process per GPU (NCCL); on a machine without GPUs the processes use the CPU and gloo.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash dist_train.sh NUM_PROCESSES CONFIG [train.py options]" >&2
    exit 2
fi
nproc=$1
config=$2
shift 2
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$python" -m torch.distributed.run --nproc_per_node "$nproc" --master_port "${PORT:-29500}" \
    train.py --config "$config" "$@"
