"""Ray casting and RayIoU (docs/evaluation.md, "RayIoU"): hand-computed cases, the vectorised caster
agrees exactly with the scalar oracle (ray_oracle.py)."""
import math

import numpy as np
import pytest
import torch

from core.occ3d import FREE_LABEL as F
from evaluation.ray_iou import RayIoU, cast_rays, generate_lidar_rays, rays_to_voxel_frame
from ray_oracle import cast_ray_scalar

SQRT2 = math.sqrt(2.0)
EPS = float(np.finfo(np.float64).eps)  # 2.2e-16; one float64 rounding is at most EPS / 2 of the result
# The caster's distances against hand formulas: the length (3 squares, 2 sums, a sqrt), three divisions and up
# to 3 steps t += dt per axis, each rounding <= EPS / 2 of a number no larger than the distance, plus the
# formula's own 2-3 roundings: <= ~11 EPS / 2 relative; checked at 16 EPS.
DIST_REL = 16 * EPS
# generate_lidar_rays stores z = sin(pitch) in float32: |dz| <= 2^-24 |z|, so arcsin moves by
# <= 2^-24 |tan(pitch)| <= 2^-24 rad for |pitch| <= 45 degrees; doubled for the float64 sin / arcsin roundings.
PITCH_TOL = 2 * 2.0 ** -24


def both_casters(occupied, origin, end, max_steps=1000):
    """(distance, voxel) from the scalar reference and from the vectorised caster (must be identical)."""
    ref = cast_ray_scalar(occupied, origin, end, max_steps=max_steps)
    dist, index = cast_rays(torch.as_tensor(occupied, dtype=torch.bool),
                            torch.tensor([origin], dtype=torch.float64), torch.tensor([end], dtype=torch.float64),
                            max_steps=max_steps)
    vec = (dist[0, 0].item(), tuple(index[0, 0].tolist()))
    assert vec[1] == ref[1] and vec[0] == ref[0], (ref, vec)
    return ref


# ----------------------------------------------------------------------------------------------
# hand-computed single rays (grid in voxel units; voxel i spans [i, i+1))

def test_hit_returns_exit_distance_of_the_hit_voxel():
    occ = np.zeros((5, 1, 1), bool)
    occ[3, 0, 0] = True
    # From the centre of voxel 0 along +x: voxel 3 is left at x = 4, i.e. after 3.5 voxels.
    assert both_casters(occ, (0.5, 0.5, 0.5), (1.5, 0.5, 0.5)) == (3.5, (3, 0, 0))


def test_end_point_does_not_stop_the_march():
    occ = np.zeros((5, 1, 1), bool)
    occ[4, 0, 0] = True
    assert both_casters(occ, (0.5, 0.5, 0.5), (0.75, 0.5, 0.5)) == (4.5, (4, 0, 0))


def test_no_hit_gives_last_voxel_inside_the_grid():
    occ = np.zeros((5, 3, 2), bool)
    assert both_casters(occ, (0.5, 0.5, 0.5), (1.5, 0.5, 0.5)) == (4.5, (4, 0, 0))
    # Leaving through the y side: exit at y = 3 after 2.5 voxels.
    assert both_casters(occ, (0.5, 0.5, 0.5), (0.5, 7.0, 0.5)) == (2.5, (0, 2, 0))
    # Backwards along -x from voxel 2: the last voxel is 0, left at x = 0.
    assert both_casters(occ, (2.25, 1.5, 1.5), (1.0, 1.5, 1.5)) == (2.25, (0, 1, 1))


def test_hit_in_the_first_voxel():
    occ = np.zeros((3, 3, 3), bool)
    occ[1, 1, 1] = True
    assert both_casters(occ, (1.25, 1.5, 1.5), (0.0, 1.5, 1.5)) == (0.25, (1, 1, 1))


def test_oblique_ray_hand_computed():
    occ = np.zeros((4, 4, 1), bool)
    occ[2, 1, 0] = True
    # Direction (2, 1, 0)/sqrt(5) from (0.5, 0.5, 0.5): x-planes at t = (k - 0.5) sqrt5/2,
    # y-planes at (k - 0.5) sqrt5. Path (0,0) -x-> (1,0) -y-> (1,1) -x-> (2,1): hit; it is left
    # through x = 3 at t = 2.5 sqrt5 / 2.
    dist, voxel = both_casters(occ, (0.5, 0.5, 0.5), (2.5, 1.5, 0.5))
    assert voxel == (2, 1, 0)
    assert dist == pytest.approx(2.5 * math.sqrt(5) / 2, rel=DIST_REL)


