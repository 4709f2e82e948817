"""Time of the Occ3D metrics per sample: RayIoU's ray traversal (the PyTorch loop against the Triton kernel, which
`cast_rays` uses on CUDA) and the whole per-sample metric work (RayIoU and mIoU accumulation).

The rig: a real Occ3D label grid (`--labels`, default the benchmark data's or ../shared/data's sample, else a
synthetic ground plane with scattered voxels) as the ground truth; the prediction is that grid with 10 % of its
occupied voxels set free and as many free ones filled (random classes); 8 ray origins per sample (the protocol's
most) spread over +-30 m at the LiDAR's height; `--batch` samples cast together (the evaluator's 16 on CUDA).
Rounds interleave the modes in one process; each figure is the median over rounds of ms per sample, with the
spread of the round medians.

    python benchmarks/bench_metrics.py [--device cuda] [--rounds 5] [--batch 16] [--out bench_metrics.md]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.report import print_report  # noqa: E402
from core.benchmarks import OCC3D_NUSCENES  # noqa: E402
from evaluation.miou import OccMIoU  # noqa: E402
from evaluation.ray_cast_kernel import traverse_triton  # noqa: E402
from evaluation.ray_iou import RayIoU, _traverse, rays_to_voxel_frame, traversal_state  # noqa: E402

LABEL_CANDIDATES = [os.path.join(ROOT, '.bench_data', 'occ3d-sample', 'labels.npz'),
                    os.path.join(ROOT, '..', 'shared', 'data', 'occ3d-sample', 'labels.npz')]


def ground_truth(path):
    """(semantics uint8 [200, 200, 16], mask_camera bool, source) of the label file, or a synthetic grid."""
    for candidate in [path] if path else LABEL_CANDIDATES:
        if candidate and os.path.isfile(candidate):
            labels = OCC3D_NUSCENES.read_labels(candidate, ('semantics', 'mask_camera'))
            return labels['semantics'], labels['mask_camera'].astype(bool), os.path.relpath(candidate, ROOT)
    if path:
        raise SystemExit(f'bench_metrics: no label file at {path}')
    rng = np.random.default_rng(0)
    gt = np.full(OCC3D_NUSCENES.grid_shape, OCC3D_NUSCENES.free_label, np.uint8)
    gt[..., 1] = np.where(rng.random(gt.shape[:2]) < 0.9, 11, OCC3D_NUSCENES.free_label)   # driveable surface
    scattered = rng.random(gt.shape) < 0.01
    gt[scattered] = rng.integers(1, 17, int(scattered.sum()))
    return gt, np.ones(gt.shape, bool), 'synthetic'


def prediction(gt, rng):
    free = OCC3D_NUSCENES.free_label
    pred = gt.copy()
    occupied, empty = np.flatnonzero(gt != free), np.flatnonzero(gt == free)
    n = len(occupied) // 10
    pred.reshape(-1)[rng.choice(occupied, n, replace=False)] = free
    pred.reshape(-1)[rng.choice(empty, n, replace=False)] = rng.integers(0, free, n)
    return pred


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--labels', help='an Occ3D labels.npz (default: the sample of .bench_data or ../shared)')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--batch', type=int, default=16, help='samples cast together')
    parser.add_argument('--out', help='also write the table (markdown) here')
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(1)
    gt, mask, source = ground_truth(args.labels)
    preds = [prediction(gt, rng) for _ in range(args.batch)]
    origins = [np.c_[rng.uniform(-30, 30, (8, 2)), np.full(8, 1.84)] for _ in range(args.batch)]
    ray_iou = RayIoU(device=device)
    miou = OccMIoU(OCC3D_NUSCENES.label_names, use_camera_mask=True)

    # the traversal's inputs, as `cast_rays` builds them for the batch
    starts, ends = zip(*(rays_to_voxel_frame(o, ray_iou.rays) for o in origins))
    sample = torch.cat([torch.full((s.shape[0],), i) for i, s in enumerate(starts)])
    grids = torch.from_numpy(np.stack([np.stack([p, gt]) for p in preds]) != OCC3D_NUSCENES.free_label).to(device)
    state = traversal_state(grids, torch.cat(starts), torch.cat(ends), sample)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    modes = {'traversal, PyTorch loop': lambda: _traverse(*state)}
    if device.type == 'cuda':
        modes['traversal, Triton kernel'] = lambda: traverse_triton(*state)
    modes['whole metric work (RayIoU + mIoU)'] = lambda: (ray_iou.add_batch(preds, [gt] * len(preds), origins),
                                                         [miou.add_batch(p, gt, mask) for p in preds])
    if device.type == 'cuda':
        want = _traverse(*state)
        got = traverse_triton(*state)
        if not (torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])):
            raise SystemExit('bench_metrics: the Triton traversal differs from the PyTorch loop')
    for fn in modes.values():       # warm-up: kernel builds, allocator
        fn()
    times = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, fn in modes.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1000 / args.batch)
    base_name = 'traversal, PyTorch loop'
    base_ms = statistics.median(times[base_name])
    rays = state[4].shape[0] // args.batch
    name = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    lines = [f'# Occ3D metrics per sample on {name}',
             f'ground truth: {source}; {rays:,} rays per sample ({len(origins[0])} origins), {args.batch} samples '
             f'cast together, {args.rounds} rounds', '',
             '| part | ms per sample, median | min-max (rounds) | vs the PyTorch traversal |', '|---|---|---|---|']
    for mode, values in times.items():
        med = statistics.median(values)
        lines.append(f'| {mode} | {med:.2f} | {min(values):.2f}-{max(values):.2f} | {base_ms / med:.2f}x |')
    print_report(lines, args.out)


if __name__ == '__main__':
    main()
