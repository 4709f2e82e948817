#!/usr/bin/env bash
# Multi-process training with torchrun, on one node or several (docs/distributed.md).
#
#   bash dist_train.sh GPUS_PER_NODE CONFIG [train.py options...]
#
# Variables (all optional):
#   NNODES       number of nodes (default 1)
#   NODE_RANK    this node's index, 0..NNODES-1 (default 0); start the script once on every node
#   MASTER_ADDR  address of node 0 (default 127.0.0.1)
#   PORT         port on node 0 (MASTER_PORT is read too); default: a free local port on one node,
#                29500 on several (every node must be given the same one)
#   PYTHON       interpreter (default: .venv/bin/python when it exists, else python3)
#   OMP_NUM_THREADS  CPU threads per process (default 1)
# One process per GPU (NCCL); on a machine without GPUs the processes use the CPU and gloo.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: [NNODES=N NODE_RANK=I MASTER_ADDR=HOST PORT=P] bash dist_train.sh GPUS_PER_NODE CONFIG [train.py options]" >&2
    exit 2
fi
nproc=$1
entry=(train.py --config "$2")
shift 2
cd "$(dirname "$0")"
root=$PWD
source tools/torchrun_launch.sh   # [train.py options] -> torchrun
