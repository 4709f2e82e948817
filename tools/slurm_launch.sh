# The srun call shared by tools/slurm_train.sh and tools/slurm_val.sh (sourced by them, not run).
# They set `partition`, `job_name` and the array `entry` (script and its fixed arguments) and pass on
# their remaining arguments: [GPUS] [options of the script...]. Variables: GPUS (default 8),
# GPUS_PER_NODE (default min(GPUS, 8)), CPUS_PER_TASK (default 5), SRUN_ARGS, PYTHON.
gpus=${GPUS:-8}
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    gpus=$1
    shift
fi
gpus_per_node=${GPUS_PER_NODE:-$(( gpus < 8 ? gpus : 8 ))}
cpus_per_task=${CPUS_PER_TASK:-5}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x "$root/.venv/bin/python" ] && python=$root/.venv/bin/python
cd "$root"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# shellcheck disable=SC2086
exec srun -p "$partition" --job-name="$job_name" --gres=gpu:"$gpus_per_node" --ntasks="$gpus" \
    --ntasks-per-node="$gpus_per_node" --cpus-per-task="$cpus_per_task" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
    "$python" -u "${entry[@]}" --launcher slurm "$@"
