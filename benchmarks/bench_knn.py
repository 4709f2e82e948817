"""Speed of the exact 1-NN of the loss's point matching on one GPU: brute force against the uniform grid.

    python benchmarks/bench_knn.py [--labels ../shared/data/occ3d-sample/labels.npz] [--rounds 5] [--out knn.md]

The sets of one training step's matching (models/matcher.py, both directions for the initial points and each
decoder layer): ground truth = the centres of the non-free voxels of an Occ3D grid (metres), predictions =
num_query x num_refines[l] points of layer l, OPS-T (600 x [1, 4, 16, 32, 64, 128]) and OPS-L
(4800 x [1, 2, 4, 8, 16, 16]), plus one initial point per query. Two ground truths: the real Occ3D grid of
`--labels` (when given and present) and the benchmark rig's 91,198 random voxels (bench_e2e.py). Predictions as a
trained model places them: around ground-truth points (Gaussian, sigma 0.3 m), a tenth uniform over the range.

`knn1_cuda(query, ref, method)` (models/csrc/knn_cuda.cu): 'brute-force' scans every pair; 'grid' sorts the
references into cubic cells and visits rings of cells around each query. Both return the same indices (checked
here on every set, both directions). Methods interleaved per set, `--rounds` rounds of `--reps` timed calls
(CUDA events); the table gives the median of the round medians, their min-max, and the ratio.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_sampling import import_csrc  # noqa: E402
from benchmarks.cuda_timing import event_times_ms  # noqa: E402
from benchmarks.report import print_report  # noqa: E402

PC_MIN, VOXEL, FREE = (-40.0, -40.0, -1.0), 0.4, 17
VARIANTS = {'OPS-T': (600, [1, 4, 16, 32, 64, 128]), 'OPS-L': (4800, [1, 2, 4, 8, 16, 16])}
METHODS = ('brute-force', 'grid')


def voxel_centres(occupied):
    """bool [200, 200, 16] -> float32 [N, 3] centres (metres), in flattened-index order."""
    ijk = torch.nonzero(torch.as_tensor(occupied)).float()
    return ijk * VOXEL + torch.tensor(PC_MIN) + VOXEL / 2


def ground_truths(labels):
    sets = {}
    if labels and os.path.exists(labels):
        sets['Occ3D sample'] = voxel_centres(np.load(labels)['semantics'] != FREE)
    g = torch.Generator().manual_seed(0)
    rig = torch.zeros(200 * 200 * 16, dtype=torch.bool)
    rig[torch.randperm(rig.numel(), generator=g)[:91_198]] = True
    sets['rig, 91,198 random'] = voxel_centres(rig.view(200, 200, 16))
    return sets


def predictions(gt, num, generator):
    pts = gt[torch.randint(0, len(gt), (num,), generator=generator)] + torch.randn(num, 3, generator=generator) * 0.3
    uniform = num // 10
    lo, hi = torch.tensor(PC_MIN), torch.tensor([40.0, 40.0, 5.4])
    pts[:uniform] = lo + torch.rand(uniform, 3, generator=generator) * (hi - lo)
    return pts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--labels', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data',
                                                         'occ3d-sample', 'labels.npz'))
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--out', help='also write the markdown table here')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('bench_knn.py times CUDA kernels: it needs a GPU and the built extension (models/csrc)')
    knn1_cuda = import_csrc('models.csrc.msmv_cuda').knn1_cuda
    lines = [f'# Exact 1-NN of the matching on {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}; command: `python {" ".join(sys.argv)}`', '',
             '| ground truth | variant | predicted points | brute force ms | grid ms | grid vs brute force |',
             '|---|---|---|---|---|---|']
    g = torch.Generator().manual_seed(1)
    for gt_name, gt in ground_truths(args.labels).items():
        gt = gt.cuda()
        for variant, (queries, refines) in VARIANTS.items():
            step = {m: 0.0 for m in METHODS}
            for num in [queries] + [queries * r for r in refines]:
                pred = predictions(gt.cpu(), num, g).cuda()
                calls = {m: (lambda m=m: (knn1_cuda(gt, pred, m), knn1_cuda(pred, gt, m))) for m in METHODS}
                results = {m: fn() for m, fn in calls.items()}
                for a, b in zip(results['brute-force'], results['grid']):
                    if not torch.equal(a, b):
                        sys.exit(f'bench_knn: grid and brute force differ on {gt_name}, {num} points')
                per_round = {m: [] for m in METHODS}
                for _ in range(args.rounds):
                    for m, fn in calls.items():
                        per_round[m].append(float(np.median(event_times_ms(fn, warmup=2, reps=args.reps))))
                med = {m: float(np.median(v)) for m, v in per_round.items()}
                for m in METHODS:
                    step[m] += med[m]
                spread = {m: f'{med[m]:.3f} ({min(v):.3f}-{max(v):.3f})' for m, v in per_round.items()}
                lines.append(f'| {gt_name} ({len(gt):,}) | {variant} | {num:,} | {spread["brute-force"]} | '
                             f'{spread["grid"]} | {med["brute-force"] / med["grid"]:.1f}x |')
            lines.append(f'| {gt_name} | **{variant}, one step** | both directions, {len(refines) + 1} sets | '
                         f'**{step["brute-force"]:.2f}** | **{step["grid"]:.2f}** | '
                         f'**{step["brute-force"] / step["grid"]:.1f}x** |')
    lines += ['', 'Times: both directions of one set (ground truth -> predictions and back), the same indices.']
    print_report(lines, args.out)


if __name__ == '__main__':
    main()
