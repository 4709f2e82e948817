"""The decoder's distance-biased self-attention, three ways, on one GPU (OPS-T: Q=600, OPS-L: Q=4800).

    python benchmarks/bench_self_attention.py [--queries 600 4800] [--out attn.md]

Attention logits q.k / sqrt(d) - tau[b, h, q] * ||c_q - c_k|| (centroids in metres), 8 heads of 32
channels, then softmax, values, output projection and the residual (models/ops_transformer.py,
OPSSelfAttention). Implementations:
* mask: the original's, a float mask `[B*H, Q, Q]` materialised and handed to nn.MultiheadAttention,
  which also returns the head-averaged weights (mmcv's call);
* mask-no-weights: the same without returning the weights (PyTorch then uses its fused kernel);
* sdpa-mask: the same mask through F.scaled_dot_product_attention (fused kernel, mask still in memory);
* flex: torch.nn.attention.flex_attention with the bias computed inside the kernel from the centroids
  and tau (no Q x Q tensor in memory), compiled by torch.compile.
Each in float32 and bfloat16, forward (eval) and forward + backward; the error is the largest absolute
difference of the output from a float64 evaluation of the same formula.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cuda_timing import median_min_max  # noqa: E402


def make_inputs(Q, device, B=1, C=256, H=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, Q, C, generator=g)
    centres = torch.rand(B, Q, 3, generator=g) * torch.tensor([80.0, 80.0, 6.4]) - torch.tensor([40.0, 40.0, 1.0])
    tau = torch.rand(B, H, Q, generator=g) * 2
    return x.to(device), centres.to(device), tau.to(device)


def make_attention(C=256, H=8, seed=1):
    torch.manual_seed(seed)
    return torch.nn.MultiheadAttention(C, H, batch_first=True, dropout=0.0)


def attn_mask(centres, tau):
    dist = (centres[:, :, None] - centres[:, None]).norm(dim=-1)              # [B, Q, Q]
    return -tau[..., None] * dist[:, None]                                    # [B, H, Q, Q]


def run_mask(mha, x, centres, tau):
    B, H, Q = tau.shape
    out = mha(x, x, x, attn_mask=attn_mask(centres, tau).flatten(0, 1).to(x.dtype))[0]   # need_weights: mmcv's call
    return x + out


def run_mask_no_weights(mha, x, centres, tau):
    out = mha(x, x, x, attn_mask=attn_mask(centres, tau).flatten(0, 1).to(x.dtype), need_weights=False)[0]
    return x + out


def project(mha, x):
    B, Q, C = x.shape
    H = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(B, Q, 3, H, C // H).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]                                             # [B, H, Q, d] each


def finish(mha, x, out):
    B, H, Q, d = out.shape
    return x + F.linear(out.transpose(1, 2).reshape(B, Q, H * d), mha.out_proj.weight, mha.out_proj.bias)


def run_sdpa_mask(mha, x, centres, tau):
    q, k, v = project(mha, x)
    mask = attn_mask(centres, tau).to(q.dtype)
    return finish(mha, x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


_flex = None


def run_flex(mha, x, centres, tau):
    global _flex
    from torch.nn.attention.flex_attention import flex_attention
    if _flex is None:
        _flex = torch.compile(flex_attention, dynamic=False)
    q, k, v = project(mha, x)
    cx, cy, cz = (c.contiguous() for c in centres.float().unbind(-1))
    tau = tau.float()

    def bias(score, b, h, qi, ki):
        dx, dy, dz = cx[b, qi] - cx[b, ki], cy[b, qi] - cy[b, ki], cz[b, qi] - cz[b, ki]
        return score - tau[b, h, qi] * torch.sqrt(dx * dx + dy * dy + dz * dz)
    return finish(mha, x, _flex(q, k, v, score_mod=bias))


IMPLS = {'mask': run_mask, 'mask-no-weights': run_mask_no_weights, 'sdpa-mask': run_sdpa_mask, 'flex': run_flex}


def timed(fn, reps=30):
    return median_min_max(fn, warmup=3, reps=reps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--queries', nargs='+', type=int, default=[600, 4800])
    parser.add_argument('--out')
    args = parser.parse_args()
    device = torch.device('cuda')
    lines = [f'# Distance-biased self-attention on {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}; command: `python {" ".join(sys.argv)}`', '',
             '| Q | impl | dtype | forward ms (min-max) | fwd+bwd ms (min-max) | max abs err vs float64 |',
             '|---|---|---|---|---|---|']
    for Q in args.queries:
        x, centres, tau = make_inputs(Q, device)
        mha = make_attention().to(device).eval()
        ref = run_mask(mha.double(), x.double(), centres.double(), tau.double())
        for name, impl in IMPLS.items():
            for dtype in (torch.float32, torch.bfloat16):
                m = make_attention().to(device, dtype).eval()
                xd = x.to(dtype)
                try:
                    with torch.no_grad():
                        err = (impl(m, xd, centres, tau.to(dtype)).double() - ref).abs().max().item()
                        fwd = timed(lambda: impl(m, xd, centres, tau.to(dtype)))
                    xg, tg = xd.clone().requires_grad_(True), tau.to(dtype).requires_grad_(True)
                    m.train()   # dropout 0: the same function, autograd's training paths
                    bwd = timed(lambda: impl(m, xg, centres, tg).sum().backward())
                except Exception as exc:   # an implementation this torch/GPU lacks: say so, go on
                    lines.append(f'| {Q} | {name} | {dtype} | failed: {type(exc).__name__}: {str(exc)[:80]} | | |')
                    continue
                lines.append(f'| {Q} | {name} | {str(dtype)[6:]} | {fwd[0]:.3f} ({fwd[1]:.3f}-{fwd[2]:.3f}) | '
                             f'{bwd[0]:.3f} ({bwd[1]:.3f}-{bwd[2]:.3f}) | {err:.2e} |')
        print('\n'.join(lines), flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
