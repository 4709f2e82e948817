"""Speed of the multi-scale multi-view sampling op (docs/method.md, "Sampling op") on one GPU.

Times, with CUDA events (warm-up, then the median of --reps runs), the forward and the
forward+backward of: the CUDA op (models/csrc, fp32 / bf16 / fp16 features, fp32 locations and
weights) and the PyTorch fallback (``models.csrc.wrapper.msmv_sampling_pytorch``, fp32), on the
benchmark shape: 4 levels of [8, 6, H, W, 32] channel-last features
(H x W = 64x176, 32x88, 16x44, 8x22), 4800 queries x 32 points. Two location distributions:

* ``uniform``: u, v, view independent and uniform for every point - no locality (worst case);
* ``clustered``: each query's 32 points around one centre in one view (sigma 3% of the image),
  as a query's projected sampling points are in the model.

Prints a markdown table (and writes it to --out): time, speed-up against the fallback measured in
the same run and against the original op's published numbers (1.17 ms / 12.0 ms, "original op,
H100, environment.md"; their location distribution is not documented), and the effective
bandwidth = compulsory DRAM bytes / time, against the card's peak DRAM bandwidth.

A second table times the exact 1-NN kernel (``knn1_cuda``) at the loss-matching size (76,800
queries against 50,000 and 100,000 points), next to ``mmcv.ops.knn`` when it is built and the
environment.md figures (mmcv.ops.knn 6.5 ms, cdist + argmin 64 ms, at 50,000 points on an H100).

Usage: python benchmarks/bench_sampling.py [--out bench_sampling.md] [--reps 30] [--warmup 10]
"""
import argparse
import importlib
import os
import statistics
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.cuda_timing import event_times_ms  # noqa: E402
from benchmarks.report import print_report  # noqa: E402

DEVICE = 'cuda'
BB, N, C, Q, P = 8, 6, 32, 4800, 32
LEVELS = [(64, 176), (32, 88), (16, 44), (8, 22)]
ORIGINAL = {'fwd': 1.17, 'fwdbwd': 12.0}          # original op, H100, environment.md
ORIGINAL_FALLBACK = {'fwd': 3.9, 'fwdbwd': 26.0}  # its grid_sample fallback, same source
KNN_QUERIES, KNN_REFS = 76_800, (50_000, 100_000)
KNN_PUBLISHED = 'mmcv.ops.knn 6.5 ms, torch.cdist + argmin 64 ms (76,800 x 50,000, H100, environment.md)'
DEFAULT_PEAK_TBS = 3.35                            # H100 SXM5 HBM3
KNOWN_PEAKS_TBS = {'H100 PCIe': 2.0, 'H100 NVL': 3.9, 'H100': 3.35, 'H200': 4.8, 'A100-SXM4-80GB': 2.04,
                   'A100-PCIE-80GB': 1.94, 'A100': 1.56}


def import_csrc(name):
    """Import a models.csrc module; when models/__init__.py cannot import (mmcv / mmdet missing on
    a bare GPU machine), stand in an empty `models` package: models.csrc needs only torch."""
    try:
        import models  # noqa: F401
    except ImportError:
        pkg = types.ModuleType('models')
        pkg.__path__ = [os.path.join(ROOT, 'models')]
        sys.modules['models'] = pkg
    return importlib.import_module(name)


def peak_bandwidth(props):
    """(bytes/s, how it was obtained): from the memory clock and bus width when the driver reports
    them, else a table of known cards, else the H100 SXM figure."""
    clock_khz = getattr(props, 'memory_clock_rate', 0) or 0
    bus_bits = getattr(props, 'memory_bus_width', 0) or 0
    if clock_khz > 0 and bus_bits > 0:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, (f'queried: 2 x {clock_khz / 1e3:.0f} MHz x '
                                                      f'{bus_bits} bit')
    for key, tbs in KNOWN_PEAKS_TBS.items():
        if key in props.name:
            return tbs * 1e12, f'datasheet value for {key}'
    return DEFAULT_PEAK_TBS * 1e12, f'assumed {DEFAULT_PEAK_TBS} TB/s (H100 SXM); card not identified'


