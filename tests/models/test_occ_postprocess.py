"""The static-shape post-processing (models/occ_postprocess.py) against the data-dependent oracle
(tests/models/occ_reference.py: hard voxelisation, as the post-processing was written before), and on
hand-built cells."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.occ_postprocess import dense_occupancy, max_filter3, pack_occupied, unpack_occupied
from occ_reference import reference_occ

PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
VOXEL = [0.4, 0.4, 0.4]
GRID = (200, 200, 16)


def random_prediction(seed, Q=300, P=32, C=17, device='cpu'):
    """Queries clustered in a 20 m box so that cells collect many points (> max_points in some)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(Q, 1, 3, generator=g) * torch.tensor([20.0, 20.0, 5.0]) + torch.tensor([-10.0, -10.0, -1.0])
    points = centres + torch.randn(Q, P, 3, generator=g) * 1.5
    points[:5] = 100.0                                              # outside the range: dropped
    logits = torch.randn(Q, P, C, generator=g) * 2
    return logits.sigmoid().to(device), points.to(device)


def as_grid(result):
    grid = np.full(GRID, 17, np.uint8)
    grid[tuple(result['occ_loc'].T)] = result['sem_pred']
    return grid


@pytest.mark.parametrize('padding', [True, False])
@pytest.mark.parametrize('seed', [0, 1])
def test_same_voxels_as_the_reference(seed, padding):
    probs, points = random_prediction(seed)
    ref = reference_occ(probs, points, PC_RANGE, VOXEL, GRID, 0.5, 3.0, padding)
    grid = dense_occupancy(probs, points, PC_RANGE, VOXEL, GRID, 0.5, 3.0, padding)
    assert grid.dtype == torch.uint8 and tuple(grid.shape) == GRID
    assert len(ref['sem_pred']) > 500                               # the case is not empty
    np.testing.assert_array_equal(grid.numpy(), as_grid(ref))
    counts, codes = pack_occupied(grid[None])
    sparse, = unpack_occupied(counts, codes, GRID)
    np.testing.assert_array_equal(as_grid(sparse), grid.numpy())
    if padding:  # the reference lists cells in x-major order too
        np.testing.assert_array_equal(sparse['occ_loc'], ref['occ_loc'])
        np.testing.assert_array_equal(sparse['sem_pred'], ref['sem_pred'])


