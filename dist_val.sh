#!/usr/bin/env bash
# Multi-process evaluation with torchrun, on one node or several (docs/distributed.md).
#
#   bash dist_val.sh GPUS_PER_NODE CONFIG WEIGHTS [val.py options, e.g. --save-dir preds]
#
# Variables (all optional), as dist_train.sh: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# PORT or MASTER_PORT (a free local port on one node, 29500 on several), PYTHON, OMP_NUM_THREADS (1).
# One process per GPU (NCCL); on a CPU-only machine the processes use gloo (add --device cpu). The
# results are gathered through the process group: the nodes need no shared filesystem.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: [NNODES=N NODE_RANK=I MASTER_ADDR=HOST PORT=P] bash dist_val.sh GPUS_PER_NODE CONFIG WEIGHTS [val.py flags]" >&2
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
nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
master_addr=${MASTER_ADDR:-127.0.0.1}
port=${PORT:-${MASTER_PORT:-}}
if [ -z "$port" ]; then
    if [ "$nnodes" = 1 ]; then
        port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    else
        port=29500
    fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$python_bin" -m torch.distributed.run --nnodes "$nnodes" --node_rank "$node_rank" \
    --nproc_per_node "$nproc_per_node" --master_addr "$master_addr" --master_port "$port" \
    "$root/val.py" --config "$config" --weights "$weights" --launcher pytorch "$@"
