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
config=$3
shift 3
gpus=${GPUS:-8}
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    gpus=$1
    shift
fi
gpus_per_node=${GPUS_PER_NODE:-$(( gpus < 8 ? gpus : 8 ))}
cpus_per_task=${CPUS_PER_TASK:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ] && python=$root/.venv/bin/python
cd "$root"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# shellcheck disable=SC2086
exec srun -p "$partition" --job-name="$job_name" --gres=gpu:"$gpus_per_node" --ntasks="$gpus" \
    --ntasks-per-node="$gpus_per_node" --cpus-per-task="$cpus_per_task" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
    "$python" -u train.py --config "$config" --launcher slurm "$@"
