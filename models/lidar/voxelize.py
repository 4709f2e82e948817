"""Hard voxelisation of LiDAR points with static output shapes (docs/method.md, "OPUS-Fusion: the LiDAR branch").

The semantics of mmcv's `Voxelization` / `hard_voxelize` (which OPUS-Fusion's detector calls through
mmdet3d's `MVXTwoStageDetector.voxelize`), made deterministic:

* voxel index `c = floor((p - range_min) / voxel_size)` per axis, in the points' dtype with the range and the
  voxel size rounded to float32 first (mmcv passes them as C++ floats), so a point on a float32 boundary lands
  in the same cell as in mmcv; a point is dropped when any index falls outside `[0, grid)`, with
  `grid = round((range_max - range_min) / voxel_size)` in float32 (as mmcv);
* voxels are numbered in the order of their first point; only the first `max_voxels` voxels are kept (the
  points of later voxels are dropped);
* a voxel keeps its first `max_points` points, in input order; the rest are dropped.

mmcv's `deterministic=False` CUDA kernel (the configs of OPUS-Fusion ask for it) numbers voxels and points by
atomic counters, i.e. in an order that depends on thread scheduling; the order above is the one it gives when
the threads run in index order. The difference matters only where a voxel holds more than `max_points` points
or more than `max_voxels` voxels are occupied (method.md names the quirk).

Static shapes: the outputs are padded to `max_voxels` and come with the count as a 0-dim tensor on the device;
nothing reads a value back to the host and no shape depends on the data (a stable sort, cumulative sums and
index writes into padded buffers), so a CUDA graph can capture it. Padded voxels have zero points, zero
coordinates and zero features (mmcv's buffers are zeros too).

Symbols: N points of D values (x, y, z first; metres, the frame of the range), V = max_voxels, P = max_points;
grid (X, Y, Z) voxels; voxel coordinates in **(z, y, x)** order (mmcv's convention, the sparse encoder's axes).
"""
import math

import numpy as np
import torch
import torch.nn as nn

from ..device_constants import device_vector

__all__ = ['voxel_grid_size', 'hard_voxelize', 'compact_voxels', 'Voxelization']


def _floats(name, values, n):
    values = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(values) != n:
        raise ValueError(f'voxelisation: `{name}` needs {n} numbers, got {values}')
    return values


def voxel_grid_size(voxel_size, point_cloud_range):
    """Grid (X, Y, Z) = round((max - min) / voxel_size) in float32, as mmcv computes it (e.g. 1600, 1600, 40)."""
    vs = np.asarray(_floats('voxel_size', voxel_size, 3), dtype=np.float32)
    pcr = np.asarray(_floats('point_cloud_range', point_cloud_range, 6), dtype=np.float32)
    if (vs <= 0).any() or (pcr[3:] <= pcr[:3]).any():
        raise ValueError(f'voxelisation: need a positive voxel size and range max > min, got voxel_size '
                         f'{vs.tolist()}, point_cloud_range {pcr.tolist()}')
    # C's round (half away from zero) of a positive float32 quotient
    return tuple(int(math.floor(float((pcr[a + 3] - pcr[a]) / vs[a]) + 0.5)) for a in range(3))