def make_inputs(distribution, seed=0):
    """fp32 features L x [BB, N, H, W, C], locations [BB, Q, P, 3], weights [BB, Q, P, L]."""
    device = DEVICE
    g = torch.Generator(device=device).manual_seed(seed)
    feats = [torch.randn(BB, N, H, W, C, generator=g, device=device) for H, W in LEVELS]
    if distribution == 'uniform':
        uv = torch.rand(BB, Q, P, 2, generator=g, device=device)
        view = torch.randint(0, N, (BB, Q, P, 1), generator=g, device=device)
    elif distribution == 'clustered':
        centre = torch.rand(BB, Q, 1, 2, generator=g, device=device) * 0.9 + 0.05
        uv = centre + 0.03 * torch.randn(BB, Q, P, 2, generator=g, device=device)
        view = torch.randint(0, N, (BB, Q, 1, 1), generator=g, device=device).expand(BB, Q, P, 1)
    else:
        raise ValueError(f'unknown distribution {distribution!r}; use uniform or clustered')
    loc = torch.cat([uv, view.float() / (N - 1)], -1).contiguous()
    weights = torch.randn(BB, Q, P, len(LEVELS), generator=g, device=device).softmax(-1)
    return feats, loc, weights


def time_ms(fn, warmup, reps):
    """Median over reps of the GPU time of fn() (CUDA events around each call)."""
    return statistics.median(event_times_ms(fn, warmup, reps))


def compulsory_bytes(elem_size):
    """DRAM bytes any implementation must move once: (forward, forward+backward).

    Forward: read features, locations (3 x 4 B), weights (L x 4 B); write the output. Backward adds:
    read grad_out, features, locations, weights; feature gradients as fp32 accumulators (zero-fill
    write, read + write at the end: 12 B per element; a cast to 16-bit adds 4 + 2 B); write the
    location and weight gradients."""
    feat_elems = sum(BB * N * H * W * C for H, W in LEVELS)
    samples = BB * Q * P
    side = samples * (3 + len(LEVELS)) * 4
    out = samples * C * elem_size
    fwd = feat_elems * elem_size + side + out
    grad_feat = feat_elems * (12 + (6 if elem_size == 2 else 0))
    bwd = out + feat_elems * elem_size + side + grad_feat + side
    return fwd, fwd + bwd


