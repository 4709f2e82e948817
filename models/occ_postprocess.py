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
max_points per cell" rule a stable sort, the per-cell means sums over the next points of the sorted
order and one scatter.
So the function can run inside a CUDA graph. `pack_occupied` lists the occupied cells of its uint8
grid on the device (static shapes too), so that the host copies only those: `unpack_occupied`.
"""
import torch
import torch.nn.functional as F

__all__ = ['close_and_label', 'dense_occupancy', 'max_filter3', 'pack_occupied', 'unpack_occupied']


def max_filter3(x):
    """Maximum over the 3x3x3 in-bounds neighbourhood of every cell of `[C, X, Y, Z]`.

    What `F.max_pool3d(x[None], 3, stride=1, padding=1)[0]` computes, one axis at a time (a maximum
    is exact, so the order does not change a value): per axis, the maximum of the cell and its two
    neighbours, the border cell standing in for the missing neighbour (replicate padding). Faster
    than PyTorch's pooling kernel, which also writes the argmax indices, and compilable.
    """
    for dim in (1, 2, 3):
        n = x.shape[dim]
        if n == 1:
            continue
        pad = [0] * 6                                   # F.pad order: Z, Y, X (last dimension first)
        pad[2 * (3 - dim)] = pad[2 * (3 - dim) + 1] = 1
        padded = F.pad(x[None], pad, mode='replicate')[0]
        x = torch.maximum(torch.maximum(padded.narrow(dim, 0, n), padded.narrow(dim, 1, n)), padded.narrow(dim, 2, n))
    return x


def close_and_label(dense, score_thr):
    """Step 3 with padding, and step 4: `[C, X, Y, Z]` cell scores -> (bool `[V]` occupied, int64 `[V]`
    label). The 3x3x3 closing of each class channel (cells that have a class above the threshold
    keep their scores); a cell is occupied when some class is above the threshold."""
    closed = -max_filter3(-max_filter3(dense))
    above = (dense > score_thr).any(dim=0)
    closed = torch.where(above[None], dense, closed)
    return (closed > score_thr).any(dim=0).reshape(-1), closed.argmax(dim=0).reshape(-1)


def dense_occupancy(probs, points, pc_range, voxel_size, grid_size, score_thr, ctr_dist_thr=3.0,
                    padding=True, max_points=10, free_label=17, closing=close_and_label):
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
        closing (callable): `close_and_label` or a kernel computing the same (dense scores
            `[C, X, Y, Z]`, score_thr) -> (occupied, labels) (accel/kernels.py compiles it).
    Returns:
        Tensor: `[X, Y, Z]` uint8 labels (`free_label` where empty), on the input's device.
    """
    Q, P, C = probs.shape
    X, Y, Z = (int(v) for v in grid_size)
    V = X * Y * Z
    device = probs.device
    centre = points.mean(dim=1, keepdim=True)
    keep = (points - centre).norm(dim=-1) < ctr_dist_thr
    keep = keep & (probs.max(dim=-1).values > score_thr)
    xyz, probs = points.reshape(Q * P, 3).float(), probs.reshape(Q * P, C)
    # per-axis Python scalars (float32 arithmetic as with float32 tensors): no host-to-device copy,
    # so the function can be captured in a CUDA graph
    cell = torch.stack([torch.floor((xyz[:, a] - float(pc_range[a])) / float(voxel_size[a])) for a in range(3)], 1)
    inside = [(cell[:, a] >= 0) & (cell[:, a] < n) for a, n in enumerate((X, Y, Z))]
    keep = keep.reshape(-1) & inside[0] & inside[1] & inside[2]           # NaN fails both tests
    cell = torch.where(keep[:, None], cell, torch.zeros_like(cell)).long()
    cell_id = torch.where(keep, (cell[:, 0] * Y + cell[:, 1]) * Z + cell[:, 2],
                          torch.full_like(cell[:, 0], V))                 # V = "dropped" sentinel

    # "First max_points per cell": a stable sort by cell keeps the input order within a cell, so the
    # points of a cell are a run of the sorted array and its first max_points are the run's first
    # max_points. The sum at each run start adds the next k-th point while it is of the same cell, in
    # input order, as the original's running sum; the other positions' sums are never read.
    sorted_ids, order = torch.sort(cell_id, stable=True)
    sorted_probs = probs[order]                                           # [M, C]
    M = sorted_ids.numel()
    ids_ahead = torch.cat([sorted_ids, sorted_ids.new_full((max_points - 1,), -1)])
    probs_ahead = torch.cat([sorted_probs, sorted_probs.new_zeros(max_points - 1, C)])
    sums, counts = sorted_probs, torch.ones_like(sorted_ids)
    for k in range(1, max_points):
        same = ids_ahead[k:k + M] == sorted_ids                          # point s+k is in the cell of s
        sums = sums + torch.where(same[:, None], probs_ahead[k:k + M], torch.zeros_like(sorted_probs))
        counts = counts + same
    run_start = torch.ones_like(sorted_ids, dtype=torch.bool)
    run_start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    first = run_start & (sorted_ids < V)                                  # [M] a cell's first kept point
    means = sums / counts[:, None].to(sums.dtype)                         # [M, C]: the cell's mean where `first`
    # Scatter the first points' means into a class-major grid [C, V]; every other position writes to a
    # dump slot of its own (one shared slot would serialise millions of stores on one address).
    position = torch.arange(M, device=device)
    classes = torch.arange(C, device=device)
    target = torch.where(first[:, None], classes * V + sorted_ids[:, None], C * V + position[:, None] * C + classes)
    buffer = probs.new_empty(C * V + M * C)
    buffer[:C * V].zero_()
    buffer[target.reshape(-1)] = means.reshape(-1)
    scores = buffer[:C * V].view(C, V)                                    # 0 where empty

    if padding:
        occupied, labels = closing(scores.view(C, X, Y, Z), score_thr)
    else:
        # every cell with a kept point (index_fill_ takes the value as a kernel argument: `buffer[idx] =
        # True` would copy a host tensor, which a CUDA graph capture refuses)
        cell_buffer = torch.zeros(V + M, dtype=torch.bool, device=device)
        occupied = cell_buffer.index_fill_(0, torch.where(first, sorted_ids, V + position), True)[:V]
        labels = scores.argmax(dim=0)
    grid = torch.where(occupied, labels, torch.full_like(labels, free_label))
    return grid.to(torch.uint8).reshape(X, Y, Z)