def hard_voxelize(points, voxel_size, point_cloud_range, max_points, max_voxels, num_valid=None):
    """Group points into at most `max_voxels` voxels of at most `max_points` points (module docstring).

    Args:
        points (Tensor): `[N, D]` float32 or float64, D >= 3, x, y, z first; the other columns are carried along.
        voxel_size (sequence[3]): (x, y, z) metres; point_cloud_range (sequence[6]): (x, y, z min, x, y, z max).
        max_points (int): P >= 1; max_voxels (int): V >= 1.
        num_valid (int | Tensor | None): only the first `num_valid` points count (a padded point buffer of a
            captured graph); None: all N.
    Returns:
        tuple:
            voxels `[V, P, D]` (points' dtype; zeros past each voxel's points and in padded voxels),
            coords int32 `[V, 3]` (z, y, x) (zeros in padded voxels),
            num_points int32 `[V]` in [1, P] (0 in padded voxels),
            count int64 0-dim tensor: voxels filled, <= V; the first `count` rows are the voxels.
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] < 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f'hard_voxelize: points must be a [N, D >= 3] tensor (x, y, z first), got {shape}')
    if points.dtype not in (torch.float32, torch.float64):
        raise TypeError(f'hard_voxelize: points must be float32 or float64, got {points.dtype}')
    max_points, max_voxels = int(max_points), int(max_voxels)
    if max_points < 1 or max_voxels < 1:
        raise ValueError(f'hard_voxelize: need max_points >= 1 and max_voxels >= 1, got {max_points}, {max_voxels}')
    grid = voxel_grid_size(voxel_size, point_cloud_range)
    device, dtype = points.device, points.dtype
    n, dim = points.shape
    # mmcv rounds the range and the voxel size to float32 (C++ floats) and computes in the points' dtype
    # (float32 values are exact in float64 as well)
    lo = device_vector(np.float32(_floats('point_cloud_range', point_cloud_range, 6)[:3]).tolist(), dtype, device)
    size = device_vector(np.float32(_floats('voxel_size', voxel_size, 3)).tolist(), dtype, device)
    cell = torch.floor((points[:, :3] - lo) / size)                                      # [N, 3] (x, y, z)
    # NaN coordinates fail every comparison: dropped like points outside the range
    inside = ((cell >= 0) & (cell < device_vector(grid, dtype, device))).all(dim=1)
    if num_valid is not None:
        # a Python number enters as a kernel argument, not a host-to-device copy (capturable)
        limit = num_valid if isinstance(num_valid, torch.Tensor) else int(num_valid)
        inside &= torch.arange(n, device=device) < limit
    cell = torch.where(inside[:, None], cell, torch.zeros_like(cell)).long()
    num_cells = grid[0] * grid[1] * grid[2]
    # linear index in (z, y, x) order; dropped points sort last, after every real voxel
    lin = (cell[:, 2] * grid[1] + cell[:, 1]) * grid[0] + cell[:, 0]
    lin = torch.where(inside, lin, torch.full_like(lin, num_cells))

    # a stable sort keeps the input order inside each voxel: a voxel's points are a run of the sorted array
    sorted_lin, perm = torch.sort(lin, stable=True)
    position = torch.arange(n, device=device)
    run_start = torch.ones(n, dtype=torch.bool, device=device)
    run_start[1:] = sorted_lin[1:] != sorted_lin[:-1]
    run_end = torch.ones(n, dtype=torch.bool, device=device)
    run_end[:-1] = run_start[1:]
    start_of_run = torch.cummax(torch.where(run_start, position, torch.zeros_like(position)), dim=0).values
    slot = position - start_of_run                                                       # place in its voxel
    real = sorted_lin < num_cells
    # voxel number = rank of its first point in input order
    is_first = torch.zeros(n, dtype=torch.bool, device=device)
    is_first[perm] = run_start & real
    rank = torch.cumsum(is_first.long(), dim=0) - 1                                      # [N] input order
    voxel = rank[perm[start_of_run]]                                                     # [N] sorted order
    kept_voxel = real & (voxel < max_voxels)

    # padded buffers with one extra row that absorbs every write of a dropped point (and is cut off)
    keep = kept_voxel & (slot < max_points)
    flat = points.new_zeros((max_voxels * max_points + 1, dim))
    flat[torch.where(keep, voxel * max_points + slot, torch.full_like(slot, max_voxels * max_points))] = \
        points[perm]
    voxels = flat[:-1].view(max_voxels, max_points, dim)
    zyx = cell[perm].flip(1).int()
    coords = torch.zeros((max_voxels + 1, 3), dtype=torch.int32, device=device)
    coords[torch.where(kept_voxel & run_start, voxel, torch.full_like(voxel, max_voxels))] = zyx
    num_points = torch.zeros(max_voxels + 1, dtype=torch.int32, device=device)
    num_points[torch.where(kept_voxel & run_end, voxel, torch.full_like(voxel, max_voxels))] = \
        (slot + 1).clamp(max=max_points).int()
    count = is_first.sum().clamp(max=max_voxels)
    return voxels, coords[:-1], num_points[:-1], count


def compact_voxels(voxels, coords, num_points, count):
    """The first `count` rows of `hard_voxelize`'s outputs (mmcv's data-dependent shapes; reads `count` back)."""
    v = int(count)
    return voxels[:v], coords[:v], num_points[:v]


class Voxelization(nn.Module):
    """mmcv's `Voxelization` layer (the detector's `pts_voxel_layer`), deterministic, with static shapes.

    Args:
        voxel_size (sequence[3]), point_cloud_range (sequence[6]): metres; OPUS-Fusion: (0.05, 0.05, 0.16) and
            the Occ3D range (-40, -40, -1, 40, 40, 5.4) -> grid (1600, 1600, 40).
        max_num_points (int): P, points kept per voxel (10).
        max_voxels (int | tuple[int, int]): V in training and at test time ((90000, 120000)).
        deterministic (bool): accepted for the configs' sake; both values give the deterministic order of
            `hard_voxelize` (the order mmcv's `False` kernel gives when its threads run in index order).
    No parameters or buffers (mmcv's layer has none either: no state-dict keys).
    """

    def __init__(self, voxel_size, point_cloud_range, max_num_points, max_voxels=20000, deterministic=True):
        super().__init__()
        self.voxel_size = tuple(_floats('voxel_size', voxel_size, 3))
        self.point_cloud_range = tuple(_floats('point_cloud_range', point_cloud_range, 6))
        self.max_num_points = int(max_num_points)
        self.max_voxels = tuple(int(v) for v in max_voxels) if isinstance(max_voxels, (tuple, list)) \
            else (int(max_voxels),) * 2
        if len(self.max_voxels) != 2:
            raise ValueError(f'Voxelization: max_voxels must be an int or (train, test), got {max_voxels}')
        self.deterministic = bool(deterministic)
        self.grid_size = voxel_grid_size(self.voxel_size, self.point_cloud_range)   # (X, Y, Z)

    def forward(self, points, num_valid=None):
        """`[N, D]` points -> (voxels `[V, P, D]`, coords int32 `[V, 3]` (z, y, x), num_points int32 `[V]`,
        count 0-dim int64); V = max_voxels[0] in training, max_voxels[1] in eval mode."""
        max_voxels = self.max_voxels[0] if self.training else self.max_voxels[1]
        return hard_voxelize(points, self.voxel_size, self.point_cloud_range, self.max_num_points, max_voxels,
                             num_valid)

    def extra_repr(self):
        return (f'voxel_size={self.voxel_size}, point_cloud_range={self.point_cloud_range}, grid={self.grid_size}, '
                f'max_num_points={self.max_num_points}, max_voxels={self.max_voxels}')
