"""Backbone + FPN of the OPS configs on the 6 key-frame images (704x256), memory layouts and dtypes.

    python benchmarks/bench_backbone.py [--config configs/ops-t_r50_704x256_8f_12e.py] [--images 6 48]

Forward (eval, no grad) and forward + backward (train mode, the config's frozen stages and norm_eval)
of the config's ResNet + FPN, in float32 (TF32 convolutions, PyTorch's default) and under bf16 / fp16
autocast, with NCHW (contiguous) and NHWC (channels_last) tensors. Times are CUDA-event medians over
10 repetitions with min-max; the error column is the largest absolute difference of the FPN outputs
from the float32 NCHW ones, relative to their largest magnitude.
"""
import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cuda_timing import median_min_max  # noqa: E402


def timed(fn, reps=10):
    return median_min_max(fn, warmup=3, reps=reps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--images', nargs='+', type=int, default=[6])
    parser.add_argument('--out')
    args = parser.parse_args()
    from mmdet.models import build_backbone, build_neck

    from engine.config import load_config
    torch.backends.cudnn.benchmark = True
    cfg = load_config(args.config)
    device = torch.device('cuda')
    lines = [f'# Backbone + FPN on {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; command: `python {" ".join(sys.argv)}`',
             '', '| images | dtype | layout | forward ms (min-max) | fwd+bwd ms (min-max) | rel. err vs fp32 NCHW |',
             '|---|---|---|---|---|---|']
    for n in args.images:
        torch.manual_seed(0)
        backbone_cfg = copy.deepcopy(cfg.model.img_backbone)
        backbone_cfg['with_cp'] = False
        backbone, neck = build_backbone(backbone_cfg).to(device), build_neck(cfg.model.img_neck).to(device)
        net = torch.nn.Sequential(backbone, neck)
        x = torch.randn(n, 3, 256, 704, device=device)
        with torch.no_grad():
            ref = [f.float() for f in neck(backbone(x.contiguous()))]
        for dtype in (None, torch.bfloat16, torch.float16):
            for layout in ('NCHW', 'NHWC'):
                fmt = torch.channels_last if layout == 'NHWC' else torch.contiguous_format
                net.to(memory_format=fmt)
                xi = x.contiguous(memory_format=fmt)

                def fwd():
                    with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
                        return net[1](net[0](xi))
                net.eval()
                with torch.no_grad():
                    out = fwd()
                    err = max(float((o.float() - r).abs().max() / r.abs().max()) for o, r in zip(out, ref))
                    f = timed(fwd)
                net.train()

                def fwd_bwd():
                    sum(o.float().mean() for o in fwd()).backward()
                b = timed(fwd_bwd)
                name = 'float32' if dtype is None else str(dtype)[6:]
                lines.append(f'| {n} | {name} | {layout} | {f[0]:.2f} ({f[1]:.2f}-{f[2]:.2f}) | '
                             f'{b[0]:.2f} ({b[1]:.2f}-{b[2]:.2f}) | {err:.1e} |')
        net.to(memory_format=torch.contiguous_format)
        print('\n'.join(lines), flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