def test_ties_step_z_before_y_before_x():
    # Direction (1, 1, 0): every x and y boundary is crossed at the same t; y goes first, so the
    # path is (0,0) (0,1) (1,1) (1,2) ... and voxel (1,0) is never visited.
    occ = np.zeros((4, 4, 1), bool)
    occ[1, 0, 0] = True
    occ[3, 3, 0] = True
    dist, voxel = both_casters(occ, (0.5, 0.5, 0.5), (1.5, 1.5, 0.5))
    assert voxel == (3, 3, 0)
    assert dist == pytest.approx(3.5 * SQRT2, rel=DIST_REL)
    occ[0, 1, 0] = True
    dist, voxel = both_casters(occ, (0.5, 0.5, 0.5), (1.5, 1.5, 0.5))
    assert voxel == (0, 1, 0)
    assert dist == pytest.approx(0.5 * SQRT2, rel=DIST_REL)  # left through x = 1, the same crossing
    # x/z tie: z first.
    occ = np.zeros((3, 1, 3), bool)
    occ[0, 0, 1] = True
    assert both_casters(occ, (0.5, 0.5, 0.5), (1.5, 0.5, 1.5))[1] == (0, 0, 1)
    # Three-way tie: z, then y, then x: (0,0,0) (0,0,1) (0,1,1) (1,1,1).
    occ = np.zeros((2, 2, 2), bool)
    occ[0, 1, 1] = True
    occ[1, 0, 0] = occ[0, 1, 0] = occ[1, 0, 1] = occ[1, 1, 0] = True  # never visited
    dist, voxel = both_casters(occ, (0.5, 0.5, 0.5), (1.5, 1.5, 1.5))
    assert voxel == (0, 1, 1)
    assert dist == pytest.approx(0.5 * math.sqrt(3), rel=DIST_REL)


def test_origin_outside_the_grid_enters_it():
    occ = np.zeros((4, 1, 1), bool)
    occ[1, 0, 0] = True
    # int(-1.5) = -1: the march starts in the virtual voxel -1, enters voxel 0 at t = 1.5.
    assert both_casters(occ, (-1.5, 0.5, 0.5), (0.0, 0.5, 0.5)) == (3.5, (1, 0, 0))
    # Entering from above through z.
    occ = np.zeros((1, 1, 4), bool)
    occ[0, 0, 0] = True
    assert both_casters(occ, (0.5, 0.5, 6.25), (0.5, 0.5, 5.0)) == (6.25, (0, 0, 0))


def test_truncation_quirk_for_origins_just_below_zero():
    # int() truncates toward zero: an origin at x = -0.5 starts "in" voxel 0, and going -x its
    # exit boundary x = 0 lies behind it, giving a negative distance (as the original kernel does).
    occ = np.zeros((3, 1, 1), bool)
    occ[0, 0, 0] = True
    assert both_casters(occ, (-0.5, 0.5, 0.5), (-1.5, 0.5, 0.5)) == (-0.5, (0, 0, 0))


def test_ray_that_never_enters_the_grid():
    occ = np.ones((3, 3, 3), bool)
    assert both_casters(occ, (-2.5, 0.5, 0.5), (-5.0, 0.5, 0.5)) == (0.0, (0, 0, 0))


def test_step_limit():
    occ = np.ones((5, 1, 1), bool)
    far = (-1999.5, 0.5, 0.5)
    assert both_casters(occ, far, (0.0, 0.5, 0.5)) == (0.0, (0, 0, 0))  # 1000 steps are not enough
    assert both_casters(occ, far, (0.0, 0.5, 0.5), max_steps=3000) == (2000.5, (0, 0, 0))


