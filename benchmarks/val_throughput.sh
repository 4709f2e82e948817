#!/usr/bin/env bash
# Samples/s of the whole val.py (loading the JPEGs, the model, the metrics) on a synthetic world of
# full-size 1600x900 images, faithful and --fast:
#   bash benchmarks/val_throughput.sh [config] [key frames per held-out scene]
# Defaults: configs/ops-t_r50_704x256_8f_12e.py, 40 key frames x 2 held-out scenes (80 samples).
# On a GPU machine after `. benchmarks/gpu_setup.sh`; DEVICE=cpu for a smoke run. The model has
# random weights (val.py --random-init): the test step has static shapes, so its time does not depend on
# them. Prints per run the samples, the wall time of the process, the inference loop's time (val.py's
# "inference:" log line) split into the first sample (graph capture, kernel compilation) and the steady
# samples/s after it (past the batches the loader prefetched during the first, which val.py logs when enough
# batches follow them), the metrics' time after the loop (the "metrics:" line: one process evaluates alongside the
# loop, so this is what was still queued, at most the evaluation thread's 64 samples, and the tables), and the time
# the 6,019 Occ3D val samples would take at these rates (first sample + 6,018 at the steady rate + that remainder).
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/ops-t_r50_704x256_8f_12e.py}
keyframes=${2:-40}
device=${DEVICE:-cuda}
world=${WORLD:-/tmp/synthetic_fullsize}
py=${PYTHON:-python}
# one BLAS thread per rendering process: with a process per core, more oversubscribe the host
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $py tools/make_synthetic_nuscenes.py --out "$world" --train-scenes 1 --val-scenes 2 --keyframes "$keyframes" \
    --scale 1.0 --workers "$(nproc)" --skip-if-exists --quiet
$py gen_sweep_info.py --data-root "$world" --version v1.0-mini --out-dir "$world" > /dev/null
for mode in faithful fast; do
    flag=; [ "$mode" = fast ] && flag=--fast
    log=$(mktemp)
    start=$(date +%s)
    $py val.py --config "$config" --device "$device" --random-init $flag --skip-data-check \
        --cfg-options data.val.data_root="$world/" data.val.occ_root="$world/gts/" \
        data.val.ann_file="$world/nuscenes_infos_val_mini_sweep.pkl" > "$log" 2>&1 || { tail -20 "$log"; exit 1; }
    wall=$(( $(date +%s) - start ))
    $py - "$mode" "$wall" "$log" <<'PY'
import re, sys
mode, wall, text = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read()
inf = re.findall(r'inference: (\d+) samples on rank 0 in ([\d.]+) s(?:; after the first batch \(([\d.]+) s[^)]*\) '
                 r'([\d.]+) samples/s)?(?:; after the (\d+) batches the loader had prefetched by then ([\d.]+) '
                 r'samples/s)?', text)[-1]
n, loop = int(inf[0]), float(inf[1])
first, steady = (float(inf[2]), float(inf[3])) if inf[2] else (loop, n / loop)
# the rate past the batches the loader prefetched during the first one, when the run was long enough to have it
note = f' (past the {inf[4]} prefetched batches; {steady:.2f} counting them)' if inf[5] else ' (prefetched batches counted)'
steady = float(inf[5]) if inf[5] else steady
metrics = float(re.findall(r'metrics: \d+ samples in ([\d.]+) s', text)[-1])
whole = first + 6018 / steady + metrics
print(f'{mode}: {n} samples; val.py wall {wall} s; inference loop {loop:.1f} s, of which the first sample {first:.1f} s '
      f'(capture, compilation), then {steady:.2f} samples/s{note}; metrics {metrics:.1f} s after the loop; '
      f'the 6,019 Occ3D val samples at these rates: {whole / 60:.1f} min')
PY
    rm -f "$log"
done
