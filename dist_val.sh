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
nproc=$1
entry=("$root/val.py" --config "$2" --weights "$3")
shift 3
source "$root/tools/torchrun_launch.sh"   # [val.py options] -> torchrun
