"""models/opus_fusion_head.py and models/opus_fusion_sampling.py: the Fusion head's initial points and the BEV read.

* `furthest_point_sample` equals a scalar numpy loop written as one thread of mmdet3d's CUDA kernel (float32
  distances, strict `>`), and a hand-computed case with ties and exhaustion.
* `initial_points('curr')` samples the key sweep's points only and encodes them; errors name the sample.
* `sample_bev_features` equals an independent float64 bilinear interpolation (align_corners=True, zero padding)
  of the grouped map, through a non-identity occ2points.
* The loss dict of the LiDAR-initialised head has no initial-points term; with init_pos_lidar=None it is V1's.
"""
import numpy as np
import pytest
import torch

from models.opus_fusion_head import OPUSV1FusionHead, furthest_point_sample
from models.opus_fusion_sampling import sample_bev_features
from tiny_detector import PC_RANGE, gt
from tiny_fusion import fusion_cfg, random_points

U32 = 2.0 ** -24   # float32 unit roundoff


def kernel_loop(xyz, num_samples):
    """mmdet3d's furthest_point_sampling_kernel run by a single thread, in numpy float32 scalars."""
    xyz = np.asarray(xyz, dtype=np.float32)
    temp = np.full(len(xyz), 1e10, dtype=np.float32)
    idx = [0]
    old = 0
    for _ in range(1, num_samples):
        best, besti = np.float32(-1), 0
        x1, y1, z1 = xyz[old]
        for k in range(len(xyz)):
            x2, y2, z2 = xyz[k]
            d = (x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1)
            d2 = min(d, temp[k])
            temp[k] = d2
            if d2 > best:
                best, besti = d2, k
        old = besti
        idx.append(old)
    return idx


def test_fps_equals_the_kernel_loop():
    rng = np.random.default_rng(0)
    xyz = (rng.random((300, 3)) * [80, 80, 6.4] - [40, 40, 1]).astype(np.float32)
    xyz[200:260] = xyz[:60]                                   # coincident points (padded copies of a sweep)
    xyz[260:] = np.round(xyz[260:])                           # integer coordinates: exact distance ties
    got = furthest_point_sample(torch.from_numpy(xyz), 64)
    assert got.dtype == torch.long and got.tolist() == kernel_loop(xyz, 64)
    assert len(set(got.tolist())) == 64                       # 64 distinct points exist: no repeats


def test_fps_ties_and_exhaustion_by_hand():
    # from the origin: distances 1, 1, 9, 9 -> the first maximum, index 3; then 4 (36 > 9 is capped at 9, still
    # the largest); then 1 and 2 tie at 1 -> 1, then 2; then every distance is 0 and index 0 repeats
    xyz = torch.tensor([[0., 0., 0.], [1., 0., 0.], [-1., 0., 0.], [0., 3., 0.], [0., -3., 0.]])
    assert furthest_point_sample(xyz, 7).tolist() == [0, 3, 4, 1, 2, 0, 0]
    assert furthest_point_sample(xyz[:1], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r'needs points \[N >= 1, 3\], got \(0, 3\)'):
        furthest_point_sample(xyz[:0], 3)


def build_head(**kw):
    cfg = fusion_cfg(**kw)['pts_bbox_head']
    torch.manual_seed(0)
    head = OPUSV1FusionHead(**{k: v for k, v in cfg.items() if k != 'type'})
    head.init_weights()
    return head


def test_initial_points_of_the_key_sweep():
    head = build_head()
    assert not hasattr(head, 'init_points') and 'init_points.weight' not in head.state_dict()
    points = [random_points(1, n=400, current=0.25), random_points(2, n=400, current=0.75)]
    init = head.initial_points(points)
    assert init.shape == (2, head.num_query, 1, 3)
    for b, pts in enumerate(points):
        key = pts[pts[:, 4] == 0, :3].numpy()
        chosen = key[kernel_loop(key, head.num_query)]
        # the same two float32 operations as the encoding, (p - min) / (max - min): bitwise equal
        lo, size = np.float32(PC_RANGE[:3]), np.float32(PC_RANGE[3:]) - np.float32(PC_RANGE[:3])
        np.testing.assert_array_equal(init[b, :, 0].numpy(), (chosen - lo) / size)
    assert init.min() >= 0 and init.max() <= 1
    # 'all' samples every sweep's points: other indices
    assert not torch.equal(build_head(init_pos_lidar='all').initial_points(points), init)
    no_key = random_points(3, n=50, current=0.0)
    with pytest.raises(ValueError, match='sample 1 has no LiDAR points of the key sweep'):
        head.initial_points([points[0], no_key])
    assert build_head(init_pos_lidar=None).initial_points(points) is None
    with pytest.raises(ValueError, match="init_pos_lidar must be one of \\[None, 'all', 'curr'\\], got 'first'"):
        build_head(init_pos_lidar='first')


