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
config=$3
weights=$4
shift 4
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
    "$python" -u val.py --config "$config" --weights "$weights" --launcher slurm "$@"
