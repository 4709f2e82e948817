#!/usr/bin/env bash
# Training on a SLURM cluster: srun starts one task per GPU; train.py reads its rank, the world size
# and the master address from SLURM's variables (docs/distributed.md).
#
#   bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [GPUS] [train.py options...]
#
# GPUS: total number of GPUs (default 8; or set GPUS=...). Variables (optional):
#   GPUS_PER_NODE  GPUs (tasks) per node (default: min(GPUS, 8))
#   CPUS_PER_TASK  CPU cores per task (default 5)
#   SRUN_ARGS      more srun options, e.g. "--time=3-00:00:00 --qos=high"
#   MASTER_PORT    port on the first node (default: 20000 + job id % 20000)
#   PYTHON         interpreter (default: .venv/bin/python when it exists, else python3)
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: [GPUS_PER_NODE=8 CPUS_PER_TASK=5 SRUN_ARGS=...] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [GPUS] [train.py options]" >&2
    exit 2
fi
partition=$1
job_name=$2
entry=(train.py --config "$3")
shift 3
source "$(dirname "$0")/slurm_launch.sh"   # [GPUS] [options] -> srun
