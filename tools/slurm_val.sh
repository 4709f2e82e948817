#!/usr/bin/env bash
# Evaluation on a SLURM cluster: srun starts one task per GPU; val.py reads its rank, the world size
# and the master address from SLURM's variables; the results are gathered through the process group
# (no shared filesystem needed). docs/distributed.md.
#
#   bash tools/slurm_val.sh PARTITION JOB_NAME CONFIG WEIGHTS [GPUS] [val.py options...]
#
# GPUS: total number of GPUs (default 8; or set GPUS=...). Variables as tools/slurm_train.sh:
# GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, MASTER_PORT, PYTHON.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: [GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS=...] bash tools/slurm_val.sh PARTITION JOB_NAME CONFIG WEIGHTS [GPUS] [val.py options]" >&2
    exit 2
fi
partition=$1
job_name=$2
entry=(val.py --config "$3" --weights "$4")
shift 4
source "$(dirname "$0")/slurm_launch.sh"   # [GPUS] [options] -> srun
