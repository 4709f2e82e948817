"""Predicted point set -> dense semantic occupancy grid, with static shapes and no host synchronisation.

Symbols: Q queries, P points per query, C classes (17), M = Q*P points of a sample, (X, Y, Z) the
grid (200, 200, 16), indexed [x, y, z]; V = X*Y*Z cells. Points are in metres, ego frame of the key
frame.

The steps are those of the original's post-processing (docs/method.md, "Inference"):
1. keep a point when it lies within `ctr_dist_thr` metres of its query's centroid and its best
   class probability exceeds `score_thr`;
2. hard voxelisation: cell = floor((p - range_min) / voxel_size) in float32; within a cell only the
   first `max_points` kept points (in query-major input order) count; the cell's class scores are
   the mean of their probabilities;
3. with `padding`: per class channel, a 3x3x3 closing (max-pool dilation then erosion, borders over
   in-bounds neighbours) of the score grid, keeping the original scores in cells that already had
   a class above the threshold; a cell is occupied when some class is above the threshold;
   without `padding`: every cell with a kept point is occupied;
4. label = argmax over classes (first maximum on ties).

Every tensor has a shape fixed by (Q, P, C, X, Y, Z): score filtering is a mask, the "first
max_points per cell" rule a stable sort, the per-cell sums gathers and scatters over unique cells.
So the function can run inside a CUDA graph, and its only output is one uint8 grid, copied to the
host once.
"""
import torch
import torch.nn.functional as F

__all__ = ['dense_occupancy', 'grid_to_sparse', 'max_filter3']


def _first_k_slots(cell_ids, sentinel):
    """Rank of each element among the earlier elements with the same id, for `[M]` int64 ids.

    Returns (order, sorted_ids, slot): the stable sort permutation, the sorted ids and, per sorted
    position, the number of earlier (input order) elements of its id.
    """
    sorted_ids, order = torch.sort(cell_ids, stable=True)
    position = torch.arange(sorted_ids.numel(), device=cell_ids.device)
    run_start = torch.ones_like(sorted_ids, dtype=torch.bool)
    run_start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    start_pos = torch.where(run_start, position, torch.zeros_like(position)).cummax(0).values
    return order, sorted_ids, position - start_pos


def max_filter3(x):
    """Maximum over the 3x3x3 in-bounds neighbourhood of every cell of `[C, X, Y, Z]`.

    What `F.max_pool3d(x[None], 3, stride=1, padding=1)[0]` computes, one axis at a time (a maximum
    is exact, so the order does not change a value): six elementwise passes instead of PyTorch's
    pooling kernel, which also writes the argmax indices (a third of the post-processing's GPU time).
    """
    for dim in (1, 2, 3):
        n = x.shape[dim]
        out = x.clone()
        if n > 1:
            above, below = out.narrow(dim, 1, n - 1), out.narrow(dim, 0, n - 1)
            torch.maximum(above, x.narrow(dim, 0, n - 1), out=above)     # neighbour i - 1
            torch.maximum(below, x.narrow(dim, 1, n - 1), out=below)     # neighbour i + 1
        x = out
    return x


def dense_occupancy(probs, points, pc_range, voxel_size, grid_size, score_thr, ctr_dist_thr=3.0,
                    padding=True, max_points=10, free_label=17):
    """Occupancy grid of one sample from its predicted points.

    Args:
        probs (Tensor): `[Q, P, C]` float32 class probabilities (sigmoid of the logits).
        points (Tensor): `[Q, P, 3]` float32 metres, ego frame.
        pc_range (sequence[6]): (x_min, y_min, z_min, x_max, y_max, z_max) metres.
        voxel_size (sequence[3]): metres.
        grid_size (sequence[3]): (X, Y, Z) cells.
        score_thr (float): a point/cell needs a class probability above it.
        ctr_dist_thr (float): metres from the query centroid a point may lie.
        padding (bool): apply the 3x3x3 closing.
        max_points (int): points averaged per cell (the first ones in input order).
        free_label (int): label of empty cells.
    Returns:
        Tensor: `[X, Y, Z]` uint8 labels (`free_label` where empty), on the input's device.
    """
    Q, P, C = probs.shape
    X, Y, Z = (int(v) for v in grid_size)
    V = X * Y * Z
    device = probs.device
    centre = points.mean(dim=1, keepdim=True)
    keep = (points - centre).norm(dim=-1) < ctr_dist_thr
    keep &= probs.max(dim=-1).values > score_thr
    xyz, probs = points.reshape(Q * P, 3).float(), probs.reshape(Q * P, C)
    # per-axis Python scalars (float32 arithmetic as with float32 tensors): no host-to-device copy,
    # so the function can be captured in a CUDA graph
    cell = torch.stack([torch.floor((xyz[:, a] - float(pc_range[a])) / float(voxel_size[a])) for a in range(3)], 1)
    inside = [(cell[:, a] >= 0) & (cell[:, a] < n) for a, n in enumerate((X, Y, Z))]
    keep = keep.reshape(-1) & inside[0] & inside[1] & inside[2]           # NaN fails both tests
    cell = torch.where(keep[:, None], cell, torch.zeros_like(cell)).long()
    cell_id = torch.where(keep, (cell[:, 0] * Y + cell[:, 1]) * Z + cell[:, 2],
                          torch.full_like(cell[:, 0], V))                 # V = "dropped" sentinel

    order, sorted_ids, slot = _first_k_slots(cell_id, V)
    sorted_probs = probs[order]
    # Cell sums over slots 0..max_points-1 in slot order (the cells of one slot are distinct, so each
    # step is a plain gather-add-scatter; dropped points all land in the sentinel row V).
    sums = probs.new_zeros(V + 1, C)
    counts = torch.zeros(V + 1, dtype=torch.int32, device=device)
    for k in range(max_points):
        target = torch.where(slot == k, sorted_ids, torch.full_like(sorted_ids, V))
        sums[target] = sums[target] + torch.where((slot == k)[:, None], sorted_probs, torch.zeros_like(sorted_probs))
        counts[target] = counts[target] + (slot == k).int()
    counts, sums = counts[:V], sums[:V]
    occupied = counts > 0
    scores = sums / counts.clamp(min=1)[:, None].to(sums.dtype)          # [V, C] mean (0 where empty)

    if padding:
        dense = scores.t().reshape(C, X, Y, Z)
        closed = -max_filter3(-max_filter3(dense))
        above = (dense > score_thr).any(dim=0)
        closed = torch.where(above[None], dense, closed)
        occupied = (closed > score_thr).any(dim=0).reshape(V)
        labels = closed.argmax(dim=0).reshape(V)
    else:
        labels = scores.argmax(dim=1)
    grid = torch.where(occupied, labels, torch.full_like(labels, free_label))
    return grid.to(torch.uint8).reshape(X, Y, Z)


def grid_to_sparse(grid, free_label=17):
    """uint8 `[X, Y, Z]` numpy grid -> dict(sem_pred=int64 [M], occ_loc=int64 [M, 3] (x, y, z)), cells in
    x-major order."""
    import numpy as np
    occ_loc = np.argwhere(grid != free_label).astype(np.int64)
    sem_pred = grid[occ_loc[:, 0], occ_loc[:, 1], occ_loc[:, 2]].astype(np.int64)
    return dict(sem_pred=sem_pred, occ_loc=occ_loc.reshape(-1, 3))
