# The torchrun call shared by dist_train.sh and dist_val.sh (sourced by them, not run). They set `root`
# (the repository), `nproc` (processes per node) and the array `entry` (script and its fixed arguments)
# and pass on their remaining arguments (options of the script). Variables: NNODES (1), NODE_RANK (0),
# MASTER_ADDR (127.0.0.1), PORT or MASTER_PORT (a free local port on one node, 29500 on several),
# PYTHON (default: the repository's .venv/bin/python when it exists, else python3), OMP_NUM_THREADS (1).
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
exec "$python_bin" -m torch.distributed.run --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$nproc" \
    --master_addr "$master_addr" --master_port "$port" "${entry[@]}" --launcher pytorch "$@"