def bilinear_reference(bev, points, occ2points, pc_range):
    """float64 bilinear reads of `bev` `[B, C, H, W]` (rows y, columns x; column j at x_min + j * extent / (W - 1))
    at `points` `[B, Q, G, P, 3]` moved by `occ2points`; group g reads channels g*C_g..; outside cells read 0."""
    bev, points, m = bev.double().numpy(), points.double().numpy(), occ2points.double().numpy()
    B, C, H, W = bev.shape
    _, Q, G, P, _ = points.shape
    Cg = C // G
    out = np.zeros((B, Q, G, P, Cg))
    for b, q, g, p in np.ndindex(B, Q, G, P):
        x, y, _ = m[b, :3, :3] @ points[b, q, g, p] + m[b, :3, 3]
        px = (x - pc_range[0]) / (pc_range[3] - pc_range[0]) * (W - 1)
        py = (y - pc_range[1]) / (pc_range[4] - pc_range[1]) * (H - 1)
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            if 0 <= xi < W and 0 <= yi < H:
                weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
                out[b, q, g, p] += weight * bev[b, g * Cg:(g + 1) * Cg, yi, xi]
    return out


def test_bev_read_equals_a_float64_bilinear_interpolation():
    head = build_head()
    gen = torch.Generator().manual_seed(0)
    B, G, Q, P, C, H, W = 2, 4, 5, 3, 8, 6, 9
    bev = torch.randn(B, C, H, W, generator=gen)
    # up to 1.2x the range: some reads partly or wholly outside the map
    points = (torch.rand(B, Q, G, P, 3, generator=gen) * 2 - 1) * torch.tensor([48., 48., 3.]) + \
        torch.tensor([0., 0., 2.2])
    angle = 0.3
    occ2points = torch.eye(4).repeat(B, 1, 1)
    occ2points[1, :2, :2] = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    occ2points[1, :3, 3] = torch.tensor([1.5, -2.0, 0.3])
    transformer = head.transformer
    transformer.decoder.embed_dims = C                   # the layout's channel check: this map's C
    got = sample_bev_features(points, transformer.bev_sampling_layout(bev), occ2points, PC_RANGE)
    assert got.shape == (B, Q, G, P, C // G)
    want = bilinear_reference(bev, points, occ2points, PC_RANGE)
    assert (want == 0).all(-1).any() and (want != 0).all(-1).any()      # some reads outside, most inside
    # float32: the transform (4 products and sums of |p| <= 60 m), the encoding (2 roundings) and grid_sample's
    # unnormalisation (2) each round by <= 2^-24 of <= 120 m-equivalents, i.e. <= 8 * 2^-24 * 1.5 (W - 1) pixels of
    # position; a position error e moves the read by <= 2 e max|f| per axis; the interpolation's own arithmetic (4
    # products, 3 sums) <= 8 * 2^-24 max|f|
    max_f = float(bev.abs().max())
    tol = (2 * 2 * 8 * 1.5 * (max(H, W) - 1) + 8) * U32 * max_f
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=tol)


def test_loss_terms():
    sem, mask = gt(1)
    torch.manual_seed(1)
    for init_pos_lidar, init_term in (('curr', False), (None, True)):
        head = build_head(init_pos_lidar=init_pos_lidar)
        Q = head.num_query
        init = torch.rand(1, Q, 1, 3) if init_pos_lidar else head.init_points.weight[None, :, None]
        preds = dict(init_points=init, all_cls_scores=[torch.randn(1, Q, 2, 17)],
                     all_refine_pts=[torch.rand(1, Q, 2, 3)])
        losses = head.loss(sem, mask, preds)
        assert list(losses) == ['init_loss_pts'] * init_term + ['loss_cls', 'loss_pts']
        assert all(torch.isfinite(v) for v in losses.values())
