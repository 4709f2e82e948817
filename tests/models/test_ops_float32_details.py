"""The three float32 details in which the faithful mode computes as the original does.

Each is checked against the original's formula (written out here independently of the product code)
and against a float64 computation. Background: docs/method.md, "float32 details".
"""
import numpy as np
import torch

from models.ops_sampling import project_points
from test_ops_head_loss import PC_RANGE, make_head  # a head with a stand-in transformer (fed by hand)

GRID = (200, 200, 16)
U32 = 2.0 ** -24    # float32 unit roundoff: one rounding moves a value by at most this much, relative


def gamma(n):
    """Bound on the relative error of n float32 roundings in a row, n * u / (1 - n * u): a float32 sum of n + 1
    products (any order, fused multiply-adds or not) is within gamma(n + 1) of the sum of their magnitudes."""
    return n * U32 / (1 - n * U32)


def test_ground_truth_voxel_centres_follow_the_original_formula():
    # Every voxel of a 200x200x16 grid occupied along the three axes (all indices of each axis occur).
    sem = torch.full((1,) + GRID, 17, dtype=torch.uint8)
    ii = torch.arange(200)
    sem[0, ii, ii, ii % 16] = 1
    sem[0, ii, 199 - ii, (ii * 7) % 16] = 2
    points, labels, _ = make_head().gt_points(sem, torch.ones_like(sem, dtype=torch.bool), 'cpu')[0]
    idx = np.argwhere(sem[0].numpy() != 17)                       # same (x, y, z) order as torch.nonzero
    lo = np.array(PC_RANGE[:3], np.float32)
    size = (np.array(PC_RANGE[3:], np.float32) - lo).astype(np.float32)
    num = np.array(GRID, np.float32)
    # the original, per axis in float32: (i + 0.5) / W * scene_size + range_min
    original = (idx.astype(np.float32) + np.float32(0.5)) / num * size + lo
    assert original.dtype == np.float32
    np.testing.assert_array_equal(points.numpy(), original)
    # float64 truth: within two float32 ulps (at 40 m) of the exact centres: (i + 0.5) / W rounds by at most
    # 2^-25 (x 80 m = 2.4e-6), the product by half an ulp of 80 (3.8e-6), and adding -40 is exact above 20 m
    # (Sterbenz) or rounds by half an ulp of 40 below: 6.2e-6 < 2 * 2^-18 = 7.6e-6
    exact = (idx + 0.5) * (np.array(PC_RANGE[3:]) - np.array(PC_RANGE[:3])) / np.array(GRID) + np.array(PC_RANGE[:3])
    assert np.abs(points.numpy().astype(np.float64) - exact).max() <= 2 * np.spacing(np.float32(40))
    # the discarded formula (i + 0.5) * 0.4 + min differs in some coordinates: the test can tell them apart
    voxel_size_formula = (idx.astype(np.float32) + np.float32(0.5)) * np.float32(0.4) + lo
    assert (voxel_size_formula != original).sum() > 0
    assert labels.tolist() == sem[0][tuple(torch.from_numpy(idx).T)].long().tolist()


def test_projection_is_the_original_broadcast_matmul():
    g = torch.Generator().manual_seed(0)
    B, Q, T, GP, N = 2, 5, 3, 4, 6
    points = torch.rand(B, Q, T, GP, 3, generator=g) * 80 - 40
    occ2img = torch.randn(B, T * N, 4, 4, generator=g) * 100
    occ2img[..., 3, :] = torch.tensor([0., 0., 0., 1.])
    proj = project_points(points, occ2img, N)
    assert proj.shape == (B, T, N, Q, GP, 4)
    # The original per point: matrix of view (t, n) times the column [x, y, z, 1], one 4x4 @ 4x1 each,
    # written here with explicit indexing instead of expand/transpose.
    homo = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    mats = occ2img.reshape(B, T, N, 4, 4)
    expect = torch.empty(B, T, N, Q, GP, 4)
    for t in range(T):
        for n in range(N):
            m = mats[:, t, n][:, None, None].expand(B, Q, GP, 4, 4).contiguous()
            expect[:, t, n] = torch.matmul(m, homo[:, :, t, :, :, None].contiguous()).squeeze(-1)
    assert torch.equal(proj, expect)
    ref = torch.einsum('btnij,bqtpj->btnqpi', mats.double(), homo.double())
    # float64 of the same float32 inputs: each element is a 4-term float32 sum, within gamma(4) of the sum of
    # its terms' magnitudes
    terms = torch.einsum('btnij,bqtpj->btnqpi', mats.double().abs(), homo.double().abs())
    assert torch.all((proj.double() - ref).abs() <= gamma(4) * terms)


class _LossDetector:
    """Just mmdet's loss parsing (what the runner calls), without a model."""
    from mmdet.models.detectors.base import BaseDetector
    parse = BaseDetector._parse_losses


def test_total_loss_is_the_float32_sum_in_the_original_order():
    head = make_head()
    g = torch.Generator().manual_seed(1)
    sem = torch.full((1,) + GRID, 17, dtype=torch.uint8)
    sem[0, 90:110, 95:105, 2:5] = 4
    vis = torch.ones_like(sem, dtype=torch.bool)
    layers = 6
    preds = dict(init_points=torch.rand(1, 4, 1, 3, generator=g),
                 all_cls_scores=[torch.randn(1, 4, 2, 17, generator=g) for _ in range(layers)],
                 all_refine_pts=[torch.rand(1, 4, 2, 3, generator=g) for _ in range(layers)])
    losses = head.loss(sem, vis, preds)
    order = ['init_loss_pts', 'loss_cls', 'loss_pts'] + [f'd{i}.loss_{k}' for i in range(layers - 1)
                                                         for k in ('cls', 'pts')]
    assert list(losses) == order
    total, _ = _LossDetector.parse(None, losses)
    expect = torch.zeros((), dtype=torch.float32)
    for key in order:
        expect = expect + losses[key]
    assert torch.equal(total, expect)
    # and the float64 sum agrees to float32 precision: 13 nonnegative terms, 12 float32 additions, each
    # rounding by at most 2^-24 of the running sum (at most the total): within gamma(12) of the total
    exact = sum(losses[k].double().item() for k in order)
    assert abs(total.item() - exact) <= gamma(len(order) - 1) * exact