@pytest.mark.parametrize('shape', [(3, 7, 5, 4), (2, 1, 6, 2), (17, 12, 12, 16)])
def test_max_filter_equals_max_pooling(shape):
    """The separable 3x3x3 maximum is max_pool3d(3, stride 1, padding 1), bit for bit, ties and borders included."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.rand(shape, generator=g) * 4).round() / 4            # few distinct values: many ties
    x[0, 0, 0, 0] = 0.9                                              # a corner maximum
    for t in (x, -x, torch.rand(shape, generator=g)):
        expected = F.max_pool3d(t[None], 3, stride=1, padding=1)[0]
        assert torch.equal(max_filter3(t), expected)
    # by hand: a single peak spreads to its in-bounds 3x3x3 block and nowhere else
    peak = torch.zeros(1, 4, 4, 4)
    peak[0, 0, 1, 3] = 1.0
    spread = max_filter3(peak)[0]
    assert spread.sum() == 2 * 3 * 2 and spread[0:2, 0:3, 2:4].eq(1).all()


def test_only_the_first_max_points_of_a_cell_count():
    # 12 points in cell (100, 100, 2): the first 10 say class 3 at 0.6, the last 2 class 5 at 1.0 (and
    # class 3 at 0). Averaged over the first 10: class 3 = 0.6 > 0.5, occupied. Averaged over all 12:
    # class 3 = 0.5, class 5 = 1/6, nothing above 0.5, and the closing keeps the cell at 0.5: free.
    points = torch.full((1, 12, 3), 0.2)
    points[..., 2] = 0.0                                            # z cell floor((0 + 1) / 0.4) = 2
    probs = torch.zeros(1, 12, 17)
    probs[0, :10, 3] = 0.6
    probs[0, 10:, 5] = 1.0
    first10 = dense_occupancy(probs, points, PC_RANGE, VOXEL, GRID, 0.5, max_points=10)
    assert first10[100, 100, 2] == 3 and (first10 != 17).sum() == 1
    all12 = dense_occupancy(probs, points, PC_RANGE, VOXEL, GRID, 0.5, max_points=12)
    assert (all12 == 17).all()


def test_points_far_from_their_centroid_or_below_threshold_are_dropped():
    # centroid x = (3 * 0.2 + 10.2) / 4 = 2.7: the near points are 2.5 m away (kept), the far one 7.5 m
    points = torch.tensor([[[0.2, 0.2, 0.3], [0.2, 0.2, 0.3], [0.2, 0.2, 0.3], [10.2, 0.2, 0.3]]])
    probs = torch.zeros(1, 4, 17)
    probs[0, 0, 4] = 0.9
    probs[0, 1, 4] = 0.4                                             # below 0.5: dropped, the mean stays 0.9
    probs[0, 2, 4] = 0.7
    probs[0, 3, 7] = 0.9
    grid = dense_occupancy(probs, points, PC_RANGE, VOXEL, GRID, 0.5, ctr_dist_thr=3.0, padding=False)
    assert grid[100, 100, 3] == 4 and (grid != 17).sum() == 1
    # the mean is over the kept points only: (0.9 + 0.7) / 2 = 0.8 > 0.75; with the dropped 0.4 it would be 0.67
    assert dense_occupancy(probs, points, PC_RANGE, VOXEL, GRID, 0.75)[100, 100, 3] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_equals_cpu_and_reference():
    probs, points = random_prediction(3)
    cpu = dense_occupancy(probs, points, PC_RANGE, VOXEL, GRID, 0.5)
    gpu = dense_occupancy(probs.cuda(), points.cuda(), PC_RANGE, VOXEL, GRID, 0.5)
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu.numpy())
    ref = reference_occ(probs.cuda(), points.cuda(), PC_RANGE, VOXEL, GRID, 0.5)
    np.testing.assert_array_equal(gpu.cpu().numpy(), as_grid(ref))
    # the fast head's compiled closing (accel/kernels.py): the same voxels
    from accel.kernels import CLOSING_KERNEL, compiled_closing
    compiled = dense_occupancy(probs.cuda(), points.cuda(), PC_RANGE, VOXEL, GRID, 0.5, closing=compiled_closing)
    assert not CLOSING_KERNEL.failed
    np.testing.assert_array_equal(compiled.cpu().numpy(), cpu.numpy())


def test_pack_and_unpack_occupied_cells_by_hand():
    """Two grids of 3x4x2 cells: one with three cells (labels 0, 16, 5), one empty."""
    grids = torch.full((2, 3, 4, 2), 17, dtype=torch.uint8)
    grids[0, 0, 0, 1] = 0          # cell (0*4 + 0)*2 + 1 = 1
    grids[0, 2, 3, 0] = 16         # cell (2*4 + 3)*2 + 0 = 22
    grids[0, 1, 2, 1] = 5          # cell (1*4 + 2)*2 + 1 = 13
    counts, codes = pack_occupied(grids)
    assert counts.tolist() == [3, 0] and codes.dtype == torch.int32
    assert codes[0, :3].tolist() == [1 << 5 | 0, 13 << 5 | 5, 22 << 5 | 16]
    first, empty = unpack_occupied(counts, codes, (3, 4, 2))
    assert first['occ_loc'].tolist() == [[0, 0, 1], [1, 2, 1], [2, 3, 0]]
    assert first['sem_pred'].tolist() == [0, 5, 16]
    assert first['occ_loc'].dtype == first['sem_pred'].dtype == np.int64
    assert empty['occ_loc'].shape == (0, 3) and empty['sem_pred'].shape == (0,)