LABEL_BITS = 5          # labels 0..31 fit below the cell index in one int32 code


def pack_occupied(grids, free_label=17):
    """The occupied cells of each grid as codes, on the device, with static shapes.

    Args:
        grids (Tensor): uint8 `[B, X, Y, Z]` labels, `free_label` where empty.
    Returns:
        (Tensor, Tensor): int64 `[B]` number of occupied cells n_b, and int32 `[B, 2V]` codes whose
        first n_b entries are `cell << LABEL_BITS | label` of the occupied cells in x-major order
        (cell = (x*Y + y)*Z + z); the rest is unspecified. `unpack_occupied` reads them on the host,
        copying only the occupied prefix instead of the whole grid.
    """
    B, V = grids.shape[0], grids[0].numel()
    if V << LABEL_BITS >= 2 ** 31:
        raise ValueError(f'pack_occupied: a grid of {V} cells does not fit int32 codes')
    flat = grids.reshape(B, V)
    occupied = flat != free_label
    cell = torch.arange(V, device=grids.device, dtype=torch.int32)
    codes = (cell << LABEL_BITS) | flat.to(torch.int32)
    # occupied cells go to their rank, the others to a dump slot of their own (V + cell)
    target = torch.where(occupied, occupied.cumsum(1) - 1, V + cell.long())
    packed = codes.new_empty(B, 2 * V)
    packed.scatter_(1, target, codes)
    return occupied.sum(1), packed


def unpack_occupied(counts, codes, grid_size):
    """`pack_occupied`'s output -> list of B dict(sem_pred=int64 [M], occ_loc=int64 [M, 3] (x, y, z)),
    cells in x-major order, on the CPU (reads the counts, then the occupied prefix of the codes)."""
    import numpy as np
    counts = counts.cpu().numpy()
    prefix = codes[:, :max(int(counts.max(initial=0)), 1)].cpu().numpy()
    _, Y, Z = (int(v) for v in grid_size)
    results = []
    for b, n in enumerate(counts):
        code = prefix[b, :n].astype(np.int64)
        cell = code >> LABEL_BITS
        occ_loc = np.stack([cell // (Y * Z), cell // Z % Y, cell % Z], axis=1)
        results.append(dict(sem_pred=code & (2 ** LABEL_BITS - 1), occ_loc=occ_loc))
    return results
