"""models/csrc/wrapper.py: the PyTorch fallback of the sampling op against a direct float64 computation
(docs/method.md, "Sampling op"), the dispatch on the CPU, input checks."""
import math

import numpy as np
import pytest
import torch

from models.csrc.wrapper import msmv_sampling, msmv_sampling_pytorch
from sampling_reference import bilinear_ref


# ----------------------------------------------------------------------------- references
def msmv_ref(feats, loc, weights):
    """Direct float64 evaluation of the op: feats L x [BB, N, H, W, C], loc [BB, Q, P, 3], weights [BB, Q, P, L]."""
    feats = [f.detach().double().numpy() for f in feats]
    loc, weights = loc.detach().double().numpy(), weights.detach().double().numpy()
    BB, Q, P, _ = loc.shape
    N, C = feats[0].shape[1], feats[0].shape[-1]
    out = np.zeros((BB, Q, C, P))
    for bb in range(BB):
        for q in range(Q):
            for p in range(P):
                u, v, vn = loc[bb, q, p]
                view = int(math.floor(vn * (N - 1) + 0.5))
                for lvl, f in enumerate(feats):
                    H, W = f.shape[2:4]
                    out[bb, q, :, p] += weights[bb, q, p, lvl] * bilinear_ref(f[bb, view], v * (H - 1), u * (W - 1))
    return out


def random_case(seed, BB=2, N=6, C=3, Q=5, P=4, sizes=((7, 9), (4, 5), (2, 3), (1, 1)), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(BB, N, H, W, C, generator=g, dtype=dtype) for H, W in sizes]
    uv = torch.rand(BB, Q, P, 2, generator=g, dtype=dtype) * 1.4 - 0.2          # some outside [0, 1]
    uv[0, 0, 0] = torch.tensor([0.0, 0.0])                                       # exact corners / borders
    uv[0, 0, 1] = torch.tensor([1.0, 1.0])
    uv[0, 1, 0] = torch.tensor([1.0, 0.5])
    view = torch.randint(0, N, (BB, Q, P, 1), generator=g).to(dtype) / (N - 1)   # k / (N-1) in `dtype`
    loc = torch.cat([uv, view], -1)
    weights = torch.rand(BB, Q, P, len(sizes), generator=g, dtype=dtype)
    return feats, loc, weights


def rounding_bound(feats, eps, max_side_sum):
    """Largest rounding error of the fallback against msmv_ref (same u, v, weights; weights <= 1), per output:
    2u - 1 and grid_sample's (x + 1) (W_l - 1) / 2 move a pixel coordinate by <= 2 eps (W_l - 1) (and the same
    for h), and bilinear sampling changes by at most the largest step between neighbouring texels (<= 2 max |f|
    with the zero padding) per pixel; the corner weights, products and sums add ~10 roundings of max |f|.
    Summed over the L levels: L * (2 * max_side_sum * 2 max |f| + 10 max |f|) * eps, max_side_sum the largest
    (W_l - 1) + (H_l - 1)."""
    fmax = max(f.abs().max().item() for f in feats)
    return len(feats) * (2 * max_side_sum * 2 * fmax + 10 * fmax) * eps


# ----------------------------------------------------------------------------- the op
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fallback_matches_float64_reference(dtype):
    for seed in range(3):
        feats, loc, weights = random_case(seed, dtype=dtype)
        out = msmv_sampling_pytorch(feats, loc, weights)
        assert out.shape == (2, 5, 3, 4) and out.dtype == dtype
        ref = msmv_ref(feats, loc, weights)
        tol = rounding_bound(feats, torch.finfo(dtype).eps, (9 - 1) + (7 - 1))
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=tol)


def test_dispatch_uses_fallback_on_cpu():
    feats, loc, weights = random_case(7)
    assert torch.equal(msmv_sampling(feats, loc, weights), msmv_sampling_pytorch(feats, loc, weights))


@pytest.mark.parametrize('N', [2, 3, 6, 7, 11])
def test_reads_exactly_one_view(N):
    """Neighbouring views hold 1e6: any trilinear leak from float rounding of the view coordinate
    (a plain grid_sample on N=6 float32 views mixes 6e-8 of view 0 into view 1) would show."""
    g = torch.Generator().manual_seed(N)
    BB, H, W, C, Q, P = 1, 5, 6, 2, N, 3
    base = torch.rand(BB, N, H, W, C, generator=g)
    for k in range(N):
        feats = torch.full((BB, N, H, W, C), 1e6)
        feats[:, k] = base[:, k]
        uv = torch.rand(BB, Q, P, 2, generator=g) * 0.8 + 0.1
        loc = torch.cat([uv, torch.full((BB, Q, P, 1), float(k)) / (N - 1)], -1)
        w = torch.ones(BB, Q, P, 1)
        out = msmv_sampling_pytorch([feats], loc, w)
        ref = msmv_ref([feats], loc, w)
        # rounding of the one view read (values < 1, steps < 1 inside the map): (2 * ((W - 1) + (H - 1)) + 10) eps
        # = 28 eps ≈ 3.3e-6; a share of a neighbouring view (1e6) would show as 1e6 * 2^-24 ≈ 0.06 or more
        atol = (2 * ((W - 1) + (H - 1)) + 10) * torch.finfo(torch.float32).eps
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=atol)
        # interpolating values in [0, 1) gives < 1 (up to ~9 roundings of 2^-24); a leak of 1e6 would not
        assert out.max() <= 1.0


def test_gradcheck_fallback():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 3, H, W, 2, generator=g, dtype=torch.float64, requires_grad=True)
             for H, W in ((4, 5), (3, 3))]
    uv = torch.rand(1, 3, 2, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1
    view = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 1)
    loc = torch.cat([uv, view], -1).requires_grad_(True)
    weights = torch.rand(1, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    # central differences in float64: the op is linear in the features and weights and, inside a texel cell,
    # in each of u and v (no truncation error); an output (|f| <= ~3, ~15 roundings) is within ~5e-15 of exact,
    # over 2h = 2e-6 that is 2.5e-9: atol 1e-7, no relative part
    assert torch.autograd.gradcheck(lambda f0, f1, l, w: msmv_sampling_pytorch([f0, f1], l, w),
                                    (feats[0], feats[1], loc, weights), eps=1e-6, atol=1e-7, rtol=0)
    # the view coordinate gets exactly zero gradient, like the CUDA op
    msmv_sampling_pytorch(feats, loc, weights).sum().backward()
    assert torch.all(loc.grad[..., 2] == 0) and loc.grad[..., :2].abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    feats, loc, weights = random_case(1)
    with pytest.raises(ValueError, match='channel-last'):
        msmv_sampling_pytorch([feats[0].permute(0, 4, 1, 2, 3)[..., 0]], loc, weights[..., :1])
    with pytest.raises(ValueError, match=r'scale_weights must be \[BB, Q, P, L\]'):
        msmv_sampling_pytorch(feats, loc, weights[..., :2])
    with pytest.raises(ValueError, match='view coordinate outside'):
        bad = loc.clone()
        bad[0, 0, 0, 2] = 1.5
        msmv_sampling_pytorch(feats, bad, weights)
