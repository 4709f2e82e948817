"""tests/models/voxelization_oracle.py (the hard voxelisation of the data-dependent post-processing, now the
oracle of models/occ_postprocess.py) against a brute-force Python loop with mmcv's rules."""
import math

import numpy as np
import pytest
import torch

from voxelization_oracle import hard_voxelize


def brute_force(points, voxel_size, pcr, max_points, max_voxels):
    """One point at a time, as mmcv's deterministic kernel: float32 floor, first come first kept."""
    f32 = np.float32
    grid = [int(round((pcr[a + 3] - pcr[a]) / voxel_size[a])) for a in range(3)]
    voxels, coords = [], []
    where = {}
    for p in points.tolist():
        c = [int(math.floor((f32(p[a]) - f32(pcr[a])) / f32(voxel_size[a]))) for a in range(3)]
        if any(c[a] < 0 or c[a] >= grid[a] for a in range(3)):
            continue
        key = (c[2], c[1], c[0])
        if key not in where:
            if len(voxels) >= max_voxels:
                continue
            where[key] = len(voxels)
            voxels.append([])
            coords.append(key)
        v = where[key]
        if len(voxels[v]) < max_points:
            voxels[v].append(p)
    out = torch.zeros(len(voxels), max_points, points.shape[1], dtype=points.dtype)
    for v, pts in enumerate(voxels):
        out[v, :len(pts)] = torch.tensor(pts, dtype=points.dtype)
    return out, torch.tensor(coords, dtype=torch.long).view(-1, 3), \
        torch.tensor([len(p) for p in voxels], dtype=torch.long)


@pytest.mark.parametrize('max_points,max_voxels', [(10, 1000), (2, 1000), (3, 7), (1, 1)])
def test_matches_brute_force(max_points, max_voxels):
    g = torch.Generator().manual_seed(0)
    pcr = [-2.0, -2.0, -1.0, 2.0, 2.0, 0.6]
    vs = [0.4, 0.4, 0.4]
    xyz = torch.rand(400, 3, generator=g) * torch.tensor([5.0, 5.0, 2.2]) \
        - torch.tensor([2.5, 2.5, 1.3])          # some points outside the range
    # Points exactly on float32 cell boundaries and on the upper range limit.
    xyz[:5] = torch.tensor([[-2.0, -2.0, -1.0], [2.0, 0.0, 0.0], [-1.6, -1.2, -0.6],
                            [0.4, 0.8, 0.2], [1.9999, 1.9999, 0.5999]])
    xyz = torch.cat([xyz, xyz[:60]])             # duplicates: crowded voxels
    feats = torch.cat([xyz, torch.rand(xyz.shape[0], 4, generator=g)], dim=1)
    voxels, coords, num = hard_voxelize(feats, vs, pcr, max_points, max_voxels)
    ref_v, ref_c, ref_n = brute_force(feats, vs, pcr, max_points, max_voxels)
    assert coords.dtype == torch.long and num.dtype == torch.long
    assert torch.equal(coords, ref_c)
    assert torch.equal(num, ref_n)
    assert torch.equal(voxels, ref_v)
    assert voxels.shape[1:] == (max_points, 7)


def test_hand_computed_case():
    pts = torch.tensor([[0.1, 0.1, 0.1, 1.0],     # voxel (x0, y0, z0)
                        [0.5, 0.1, 0.1, 2.0],     # voxel (1, 0, 0)
                        [0.2, 0.3, 0.0, 3.0],     # voxel (0, 0, 0) again
                        [-0.1, 0.1, 0.1, 4.0],    # x below range: dropped
                        [0.1, 0.1, 0.8, 5.0],     # z == max: dropped (index == grid)
                        [0.3, 0.0, 0.1, 6.0]])    # voxel (0, 0, 0), third point: over max_points
    voxels, coords, num = hard_voxelize(pts, [0.4, 0.4, 0.4], [0, 0, 0, 0.8, 0.8, 0.8], 2, 10)
    assert coords.tolist() == [[0, 0, 0], [0, 0, 1]]        # (z, y, x), first-appearance order
    assert num.tolist() == [2, 1]
    assert voxels[0, :, 3].tolist() == [1.0, 3.0]
    assert voxels[1, :, 3].tolist() == [2.0, 0.0]           # empty slot is zero


def test_float32_floor_of_boundary_points():
    # -40 + 0.4 * 3 in float32 divided by float32(0.4) floors below 3: the voxel depends on
    # float32 rounding exactly as in the mmcv kernels.
    x = torch.tensor([-40.0 + 0.4 * k for k in range(200)], dtype=torch.float32)
    pts = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], dim=1)
    _, coords, _ = hard_voxelize(pts, [0.4] * 3, [-40, -40, -1, 40, 40, 5.4], 10, 1000)
    expect = np.floor((x.numpy() - np.float32(-40.0)) / np.float32(0.4)).astype(np.int64)
    assert (expect != np.arange(200)).sum() > 10       # the case really exercises rounding
    first_seen = list(dict.fromkeys(int(e) for e in expect if 0 <= e < 200))
    assert coords[:, 2].tolist() == first_seen


def test_empty_and_all_outside():
    for pts in (torch.zeros(0, 5), torch.full((3, 5), 100.0), torch.full((2, 5), float('nan'))):
        v, c, n = hard_voxelize(pts, [0.4] * 3, [-40, -40, -1, 40, 40, 5.4], 10, 100)
        assert v.shape == (0, 10, 5) and c.shape == (0, 3) and n.shape == (0,)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match='xyz first'):
        hard_voxelize(torch.zeros(4, 2), [0.4] * 3, [0, 0, 0, 1, 1, 1], 1, 1)
    with pytest.raises(ValueError, match='voxel_size'):
        hard_voxelize(torch.zeros(4, 3), [0.4] * 2, [0, 0, 0, 1, 1, 1], 1, 1)
    with pytest.raises(ValueError, match='max_points'):
        hard_voxelize(torch.zeros(4, 3), [0.4] * 3, [0, 0, 0, 1, 1, 1], 0, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_gpu_matches_cpu():
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(5000, 20, generator=g) * 90 - 45
    cpu = hard_voxelize(pts, [0.4] * 3, [-40, -40, -1, 40, 40, 5.4], 10, 3000)
    gpu = hard_voxelize(pts.cuda(), [0.4] * 3, [-40, -40, -1, 40, 40, 5.4], 10, 3000)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
