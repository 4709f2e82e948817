"""Speed of OPUS-V2's sparse CPD modules in a training step: forward + backward of every layer's module.

    python benchmarks/bench_cpd.py [--config configs/opusv2-t_r50_704x256_8f_50e.py] [--rounds 5] [--out cpd.md]

The CPD modules (models/densifier.py: VFE, one regular and one submanifold sparse conv of models/sparse_conv.py) run
eagerly after the graphed training decoder, one per decoder layer, on num_query x num_refines[l] points. Points are
placed as a trained model places them: around the non-free voxels of the Occ3D sample of `--labels` (Gaussian, sigma
0.3 m; the benchmark rig's 91,198 random voxels without it), a tenth uniform over the range; point features random.
One step = every layer's module forward, a scalar of their logits, its backward.

Variants, interleaved per round (CUDA events around each step, so the host reads inside the modules count; on the
CPU, `--device cpu`, wall time):
* the formulation of the sparse convs (models/sparse_conv.py): 'chosen', what `_apply_conv` picks per conv (the
  smaller intermediate); 'gathered-inputs', every conv as gathered inputs x `[K * C_in, C_out]` GEMMs
  (`GatheredInputs`); 'products-per-tap', every conv as per-tap products summed per output (`ProductsPerTap`);
* the matrix-product precision: float32 (the faithful preset) or TF32 (the fast preset's 'cpd' part,
  accel/precision.py; forward and backward);
* `sparse_conv.CHUNK_ELEMENTS`, the elements of one chunk's gathered columns or products: larger chunks launch
  fewer gathers and GEMMs and hold more transient memory.
The table gives the median of the round medians, their min-max, the ratio against the first variant and the peak
memory allocated during a step.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from mmcv import Config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from accel.precision import matmul_precision  # noqa: E402
from benchmarks.bench_knn import FREE, ground_truths  # noqa: E402
from benchmarks.cuda_timing import event_times_ms  # noqa: E402
from benchmarks.report import print_report  # noqa: E402
from models import sparse_conv  # noqa: E402
from models.densifier import Densifier  # noqa: E402

PC_MIN, PC_MAX = torch.tensor([-40.0, -40.0, -1.0]), torch.tensor([40.0, 40.0, 5.4])


FORMULATIONS = {'chosen': None, 'gathered-inputs': sparse_conv.GatheredInputs,
                'products-per-tap': sparse_conv.ProductsPerTap}


def wall_times_ms(fn, reps):
    """Wall milliseconds of each of `reps` calls of fn() after one warm-up call (the CPU's timing)."""
    fn()
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def conv_work(module, pts, feats):
    """One CPD module's sparse convs on its points, from hooks on the convs (one forward without gradient): active
    voxels U, output sites U', the share of pad entries in the regular conv's neighbour table, and per formulation the
    forward GFLOP of both convs (2 x sites x 27 x C_in x C_out: U' sites for gathered inputs, U for products per
    tap) and the largest float32 gathered columns `[U', 27, C_in]`, GB."""
    seen = []

    def record(conv, args, output):
        features, coords, batch_size, spatial_shape = args
        seen.append((conv, features.shape[0], coords.long(), output[1], batch_size, spatial_shape))

    handles = [conv.register_forward_hook(record) for conv in (module.cls_branch[0], module.cls_branch[2])]
    try:
        with torch.no_grad():
            module(feats, pts)
    finally:
        for handle in handles:
            handle.remove()
    (_, num_in, coords, out_coords, batch_size, shape), _ = seen
    table = sparse_conv.neighbour_table(coords, out_coords, batch_size, shape)
    gathered = products = columns = 0
    for conv, rows_in, _, out, _, _ in seen:
        taps_channels = conv.weight[0].numel() * conv.out_channels            # 27 x C_in x C_out
        gathered += 2 * len(out) * taps_channels / 1e9
        products += 2 * rows_in * taps_channels / 1e9
        columns = max(columns, len(out) * conv.weight[0].numel() * 4 / 1e9)
    return dict(voxels=num_in, sites=len(out_coords), pads=(table == num_in).float().mean().item(),
                gathered=gathered, products=products, columns=columns)


def layer_inputs(gt, num_query, num_points, channels, device, generator):
    """Normalised points `[1, Q, P, 3]` (around `gt`'s metres, a tenth uniform) and features `[1, Q, P, C]`."""
    n = num_query * num_points
    pts = gt[torch.randint(0, len(gt), (n,), generator=generator)] + torch.randn(n, 3, generator=generator) * 0.3
    pts[:n // 10] = PC_MIN + torch.rand(n // 10, 3, generator=generator) * (PC_MAX - PC_MIN)
    pts = ((pts - PC_MIN) / (PC_MAX - PC_MIN)).clamp(0, 1).view(1, num_query, num_points, 3)
    feats = torch.randn(1, num_query, num_points, channels, generator=generator)
    return pts.to(device).requires_grad_(), feats.to(device).requires_grad_()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='configs/opusv2-t_r50_704x256_8f_50e.py')
    parser.add_argument('--labels', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data',
                                                         'occ3d-sample', 'labels.npz'))
    parser.add_argument('--formulations', nargs='+', default=['chosen', 'gathered-inputs'], choices=list(FORMULATIONS))
    parser.add_argument('--precisions', nargs='+', default=['highest', 'high'], choices=('highest', 'high'),
                        help="torch's float32 matmul precision: 'highest' float32, 'high' TF32")
    parser.add_argument('--chunk-elements', nargs='+', type=int, default=[1 << 24, 1 << 26, 1 << 28])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--reps', type=int, default=3, help='timed steps per variant and round')
    parser.add_argument('--out', help='also write the markdown table here')
    parser.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    parser.add_argument('--cpu-smoke', action='store_true', help='a few queries on the CPU (checks the script)')
    args = parser.parse_args()
    device = torch.device('cpu' if args.cpu_smoke else args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('bench_cpd.py: no CUDA GPU here (--device cpu times the CPU; --cpu-smoke checks the script)')
    head = Config.fromfile(args.config).model.pts_bbox_head
    num_query = 6 if args.cpu_smoke else head.num_query
    refines = head.transformer.num_refines
    channels = head.transformer.get('num_pt_channels', 32)
    gen = torch.Generator().manual_seed(0)
    name, gt = next(iter(ground_truths(args.labels).items()))
    torch.manual_seed(0)
    modules = [Densifier(channels, head.get('pfn_channels', (64, 64))).to(device).train() for _ in refines]
    inputs = [layer_inputs(gt, num_query, p, channels, device, gen) for p in refines]

    def step():
        total = 0
        for module, (pts, feats) in zip(modules, inputs):
            logits, _ = module(feats, pts)
            total = total + logits.square().mean()
        total.backward()

    variants = [(f, p, c) for f in args.formulations for p in args.precisions for c in args.chunk_elements]
    times = {v: [] for v in variants}
    peaks = {}
    chosen = sparse_conv._apply_conv
    for _ in range(args.rounds):
        for v in variants:
            formulation, precision, sparse_conv.CHUNK_ELEMENTS = v
            forced = FORMULATIONS[formulation]
            sparse_conv._apply_conv = chosen if forced is None else (
                lambda *conv, forced=forced: sparse_conv._SparseConvFunction.apply(*conv, forced))
            with matmul_precision(precision):
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                    times[v].append(float(np.median(event_times_ms(step, warmup=1, reps=args.reps))))
                    peaks[v] = (torch.cuda.max_memory_allocated() - before) / 2 ** 30
                else:
                    times[v].append(float(np.median(wall_times_ms(step, reps=args.reps))))
    sparse_conv._apply_conv = chosen
    work = [conv_work(m, p, f) for m, (p, f) in zip(modules, inputs)]
    gpu = torch.cuda.get_device_name() if device.type == 'cuda' else f'the CPU ({torch.get_num_threads()} threads)'
    base = float(np.median(times[variants[0]]))
    lines = [f'# OPUS-V2 CPD modules, training forward + backward, on {gpu}', '',
             f'torch {torch.__version__}; `python {" ".join(sys.argv)}`; {num_query} queries x {list(refines)} points '
             f'around the {name} ground truth (free label {FREE} excluded); {args.rounds} rounds of {args.reps} '
             'steps', '',
             '| points per query | active voxels U | output sites U\' | pad entries, regular conv | forward GFLOP, '
             'gathered inputs | forward GFLOP, products per tap | largest gathered columns, GB |',
             '|---|---|---|---|---|---|---|']
    for p, w in zip(refines, work):
        lines.append(f'| {p} | {w["voxels"]} | {w["sites"]} | {w["pads"]:.1%} | {w["gathered"]:.1f} | '
                     f'{w["products"]:.1f} | {w["columns"]:.2f} |')
    lines += [f'| all | | | | {sum(w["gathered"] for w in work):.1f} | {sum(w["products"] for w in work):.1f} | |',
              '',
              '| formulation | matmul precision | CHUNK_ELEMENTS | step ms, median (min-max) | vs first | '
              'peak GiB above the inputs |',
              '|---|---|---|---|---|---|']
    for v in variants:
        med, lo, hi = float(np.median(times[v])), min(times[v]), max(times[v])
        lines.append(f'| {v[0]} | {v[1]} | 2^{int(np.log2(v[2]))} | {med:.2f} ({lo:.2f}-{hi:.2f}) | {base / med:.2f}x '
                     f'| {peaks.get(v, float("nan")):.2f} |')
    print_report(lines, args.out)


if __name__ == '__main__':
    main()
