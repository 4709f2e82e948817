#!/usr/bin/env bash
# The README's demo (`make demo`): synthetic world -> infos -> train on the CPU -> evaluate -> picture.
# Everything it writes goes to data/synthetic and demo_output/ (both git-ignored).
# Interrupted, it picks up where it stopped: the world and the untrained baseline are kept, training
# resumes from its last checkpoint (demo_output/train/latest.pth). `rm -rf demo_output` starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
config=configs/ops-demo_synthetic.py
world=data/synthetic
out=demo_output
# One thread per core, and threads that sleep instead of spinning while they wait for each other: on a
# busy machine spinning threads steal the cores the others need, and a step got 5x slower under a second
# 2-thread job; passive waiting keeps the slowdown proportional to the load (docs/demo.md, "Under load").
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
start=$(date +%s)
step() { printf '\n=== [demo %4ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

step "1/6 synthetic nuScenes world -> $world"
$py tools/make_synthetic_nuscenes.py --out "$world" --skip-if-exists

step "2/6 info pickles with gen_sweep_info.py"
$py gen_sweep_info.py --data-root "$world" --version v1.0-mini --out-dir "$world"

step "3/6 untrained model on the held-out scenes (the baseline)"
if [ -f "$out/untrained_metrics.json" ]; then
    echo "kept from an earlier run: $out/untrained_metrics.json (rm -rf $out to start afresh)"
else
    $py val.py --config "$config" --device cpu --random-init --summary-json "$out/untrained_metrics.json.tmp"
    mv "$out/untrained_metrics.json.tmp" "$out/untrained_metrics.json"
fi

step "4/6 training $config on the CPU"
if [ -e "$out/train/latest.pth" ]; then
    echo "resuming from $(readlink "$out/train/latest.pth" || echo latest.pth) in $out/train (rm -rf $out to start afresh)"
fi
$py train.py --config "$config" --work-dir "$out/train" --device cpu --no-validate

step "5/6 evaluating the trained model on the held-out scenes"
$py val.py --config "$config" --weights "$out/train/latest.pth" --device cpu \
    --save-dir "$out/preds" --summary-json "$out/trained_metrics.json"

step "6/6 picture of a predicted occupancy grid next to the ground truth"
$py tools/demo_summary.py --world "$world" --preds "$out/preds" --untrained "$out/untrained_metrics.json" \
    --trained "$out/trained_metrics.json" --png "$out/occupancy.png"
printf '\n=== demo finished in %ss (OMP_NUM_THREADS=%s, OMP_WAIT_POLICY=%s)\n' "$(( $(date +%s) - start ))" \
    "$OMP_NUM_THREADS" "$OMP_WAIT_POLICY"
