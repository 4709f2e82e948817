#!/usr/bin/env bash
# Multi-process evaluation: bash dist_val.sh NUM_PROCESSES CONFIG WEIGHTS [more val.py flags]
# One process per GPU (NCCL); on a CPU-only machine the processes use gloo (add --device cpu).
# Set MASTER_PORT when two evaluations run on one machine, PYTHON to choose the interpreter.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: bash dist_val.sh NUM_PROCESSES CONFIG WEIGHTS [val.py flags, e.g. --save-dir preds]" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")" && pwd)
nproc_per_node=$1
config=$2
weights=$3
shift 3
python_bin=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ]; then
    python_bin=$root/.venv/bin/python
fi
exec "$python_bin" -m torch.distributed.run --nproc_per_node "$nproc_per_node" \
    --master_port "${MASTER_PORT:-29500}" "$root/val.py" --config "$config" --weights "$weights" "$@"
