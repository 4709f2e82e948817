"""models/ops_sampling.py: sampling_4d against an independent float64 computation, the level-weight batch-order
quirk, the view choice, gradients (docs/method.md, "Projection and view choice")."""
import math

import numpy as np
import pytest
import torch

from camera_rig import pinhole_rig
from models.ops_sampling import level_weight_group, sampling_4d
from sampling_reference import bilinear_ref

EPS32 = float(np.finfo(np.float32).eps)   # 2^-23: one float32 rounding moves a value by <= half of it


def make_rig(T, N, H, W, focal, yaws_deg, step=0.7):
    """occ2img [T*N, 4, 4] float64 of pinhole cameras at (-step*t, 0, 1.5) looking at yaw angles."""
    return pinhole_rig(range(T), yaws_deg[:N], H, W, focal, step)


def sampling_4d_ref(points, feats_cf, weights, occ2img, H, W, N, G):
    """Independent float64 evaluation of sampling_4d (docs/method.md, "Projection and view choice") from the
    un-rearranged FPN layout.

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
                    g_w = (t * G + g) // T     # the level-weight batch-order quirk
                    for p in range(P):
                        x = np.append(points[b, q, t, g, p], 1.0)
                        chosen = 0
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
    # float32 projection: u, v of in-image points are within (2 cond + 1) eps of exact, cond = (sum of |terms|) /
    # (|d| W) + ... <= 2.1 for this rig (float64); 2u - 1 and grid_sample's (x + 1) (W_l - 1) / 2 add ~2 eps, so
    # the pixel coordinates move by <= 7.2 eps * ((W_l - 1) + (H_l - 1)) <= 7.2 * 18 eps; times the largest step
    # between neighbouring texels, plus ~10 roundings of the bilinear and level sums (of features <= max |f|).
    # (No in-image point lies within 4e-4 of an image border, far beyond that: the views agree.)
    slope = max(max(f.diff(dim=-1).abs().max().item(), f.diff(dim=-2).abs().max().item()) for f in feats_cf)
    fmax = max(f.abs().max().item() for f in feats_cf)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=(7.2 * 18 * slope + 10 * fmax) * EPS32)


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
    # a constant map c returns c times the sum of its corner weights, which float32 rounds to within ~9 * 2^-24
    # of 1 (the 1 - fraction terms, four products, three sums): <= 9 * 2^-24 * 2 < 10 eps
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx(list(directions.values()), abs=10 * EPS32)


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
    # central differences in float64: an output (|f| <= ~3) is ~15 roundings from exact (projection, divisions,
    # bilinear and level sums): 15 * 2^-53 * 3 ≈ 5e-15 over 2h = 2e-6, 2.5e-9; the weights enter linearly and
    # truncation, h^2 / 6 times a third derivative, is ~1e-13 of it (points metres from the cameras): atol 1e-8
    assert torch.autograd.gradcheck(
        lambda p, w: sampling_4d(p, feats, w, occ2img, H, W, num_views=N), (pts, weights), eps=1e-6, atol=1e-8,
        rtol=0)
