"""Hard voxelisation of point sets (the semantics of mmcv's ``Voxelization``, pure PyTorch).

Symbols: N points with D columns (xyz first), V voxels kept.

A test oracle: the data-dependent form of the post-processing's voxelisation (docs/method.md,
"Inference", step 3), which models/occ_postprocess.py computes with static shapes and must match
voxel for voxel (tests/models/test_occ_postprocess.py). mmcv's non-deterministic CUDA kernel, which
the original calls, has no CPU implementation; this one runs on both and is deterministic:

* voxel index = ``floor((p - range_min) / voxel_size)`` per axis, computed in float32 exactly like
  the mmcv kernels (so a point at a float32 boundary lands in the same cell);
* points whose index falls outside ``[0, grid)`` on any axis are dropped, with
  ``grid = round((range_max - range_min) / voxel_size)`` (as mmcv computes it);
* voxels are numbered in order of first appearance in ``points``; only the first ``max_voxels``
  voxels are kept (points of later voxels are dropped);
* within a voxel the first ``max_points`` points (in input order) are kept, the rest dropped;
  mmcv's non-deterministic kernel keeps an arbitrary subset, which this choice is one of.
"""
import torch

__all__ = ['hard_voxelize']


def _as_float_list(name, value, n):
    vals = [float(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value)]
    if len(vals) != n:
        raise ValueError(f'hard_voxelize: `{name}` needs {n} numbers, got {len(vals)}: {vals}')
    return vals


def hard_voxelize(points, voxel_size, point_cloud_range, max_points, max_voxels):
    """Group points into voxels, mmcv ``Voxelization(deterministic=True)`` style.

    Args:
        points (Tensor): [N, D] with D >= 3; columns 0..2 are x, y, z in the same unit as the
            range (metres in the head); the remaining columns are carried along as features.
        voxel_size (sequence[3]): voxel edge lengths (x, y, z).
        point_cloud_range (sequence[6]): (x_min, y_min, z_min, x_max, y_max, z_max).
        max_points (int): points kept per voxel (>= 1).
        max_voxels (int): voxels kept (>= 0).

    Returns:
        voxels (Tensor): [V, max_points, D], input dtype; slots past ``num_points`` are zero.
        coords (LongTensor): [V, 3] voxel indices in **(z, y, x)** order, mmcv's convention
            (flip the last dim for (x, y, z)).
        num_points (LongTensor): [V] points stored per voxel, in [1, max_points].
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] < 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points)
        raise ValueError(f'hard_voxelize: `points` must be a [N, D>=3] tensor with xyz first, '
                         f'got {shape}')
    if not points.is_floating_point():
        raise TypeError(f'hard_voxelize: `points` must be floating point, got {points.dtype}')
    vs = _as_float_list('voxel_size', voxel_size, 3)
    pcr = _as_float_list('point_cloud_range', point_cloud_range, 6)
    if min(vs) <= 0:
        raise ValueError(f'hard_voxelize: voxel_size must be positive, got {vs}')
    if int(max_points) < 1 or int(max_voxels) < 0:
        raise ValueError(f'hard_voxelize: need max_points >= 1 and max_voxels >= 0, got '
                         f'{max_points} and {max_voxels}')
    max_points, max_voxels = int(max_points), int(max_voxels)

    device = points.device
    n, dim = points.shape
    # Python-side float64 arithmetic then rounding, like mmcv's grid_size computation.
    grid = [int(round((pcr[a + 3] - pcr[a]) / vs[a])) for a in range(3)]
    if min(grid) < 1:
        raise ValueError(f'hard_voxelize: empty grid {grid} from range {pcr} and voxel {vs}')

    def empty():
        return (points.new_zeros((0, max_points, dim)),
                torch.zeros((0, 3), dtype=torch.long, device=device),
                torch.zeros((0,), dtype=torch.long, device=device))

    if n == 0 or max_voxels == 0:
        return empty()

    xyz = points[:, :3].to(torch.float32)
    lo = torch.tensor(pcr[:3], dtype=torch.float32, device=device)
    size = torch.tensor(vs, dtype=torch.float32, device=device)
    cell = torch.floor((xyz - lo) / size)
    gridt = torch.tensor(grid, dtype=torch.float32, device=device)
    # NaN coordinates fail both comparisons and are dropped like out-of-range points.
    inside = ((cell >= 0) & (cell < gridt)).all(dim=1)
    point_ids = torch.nonzero(inside, as_tuple=False).squeeze(1)
    if point_ids.numel() == 0:
        return empty()
    cell = cell[point_ids].long()
    # Linear id in (z, y, x) order, matching mmcv's coordinate layout.
    lin = (cell[:, 2] * grid[1] + cell[:, 1]) * grid[0] + cell[:, 0]

    uniq, inverse = torch.unique(lin, return_inverse=True)
    num_uniq = uniq.numel()
    order_in_input = torch.arange(point_ids.numel(), device=device)
    first_seen = torch.full((num_uniq,), point_ids.numel(), dtype=torch.long, device=device)
    first_seen.scatter_reduce_(0, inverse, order_in_input, reduce='amin')
    # Rank voxels by first appearance: rank[u] = position of unique voxel u in the output.
    by_appearance = torch.argsort(first_seen)
    rank = torch.empty_like(by_appearance)
    rank[by_appearance] = torch.arange(num_uniq, device=device)
    voxel_of_point = rank[inverse]

    # Slot of each point inside its voxel = number of earlier points in the same voxel; a stable
    # sort by voxel keeps input order within each voxel.
    sorted_vox, perm = torch.sort(voxel_of_point, stable=True)
    counts = torch.bincount(voxel_of_point, minlength=num_uniq)
    starts = torch.cumsum(counts, 0) - counts
    slot_sorted = torch.arange(perm.numel(), device=device) - starts[sorted_vox]
    slot = torch.empty_like(slot_sorted)
    slot[perm] = slot_sorted

    num_vox = min(num_uniq, max_voxels)
    keep = (voxel_of_point < num_vox) & (slot < max_points)
    voxels = points.new_zeros((num_vox, max_points, dim))
    voxels[voxel_of_point[keep], slot[keep]] = points[point_ids[keep]]

    lin_out = uniq[by_appearance[:num_vox]]
    x = lin_out % grid[0]
    y = (lin_out // grid[0]) % grid[1]
    z = lin_out // (grid[0] * grid[1])
    coords = torch.stack([z, y, x], dim=1)
    num_points = counts[:num_vox].clamp(max=max_points)
    return voxels, coords, num_points
