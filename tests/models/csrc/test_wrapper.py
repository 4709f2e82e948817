"""The PyTorch sampling op and sampling_4d against direct float64 computations (spec 3.5, 5.1)."""
import math

import numpy as np
import pytest
import torch

from models.csrc.wrapper import msmv_sampling, msmv_sampling_pytorch
from models.ops_sampling import level_weight_group, sampling_4d

from camera_rig import pinhole_rig


# ----------------------------------------------------------------------------- references
def bilinear_ref(img, h, w):
    """img [H, W, C] float64; align_corners=True pixel coords (h, w); zero outside."""
    H, W, C = img.shape
    if not (-1 < h < H and -1 < w < W):
        return np.zeros(C)
    h0, w0 = math.floor(h), math.floor(w)
    acc = np.zeros(C)
    for hh in (h0, h0 + 1):
        for ww in (w0, w0 + 1):
            if 0 <= hh < H and 0 <= ww < W:
                acc += (1 - abs(h - hh)) * (1 - abs(w - ww)) * img[hh, ww]
    return acc


def msmv_ref(feats, loc, weights):
    """Direct float64 evaluation of spec 5.1: feats L x [BB, N, H, W, C], loc [BB, Q, P, 3], weights [BB, Q, P, L]."""
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


# ----------------------------------------------------------------------------- the op
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_fallback_matches_float64_reference(dtype, tol):
    for seed in range(3):
        feats, loc, weights = random_case(seed, dtype=dtype)
        out = msmv_sampling_pytorch(feats, loc, weights)
        assert out.shape == (2, 5, 3, 4) and out.dtype == dtype
        ref = msmv_ref(feats, loc, weights)
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=tol, atol=tol)


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
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=1e-6)
        assert out.max() <= 1.0


def test_gradcheck_fallback():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 3, H, W, 2, generator=g, dtype=torch.float64, requires_grad=True)
             for H, W in ((4, 5), (3, 3))]
    uv = torch.rand(1, 3, 2, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1
    view = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 1)
    loc = torch.cat([uv, view], -1).requires_grad_(True)
    weights = torch.rand(1, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f0, f1, l, w: msmv_sampling_pytorch([f0, f1], l, w),
                                    (feats[0], feats[1], loc, weights), eps=1e-6, atol=1e-7)
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


# ----------------------------------------------------------------------------- sampling_4d
def make_rig(T, N, H, W, focal, yaws_deg, step=0.7):
    """occ2img [T*N, 4, 4] float64 of pinhole cameras at (-step*t, 0, 1.5) looking at yaw angles."""
    return pinhole_rig(range(T), yaws_deg[:N], H, W, focal, step)


def sampling_4d_ref(points, feats_cf, weights, occ2img, H, W, N, G):
    """Independent float64 evaluation of spec 3.5 from the un-rearranged FPN layout.

    points [B, Q, T, G, P, 3] metres; feats_cf L x [B, T*N, G*Cg, H_l, W_l]; weights [B, Q, G, T, P, L].
    """
    points, weights, occ2img = points.double().numpy(), weights.double().numpy(), occ2img.double().numpy()
    feats_cf = [f.double().numpy() for f in feats_cf]
    B, Q, T, _, P, _ = points.shape
    Cg = feats_cf[0].shape[2] // G
    out = np.zeros((B, Q, G, T * P, Cg))
    for b in range(B):
        for q in range(Q):
            for t in range(T):
                for g in range(G):
                    g_w = (t * G + g) // T     # spec 3.5 step 6, the batch-order quirk
                    for p in range(P):
                        x = np.append(points[b, q, t, g, p], 1.0)
                        chosen, uv = 0, None
                        cands = []
                        for n in range(N):
                            r = occ2img[b, t * N + n] @ x
                            d = max(r[2], 1e-5)
                            u, v = r[0] / d / W, r[1] / d / H
                            cands.append((u, v))
                            if r[2] > 1e-5 and 0 < u < 1 and 0 < v < 1:
                                chosen = n
                                break
                        u, v = cands[chosen]
                        acc = np.zeros(Cg)
                        for lvl, f in enumerate(feats_cf):
                            img = f[b, t * N + chosen, g * Cg:(g + 1) * Cg].transpose(1, 2, 0)   # [H_l, W_l, Cg]
                            Hl, Wl = img.shape[:2]
                            acc += weights[b, q, g_w, t, p, lvl] * bilinear_ref(img, v * (Hl - 1), u * (Wl - 1))
                        out[b, q, g, t * P + p] = acc
    return out