def test_zero_length_ray_is_rejected():
    with pytest.raises(ValueError, match='no direction'):
        cast_rays(torch.zeros(2, 2, 2, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.float64),
                  torch.zeros(1, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# vectorised caster == scalar reference, bit for bit

def random_rays(rng, n, size):
    size = np.asarray(size, dtype=np.float64)
    origins = rng.uniform(-2, size + 2, size=(n, 3))
    # Many rays from voxel centres / corners with axis-aligned and diagonal directions make ties common.
    k = n // 3
    origins[:k] = rng.integers(0, size.astype(int), size=(k, 3)) + rng.choice([0.0, 0.5], size=(k, 3))
    dirs = rng.normal(size=(n, 3))
    dirs[:k] = rng.integers(-1, 2, size=(k, 3))
    dirs[:k][np.abs(dirs[:k]).sum(1) == 0] = (1, 0, 0)
    return origins, origins + dirs * rng.uniform(0.3, 3.0, size=(n, 1))


def test_vectorised_equals_scalar_on_random_rays_several_grids_and_samples():
    rng = np.random.default_rng(0)
    size = (12, 9, 5)
    occ = rng.random((3, 2) + size) < 0.08  # 3 samples, 2 grids each
    origins, ends = random_rays(rng, 600, size)
    sample = rng.integers(0, 3, size=600)
    dist, index = cast_rays(torch.from_numpy(occ), torch.from_numpy(origins), torch.from_numpy(ends),
                            torch.from_numpy(sample), compact_every=3)
    for r in range(600):
        for g in range(2):
            d_ref, v_ref = cast_ray_scalar(occ[sample[r], g], origins[r], ends[r])
            assert tuple(index[r, g].tolist()) == v_ref, r
            assert dist[r, g].item() == d_ref, r


def test_vectorised_equals_scalar_on_protocol_rays():
    rng = np.random.default_rng(1)
    occ = np.zeros((200, 200, 16), bool)
    occ[:, :, 0] = rng.random((200, 200)) < 0.5   # patchy ground
    occ[rng.integers(0, 200, 4000), rng.integers(0, 200, 4000), rng.integers(0, 16, 4000)] = True
    rays = generate_lidar_rays()
    starts, ends = rays_to_voxel_frame(np.array([[0.9858, 0.0, 1.8402], [-17.3, 12.05, 2.3]]), rays)
    dist, index = cast_rays(torch.from_numpy(occ), starts, ends)
    for r in rng.choice(starts.shape[0], 250, replace=False):
        d_ref, v_ref = cast_ray_scalar(occ, starts[r].tolist(), ends[r].tolist())
        assert tuple(index[r, 0].tolist()) == v_ref and dist[r, 0].item() == d_ref


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_equals_cpu():
    rng = np.random.default_rng(2)
    size = (40, 30, 8)
    occ = torch.from_numpy(rng.random((2, 2) + size) < 0.05)
    origins, ends = random_rays(rng, 5000, size)
    sample = torch.from_numpy(rng.integers(0, 2, size=5000))
    d_cpu, i_cpu = cast_rays(occ, torch.from_numpy(origins), torch.from_numpy(ends), sample)
    d_gpu, i_gpu = cast_rays(occ.cuda(), torch.from_numpy(origins), torch.from_numpy(ends), sample)
    assert torch.equal(i_cpu, i_gpu.cpu()) and torch.equal(d_cpu, d_gpu.cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_rayiou_counts_on_cuda_equal_the_cpus():
    """On CUDA the rays' set-up, the traversal (the Triton kernel) and the counts run on the device."""
    rng = np.random.default_rng(4)
    gt = np.full((200, 200, 16), F, np.uint8)
    gt[:, :, 0] = 11
    gt[rng.integers(0, 200, 3000), rng.integers(0, 200, 3000), rng.integers(1, 16, 3000)] = rng.integers(0, 17, 3000)
    pred = np.where(rng.random(gt.shape) < 0.02, rng.integers(0, 18, gt.shape), gt).astype(np.uint8)
    origins = [np.array([[0.98, 0.0, 1.84], [-12.3, 4.1, 1.9]]), np.array([[20.5, -3.3, 1.7]])]
    rays = generate_lidar_rays()[::3]
    cpu, cuda = RayIoU(rays=rays), RayIoU(rays=rays, device='cuda')
    for metric in (cpu, cuda):
        metric.add_batch([pred, gt], [gt, pred], origins)
    for key in ('gt_count', 'pred_count', 'tp_count'):
        np.testing.assert_array_equal(getattr(cuda, key), getattr(cpu, key))
    assert cpu.tp_count[0].sum() < cpu.gt_count.sum(), 'the prediction must differ from the ground truth'


# ----------------------------------------------------------------------------------------------
# rays and conversion

def test_lidar_rays():
    rays = generate_lidar_rays()
    assert rays.shape == (14040, 3) and rays.dtype == np.float32
    pitch = np.arcsin(rays[::360, 2].astype(np.float64))
    assert len(pitch) == 39
    assert pitch[0] == pytest.approx(-math.pi / 4, abs=PITCH_TOL)          # -(pi/2 - atan(1))
    assert pitch[9] == pytest.approx(-(math.pi / 2 - math.atan(10)), abs=PITCH_TOL)
    step = (math.pi / 2 - math.atan(9)) - (math.pi / 2 - math.atan(10))
    # the extension repeats the step in float64 (drift ~1e-15 rad); each difference holds two float32 storages
    np.testing.assert_allclose(np.diff(pitch[9:]), step, atol=2 * PITCH_TOL)
    assert pitch[-2] < 0.21 <= pitch[-1] + PITCH_TOL
    # np.linalg.norm of float32 rows runs in float32: the components' storage (2^-24 of the norm), three squares
    # and two sums (<= 5 x 2^-24 on the square, half on the root) and the root's rounding: <= 4.5 x 2^-24
    np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0, atol=5 * 2.0 ** -24)
    # the angle of the float32-stored (x, y), taken in float64: storage turns it by <= |sin 2a| 2^-24 rad <= 2^-24;
    # doubled for the float64 deg2rad / arctan2 / degrees roundings (~1e-13 degree)
    azimuth = np.degrees(np.arctan2(rays[:360, 1].astype(np.float64), rays[:360, 0].astype(np.float64))) % 360
    np.testing.assert_allclose(azimuth, np.arange(360), atol=2 * math.degrees(2.0 ** -24))


def test_rays_to_voxel_frame_rounds_through_float32():
    origin = np.array([[0.9858, 0.0, 1.8402]])
    rays = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    starts, ends = rays_to_voxel_frame(origin, rays)
    scale = float(np.float32(0.4))
    assert starts[0, 0].item() == float(np.float32((0.9858 + 40.0) / scale))
    assert ends[0, 0].item() == float(np.float32((0.9858 + 1.0 + 40.0) / scale))
    assert starts[0, 2].item() == float(np.float32((1.8402 + 1.0) / scale))


# ----------------------------------------------------------------------------------------------
# RayIoU counting: a 10 x 10 x 1 world with 1 m voxels, one origin, four rays

AXIS_RAYS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float32)


def small_metric():
    return RayIoU(rays=AXIS_RAYS, pc_range=(0, 0, 0, 10, 10, 1), voxel_size=1.0)


def small_case():
    gt = np.full((10, 10, 1), F, np.uint8)
    gt[8, 5, 0] = 4    # +x: car, left at x = 9 -> depth 3.5
    gt[5, 9, 0] = 11   # +y: driveable surface, depth 4.5
    gt[5, 2, 0] = 4    # -y: car, left at y = 2 -> depth 3.5;  -x: nothing (ray excluded)
    pred = np.full((10, 10, 1), F, np.uint8)
    pred[6, 5, 0] = 4    # +x: car at depth 1.5 (error exactly 2 m)
    pred[3, 5, 0] = 15   # -x: manmade at depth 2.5, but the GT ray is free -> ignored
    pred[5, 9, 0] = 11   # +y: exact
    return pred, gt      # -y: nothing predicted -> free, depth 5.5


def test_cast_labels_and_depths():
    pred, gt = small_case()
    out = small_metric().cast([pred], [gt], [np.array([[5.5, 5.5, 0.5]])])[0]
    np.testing.assert_array_equal(out['gt_label'], [4, F, 11, 4])
    np.testing.assert_array_equal(out['pred_label'], [4, 15, 11, F])
    np.testing.assert_array_equal(out['gt_depth'], np.float32([3.5, 5.5, 4.5, 3.5]))
    np.testing.assert_array_equal(out['pred_depth'], np.float32([1.5, 2.5, 4.5, 5.5]))


def test_rayiou_hand_case_with_strict_thresholds():
    pred, gt = small_case()
    metric = small_metric()
    metric.add_batch([pred], [gt], [np.array([[5.5, 5.5, 0.5]])])
    assert metric.gt_count[4] == 2 and metric.gt_count[11] == 1 and metric.gt_count[F] == 0
    assert metric.pred_count[4] == 1 and metric.pred_count[11] == 1 and metric.pred_count[F] == 1
    assert metric.pred_count[15] == 0  # its ray hits nothing in the ground truth
    # car: TP only at 4 m (|1.5 - 3.5| = 2 is not < 2); driveable surface: TP everywhere.
    np.testing.assert_array_equal(metric.tp_count[:, 4], [0, 0, 1])
    np.testing.assert_array_equal(metric.tp_count[:, 11], [1, 1, 1])
    iou = metric.per_class_iou()
    assert iou.shape == (3, 17)
    # counts divided once, means of 0, 1/2 and 1: every value below is exact in float64
    np.testing.assert_array_equal(iou[:, 4], [0.0, 0.0, 1 / (2 + 1 - 1)])
    np.testing.assert_array_equal(iou[:, 11], [1.0, 1.0, 1.0])
    assert np.isnan(iou[:, 15]).all()
    summary = metric.summary()
    assert summary['RayIoU@1'] == 0.5
    assert summary['RayIoU@2'] == 0.5
    assert summary['RayIoU@4'] == 0.75
    assert summary['RayIoU'] == (0 + 1 + 0 + 1 + 0.5 + 1) / 6   # 3.5 / 6 on both sides
    table = metric.table()
    assert 'RayIoU@1' in table and 'MEAN' in table and '0.750' in table


def test_counts_pool_over_samples_and_origins():
    pred, gt = small_case()
    origin_a, origin_b = np.array([[5.5, 5.5, 0.5]]), np.array([[1.5, 5.5, 0.5]])
    together, separate = small_metric(), small_metric()
    together.add_batch([pred, gt], [gt, gt], [np.concatenate([origin_a, origin_b]), origin_a])
    separate.add_batch([pred], [gt], [np.concatenate([origin_a, origin_b])])
    separate.add_batch([gt], [gt], [origin_a])
    for key in ('gt_count', 'pred_count', 'tp_count'):
        np.testing.assert_array_equal(getattr(together, key), getattr(separate, key))
    # From (1.5, 5.5) only the +x ray hits something in the ground truth (the car, depth 7.5);
    # the prediction's first hit on it is the manmade voxel at x = 3 (depth 2.5): no true positive.
    single = small_metric()
    single.add_batch([pred], [gt], [origin_b])
    assert single.gt_count.sum() == 1 and single.gt_count[4] == 1
    assert single.pred_count.sum() == 1 and single.pred_count[15] == 1
    assert single.tp_count.sum() == 0
    rays = single.cast([pred], [gt], [origin_b])[0]
    np.testing.assert_array_equal(rays['gt_depth'][0], np.float32(7.5))
    np.testing.assert_array_equal(rays['pred_depth'][0], np.float32(2.5))


def test_perfect_prediction_on_the_protocol_grid():
    rng = np.random.default_rng(3)
    gt = np.full((200, 200, 16), F, np.uint8)
    gt[:, :, 0] = 11
    gt[rng.integers(0, 200, 2000), rng.integers(0, 200, 2000), rng.integers(1, 16, 2000)] = rng.integers(0, 17, 2000)
    metric = RayIoU(rays=generate_lidar_rays()[::5])
    metric.add_batch([gt], [gt], [np.array([[0.98, 0.0, 1.84]])])
    summary = metric.summary()
    assert summary['RayIoU'] == 1.0 and summary['RayIoU@1'] == 1.0
    # Rays that leave the box without meeting the ground or an object are free in the ground
    # truth and excluded; the others count once for their class on both sides.
    assert 0 < metric.gt_count.sum() < len(generate_lidar_rays()[::5])
    np.testing.assert_array_equal(metric.gt_count, metric.pred_count)


def test_bad_inputs():
    metric = small_metric()
    gt = np.full((10, 10, 1), F, np.uint8)
    with pytest.raises(ValueError, match='outside'):
        metric.add_batch([gt + 1], [gt], [np.zeros((1, 3))])
    with pytest.raises(ValueError, match='shape'):
        metric.add_batch([gt[:5]], [gt], [np.zeros((1, 3))])
    with pytest.raises(ValueError, match='predictions'):
        metric.add_batch([gt], [gt, gt], [np.zeros((1, 3))])