def knn_table(warmup, reps):
    """Markdown lines timing knn1_cuda (and mmcv.ops.knn when built) on metre-scale random points."""
    knn1_cuda = import_csrc('models.csrc.msmv_cuda').knn1_cuda
    try:
        from mmcv.ops import knn as mmcv_knn
    except Exception:  # mmcv without compiled ops
        mmcv_knn = None
    g = torch.Generator(device=DEVICE).manual_seed(1)
    scale = torch.tensor([80.0, 80.0, 6.4], device=DEVICE)
    lines = ['| queries x references | knn1_cuda ms | mmcv.ops.knn ms | same indices |', '|---|---|---|---|']
    for k in KNN_REFS:
        query = torch.rand(KNN_QUERIES, 3, generator=g, device=DEVICE) * scale
        ref = torch.rand(k, 3, generator=g, device=DEVICE) * scale
        ours = time_ms(lambda: knn1_cuda(query, ref), warmup, reps)
        theirs, same = 'n/a', 'n/a'
        if mmcv_knn is not None:
            try:
                theirs = f'{time_ms(lambda: mmcv_knn(1, ref[None], query[None]), warmup, reps):.2f}'
                a = knn1_cuda(query, ref)
                b = mmcv_knn(1, ref[None], query[None])[0, 0].long()
                same = f'{(a == b).float().mean().item() * 100:.3f}%'
            except Exception as err:  # e.g. mmcv built without CUDA ops
                theirs = f'failed ({type(err).__name__})'
        lines.append(f'| {KNN_QUERIES:,} x {k:,} | {ours:.2f} | {theirs} | {same} |')
    lines += ['', f'* Published: {KNN_PUBLISHED}. knn1_cuda is exact in IEEE fp32 with lowest-index ties; '
              'mmcv uses its own rounding, so a few near-ties may pick the other neighbour.']
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', help='also write the markdown table to this file')
    parser.add_argument('--reps', type=int, default=30, help='timed runs per measurement (median)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed runs before timing')
    parser.add_argument('--distribution', choices=['uniform', 'clustered', 'both'], default='both')
    parser.add_argument('--no-knn', action='store_true', help='skip the 1-NN table')
    args = parser.parse_args()

    if not torch.cuda.is_available():
        sys.exit('bench_sampling: no CUDA GPU is visible; this benchmark times GPU kernels and must run '
                 'on a machine with an NVIDIA GPU (and the extension built: cd models/csrc && '
                 'python setup.py build_ext --inplace).')
    try:
        msmv_sampling_cuda = import_csrc('models.csrc.msmv_cuda').msmv_sampling_cuda
    except ImportError as err:
        sys.exit(f'bench_sampling: the CUDA op is not importable ({err}).')
    try:
        msmv_sampling_pytorch = import_csrc('models.csrc.wrapper').msmv_sampling_pytorch
    except (ImportError, AttributeError) as err:
        msmv_sampling_pytorch = None
        print(f'bench_sampling: PyTorch fallback not importable ({err}); its rows are skipped')

    props = torch.cuda.get_device_properties(0)
    peak, peak_note = peak_bandwidth(props)
    dists = ['uniform', 'clustered'] if args.distribution == 'both' else [args.distribution]
    impls = [('CUDA op', torch.float32), ('CUDA op', torch.bfloat16), ('CUDA op', torch.float16)]
    if msmv_sampling_pytorch is not None:
        impls.append(('PyTorch fallback', torch.float32))

    rows = []
    for dist in dists:
        feats32, loc, weights = make_inputs(dist)
        grad_out32 = torch.randn(BB, Q, C, P, device=DEVICE)
        results = {}
        reference = None
        for name, dtype in impls:
            op = msmv_sampling_cuda if name == 'CUDA op' else msmv_sampling_pytorch
            feats = [f.to(dtype) for f in feats32]
            grad_out = grad_out32.to(dtype)
            with torch.no_grad():
                out = op(feats, loc, weights)
                fwd = time_ms(lambda: op(feats, loc, weights), args.warmup, args.reps)
            if reference is None:
                reference = out.float()
            err = ((out.float() - reference).abs().max() / reference.abs().max()).item()
            del out
            feats_g = [f.detach().requires_grad_(True) for f in feats]
            loc_g = loc.detach().requires_grad_(True)
            w_g = weights.detach().requires_grad_(True)
            inputs = [loc_g, w_g] + feats_g

            def fwdbwd():
                return torch.autograd.grad(op(feats_g, loc_g, w_g), inputs, grad_out)

            both = time_ms(fwdbwd, args.warmup, args.reps)
            results[(name, dtype)] = (fwd, both, err)
            torch.cuda.empty_cache()
        fb = results.get(('PyTorch fallback', torch.float32))
        for (name, dtype), (fwd, both, err) in results.items():
            nbytes = compulsory_bytes(torch.finfo(dtype).bits // 8)
            ratio = lambda a, b: f'{a / b:.2f}x'  # noqa: E731
            rows.append([dist, f'{name} {str(dtype).replace("torch.", "")}', f'{fwd:.3f}', f'{both:.3f}',
                         ratio(fb[0], fwd) if fb else 'n/a', ratio(fb[1], both) if fb else 'n/a',
                         ratio(ORIGINAL['fwd'], fwd), ratio(ORIGINAL['fwdbwd'], both),
                         f'{nbytes[0] / fwd / 1e6:.0f} ({100 * nbytes[0] / fwd / 1e-3 / peak:.0f}%)',
                         f'{nbytes[1] / both / 1e6:.0f} ({100 * nbytes[1] / both / 1e-3 / peak:.0f}%)',
                         f'{err:.1e}'])

    header = ['locations', 'implementation', 'fwd ms', 'fwd+bwd ms', 'fwd speed-up vs fallback',
              'fwd+bwd speed-up vs fallback', 'fwd speed-up vs original op', 'fwd+bwd speed-up vs original op',
              'fwd GB/s (% peak)', 'fwd+bwd GB/s (% peak)', 'fwd rel. diff vs CUDA fp32']
    lines = [f'# msmv_sampling benchmark on {props.name}', '',
             f'torch {torch.__version__}, CUDA {torch.version.cuda}; features 4 levels of [{BB}, {N}, H, W, {C}] '
             f'(H x W = {", ".join(f"{h}x{w}" for h, w in LEVELS)}), {Q} queries x {P} points; median of '
             f'{args.reps} runs after {args.warmup} warm-up runs, CUDA events.', '',
             '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    lines += ['', f'* "original op" = SparseBEV/OPS `msmv_sampling`, fp32, H100: forward {ORIGINAL["fwd"]} ms, '
              f'forward+backward {ORIGINAL["fwdbwd"]} ms (original op, H100, environment.md; location '
              f'distribution not documented). Its fallback measured there: {ORIGINAL_FALLBACK["fwd"]} / '
              f'{ORIGINAL_FALLBACK["fwdbwd"]} ms.',
              f'* Bandwidth = compulsory DRAM bytes (every input read once, every output written once, '
              f'fp32 gradient accumulators for the features) / time; peak {peak / 1e12:.2f} TB/s ({peak_note}). '
              'The gathers re-read features from L2 many times, so this is a lower bound of the traffic.',
              '* Speed-up = reference time / this time (higher is better). bf16/fp16 rows: 16-bit features and '
              'output, fp32 locations, weights and accumulation.']
    if not args.no_knn:
        lines += ['', '## knn1_cuda (exact 1-NN for the loss matching)', ''] + knn_table(args.warmup, args.reps)
    print_report(lines, args.out)


if __name__ == '__main__':
    main()