def to_channel_last(feat, T, N, G):
    """[B, T*N, C, H, W] -> [B*T*G, N, H, W, C/G] (batch (b*T + t)*G + g)."""
    B, TN, C, H, W = feat.shape
    return feat.reshape(B, T, N, G, C // G, H, W).permute(0, 1, 3, 2, 5, 6, 4).reshape(B * T * G, N, H, W, C // G)


def test_sampling_4d_matches_reference():
    B, Q, T, G, P, N, H, W = 2, 6, 2, 2, 3, 3, 32, 48
    g = torch.Generator().manual_seed(3)
    occ2img = torch.from_numpy(np.stack([make_rig(T, N, H, W, 20.0, [0, 70, -70], step=0.5 + 0.3 * b)
                                         for b in range(B)])).float()
    # points around the car at 2..12 m, all directions and heights, some behind every camera
    ang = torch.rand(B, Q, 1, G, P, generator=g) * 2 * math.pi
    rad = torch.rand(B, Q, 1, G, P, generator=g) * 10 + 2
    z = torch.rand(B, Q, 1, G, P, generator=g) * 4 - 1
    pts = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang), z], -1).expand(B, Q, T, G, P, 3)
    feats_cf = [torch.randn(B, T * N, G * 2, h, w, generator=g) for h, w in ((8, 12), (4, 6))]
    weights = torch.rand(B, Q, G, 1, P, 2, generator=g).softmax(-1).expand(B, Q, G, T, P, 2)
    out = sampling_4d(pts, [to_channel_last(f, T, N, G) for f in feats_cf], weights, occ2img, H, W, num_views=N)
    assert out.shape == (B, Q, G, T * P, 2)
    ref = sampling_4d_ref(pts, feats_cf, weights, occ2img, H, W, N, G)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_level_weight_batch_order_quirk():
    """Constant levels (value 10**l) and one-hot level weights per group expose which group's weights
    each (t, g) slot uses: floor((t*G + g) / T)."""
    assert [[level_weight_group(t, g, 2, 4) for g in range(4)] for t in range(2)] == [[0, 0, 1, 1], [2, 2, 3, 3]]
    assert [level_weight_group(t, g, 8, 4) for t in range(8) for g in range(4)] == \
        [t // 2 for t in range(8) for _ in range(4)]
    for T, expected in ((2, [[0, 0, 1, 1], [2, 2, 3, 3]]), (8, [[t // 2] * 4 for t in range(8)])):
        G, N, H, W, L, P = 4, 1, 16, 16, 4, 1
        occ2img = torch.from_numpy(make_rig(T, N, H, W, 8.0, [0], step=0.0)).float()[None]
        pts = torch.tensor([6.0, 0.3, 1.2]).view(1, 1, 1, 1, 1, 3).expand(1, 1, T, G, P, 3)
        feats = [torch.full((T * G, N, 4, 4, 2), 10.0 ** lvl) for lvl in range(L)]
        weights = torch.zeros(1, 1, G, 1, P, L)
        for grp in range(G):
            weights[0, 0, grp, 0, 0, grp] = 1.0       # group g's network output selects level g
        out = sampling_4d(pts, feats, weights.expand(1, 1, G, T, P, L), occ2img, H, W, num_views=N)
        got = out[0, 0, :, :, 0].log10().round().t()  # [T, G] level actually used
        assert got.tolist() == [[float(x) for x in row] for row in expected]


def test_view_choice_first_visible_camera_and_camera0_fallback():
    """Views hold the constant n+1; wide cameras at yaw 0 and 90 deg overlap around 45 deg."""
    T, N, G, H, W = 1, 2, 1, 20, 40
    occ2img = torch.from_numpy(make_rig(T, N, H, W, 10.0, [0, 90])).float()[None]   # half FOV ~63 deg
    feats = [torch.arange(1.0, N + 1).view(1, N, 1, 1, 1).expand(1, N, 5, 9, 1).contiguous()]
    directions = {45: 1.0, 80: 2.0, 10: 1.0, 180: 0.0}   # yaw -> expected value (0: invisible -> camera 0)
    pts = torch.tensor([[8 * math.cos(math.radians(a)), 8 * math.sin(math.radians(a)), 1.5] for a in directions])
    pts = pts.view(1, len(directions), 1, 1, 1, 3)
    weights = torch.ones(1, len(directions), G, T, 1, 1)
    out = sampling_4d(pts, feats, weights, occ2img, H, W, num_views=N)
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx(list(directions.values()), abs=1e-6)


def test_gradcheck_sampling_4d():
    T, N, G, P, H, W = 1, 2, 2, 2, 20, 40
    occ2img = torch.from_numpy(make_rig(T, N, H, W, 10.0, [0, 90])).double()[None]
    g = torch.Generator().manual_seed(5)
    # points well inside camera 0 or camera 1 only (no view switch under the finite differences)
    ang = torch.tensor([[0.2, -0.3], [1.45, 1.7]], dtype=torch.float64).view(1, 1, 1, G, P)
    pts = torch.stack([6 * torch.cos(ang), 6 * torch.sin(ang), torch.full_like(ang, 1.3)], -1).requires_grad_(True)
    # feature gradients are checked on the op itself above; here: points (projection) and level weights
    feats = [torch.randn(T * G, N, h, w, 2, generator=g, dtype=torch.float64) for h, w in ((6, 10), (3, 5))]
    weights = torch.rand(1, 1, G, T, P, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p, w: sampling_4d(p, feats, w, occ2img, H, W, num_views=N), (pts, weights), eps=1e-6, atol=1e-6)
