"""models/lidar/voxelize.py: the static-shape hard voxelisation of the LiDAR branch against a point-by-point Python
loop with mmcv's rules (`brute_force` of tests/models/test_voxelization.py: float32 floor, first come first kept),
compared exactly, and its padding, the `num_valid` prefix and the training / test voxel budgets."""
import numpy as np
import pytest
import torch

from models.lidar.voxelize import Voxelization, compact_voxels, hard_voxelize, voxel_grid_size
from test_voxelization import brute_force

FUSION_VOXEL = [0.05, 0.05, 0.16]                 # OPUS-Fusion's pts_voxel_layer
OCC3D_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]


def random_points(n, low, high, seed, dims=5):
    g = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(low), torch.tensor(high)
    xyz = torch.rand(n, 3, generator=g) * (high - low) + low
    return torch.cat([xyz, torch.rand(n, dims - 3, generator=g)], dim=1)


def check_against_loop(points, voxel_size, pcr, max_points, max_voxels):
    voxels, coords, num, count = hard_voxelize(points, voxel_size, pcr, max_points, max_voxels)
    ref_v, ref_c, ref_n = brute_force(points, voxel_size, pcr, max_points, max_voxels)
    # static shapes, padded with zeros past `count`
    assert voxels.shape == (max_voxels, max_points, points.shape[1])
    assert coords.shape == (max_voxels, 3) and coords.dtype == torch.int32
    assert num.shape == (max_voxels,) and num.dtype == torch.int32 and count.dim() == 0
    assert int(count) == len(ref_n)
    v, c, k = compact_voxels(voxels, coords, num, count)
    assert torch.equal(c.long(), ref_c) and torch.equal(k.long(), ref_n) and torch.equal(v, ref_v)
    assert not voxels[len(ref_n):].any() and not coords[len(ref_n):].any() and not num[len(ref_n):].any()
    return len(ref_n)


@pytest.mark.parametrize('max_points,max_voxels', [(10, 1000), (2, 1000), (3, 7), (1, 1)])
def test_small_grid_matches_the_loop(max_points, max_voxels):
    pcr, vs = [-2.0, -2.0, -1.0, 2.0, 2.0, 0.6], [0.4, 0.4, 0.4]
    pts = random_points(300, [-2.5, -2.5, -1.3], [2.5, 2.5, 0.9], seed=0)   # some outside the range
    # points on float32 cell boundaries and at the upper limits; duplicates make crowded voxels
    pts[:5, :3] = torch.tensor([[-2.0, -2.0, -1.0], [2.0, 0.0, 0.0], [-1.6, -1.2, -0.6], [0.4, 0.8, 0.2],
                                [1.9999, 1.9999, 0.5999]])
    pts = torch.cat([pts, pts[:80]])
    assert check_against_loop(pts, vs, pcr, max_points, max_voxels) >= 1


def test_fusion_voxels_on_a_few_hundred_points():
    """The 0.05 x 0.05 x 0.16 m voxels of the Occ3D range: 400 points in a 1 m box (crowded voxels), plus points
    just inside and outside the range and on the float32 boundaries of the 0.05 m cells."""
    pts = random_points(400, [-0.5, 3.0, -0.3], [0.5, 4.0, 0.3], seed=1)
    edges = torch.tensor([[-40.0, -40.0, -1.0], [39.99999, 39.99999, 5.39999], [40.0, 0.0, 0.0], [0.0, 0.0, 5.4],
                          [0.05, 0.1, 0.16], [-39.95, 0.15, 0.32], [0.35, -0.35, 4.0]])
    pts[:len(edges), :3] = edges
    pts = torch.cat([pts, pts[100:150]])                               # duplicated points
    assert check_against_loop(pts, FUSION_VOXEL, OCC3D_RANGE, 10, 90000) > 100
    assert check_against_loop(pts, FUSION_VOXEL, OCC3D_RANGE, 10, 50) == 50   # the budget is hit


def test_grid_size_as_mmcv_computes_it():
    assert voxel_grid_size(FUSION_VOXEL, OCC3D_RANGE) == (1600, 1600, 40)
    assert voxel_grid_size([0.4, 0.4, 0.4], OCC3D_RANGE) == (200, 200, 16)
    with pytest.raises(ValueError, match='positive voxel size'):
        voxel_grid_size([0.0, 0.1, 0.1], OCC3D_RANGE)


def test_num_valid_ignores_the_padded_tail_and_empty_input():
    pts = random_points(120, [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], seed=2)
    padded = torch.cat([pts, random_points(30, [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], seed=3)])
    want = hard_voxelize(pts, [0.3] * 3, OCC3D_RANGE, 4, 200)
    for num_valid in (120, torch.tensor(120)):
        got = hard_voxelize(padded, [0.3] * 3, OCC3D_RANGE, 4, 200, num_valid=num_valid)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    voxels, coords, num, count = hard_voxelize(pts[:0], [0.3] * 3, OCC3D_RANGE, 4, 5)
    assert int(count) == 0 and voxels.shape == (5, 4, 5) and not voxels.any() and not num.any()


def test_layer_budgets_and_bad_input():
    layer = Voxelization(FUSION_VOXEL, OCC3D_RANGE, max_num_points=10, max_voxels=(3, 5), deterministic=False)
    assert layer.grid_size == (1600, 1600, 40) and not list(layer.state_dict())
    pts = random_points(50, [-30.0, -30.0, 0.0], [30.0, 30.0, 4.0], seed=4)
    layer.train()
    assert layer(pts)[0].shape[0] == 3 and int(layer(pts)[3]) == 3
    layer.eval()
    assert layer(pts)[0].shape[0] == 5
    with pytest.raises(ValueError, match=r'\[N, D >= 3\]'):
        layer(pts[:, :2])
    with pytest.raises(TypeError, match='float32 or float64'):
        layer(pts.half())


def test_nan_points_are_dropped():
    pts = random_points(20, [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], seed=5)
    pts[3, 0] = float('nan')
    got = compact_voxels(*hard_voxelize(pts, [0.5] * 3, OCC3D_RANGE, 5, 100))
    want = compact_voxels(*hard_voxelize(pts[torch.arange(20) != 3], [0.5] * 3, OCC3D_RANGE, 5, 100))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert np.isfinite(got[0].numpy()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_gpu_equals_cpu_and_a_cuda_graph_replays_it():
    pts = random_points(500, [-2.0, -2.0, -1.0], [2.0, 2.0, 1.0], seed=6)
    cpu = hard_voxelize(pts, [0.2] * 3, OCC3D_RANGE, 3, 300)
    gpu = hard_voxelize(pts.cuda(), [0.2] * 3, OCC3D_RANGE, 3, 300)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
    # capture once on a static buffer, replay on other points: same as eager
    buffer = pts.cuda().clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        hard_voxelize(buffer, [0.2] * 3, OCC3D_RANGE, 3, 300)   # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = hard_voxelize(buffer, [0.2] * 3, OCC3D_RANGE, 3, 300)
    other = random_points(500, [-2.0, -2.0, -1.0], [2.0, 2.0, 1.0], seed=7)
    buffer.copy_(other.cuda())
    graph.replay()
    want = hard_voxelize(other, [0.2] * 3, OCC3D_RANGE, 3, 300)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(want, outs))
