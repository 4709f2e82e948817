"""Exact 1-nearest-neighbour search for the head's point matching (spec 4.2).

The original matches with ``mmcv.ops.knn(k=1)``: brute force over all reference points, squared L2
in float32, ties to the lowest reference index, CUDA only. Here the same semantics in pure PyTorch,
tiled so memory stays bounded whatever the set sizes, on CPU and GPU, plus an optional dispatch to
``mmcv.ops.knn`` for CUDA tensors (the original's own kernel, much faster than the tiled path).

Distances are formed from explicit coordinate differences, ``(dx*dx + dy*dy) + dz*dz`` with every
product and sum rounded to float32, never through the ``|a|^2 - 2ab + |b|^2`` expansion: that
expansion cancels catastrophically for points tens of metres from the origin and a few centimetres
apart, which would change the matching.
"""
import torch

__all__ = ['knn1', 'knn1_bidirectional']

# Pairs per tile: two float32 [m, k] work buffers of this many entries = 2 x 64 MiB.
DEFAULT_MAX_PAIRS = 1 << 24


def _check_points(name, pts):
    if not isinstance(pts, torch.Tensor):
        raise TypeError(f'knn1: `{name}` must be a torch.Tensor of shape [N, 3], got {type(pts)}')
    if pts.dim() != 2 or pts.shape[1] != 3:
        raise ValueError(f'knn1: `{name}` must have shape [N, 3] (xyz per row), got '
                         f'{tuple(pts.shape)}; flatten batch/query dims first')
    if not pts.is_floating_point():
        raise TypeError(f'knn1: `{name}` must be floating point, got {pts.dtype}')


def _tiles(m, k, max_pairs):
    """Tile sizes (rows, cols) with rows * cols <= max_pairs, preferring whole rows of refs."""
    cols = max(1, min(k, max_pairs))
    rows = max(1, min(m, max_pairs // cols))
    return rows, cols


def _tiled_nn(query, ref, want_rows, want_cols, max_pairs):
    """Shared tiled scan; returns (row_idx [M] or None, col_idx [K] or None).

    row_idx[i] = argmin_j d(query_i, ref_j); col_idx[j] = argmin_i d(query_i, ref_j), both with
    the lowest index on ties: inside a tile ``min`` returns the first minimum, across tiles only a
    strictly smaller distance replaces the running best, and tiles are visited in index order.
    """
    device = query.device
    m, k = query.shape[0], ref.shape[0]
    q = query.to(torch.float32)
    r = ref.to(torch.float32)
    # Coordinate-major copies so each tile reads contiguous [rows] / [cols] vectors.
    qt = [q[:, a].contiguous() for a in range(3)]
    rt = [r[:, a].contiguous() for a in range(3)]
    rows, cols = _tiles(m, k, max_pairs)

    if want_rows:
        row_best = torch.full((m,), float('inf'), dtype=torch.float32, device=device)
        row_idx = torch.zeros(m, dtype=torch.long, device=device)
    if want_cols:
        col_best = torch.full((k,), float('inf'), dtype=torch.float32, device=device)
        col_idx = torch.zeros(k, dtype=torch.long, device=device)
    buf_d = torch.empty(rows * cols, dtype=torch.float32, device=device)
    buf_t = torch.empty(rows * cols, dtype=torch.float32, device=device)

    for i0 in range(0, m, rows):
        i1 = min(m, i0 + rows)
        for j0 in range(0, k, cols):
            j1 = min(k, j0 + cols)
            shape = (i1 - i0, j1 - j0)
            n = shape[0] * shape[1]
            d = buf_d[:n].view(shape)
            t = buf_t[:n].view(shape)
            for a in range(3):
                torch.sub(qt[a][i0:i1, None], rt[a][None, j0:j1], out=t)
                if a == 0:
                    torch.mul(t, t, out=d)
                else:
                    t.mul_(t)
                    d.add_(t)
            if want_rows:
                val, arg = d.min(dim=1)
                better = val < row_best[i0:i1]
                row_best[i0:i1] = torch.where(better, val, row_best[i0:i1])
                row_idx[i0:i1] = torch.where(better, arg + j0, row_idx[i0:i1])
            if want_cols:
                val, arg = d.min(dim=0)
                better = val < col_best[j0:j1]
                col_best[j0:j1] = torch.where(better, val, col_best[j0:j1])
                col_idx[j0:j1] = torch.where(better, arg + i0, col_idx[j0:j1])
    return (row_idx if want_rows else None), (col_idx if want_cols else None)


def _mmcv_knn1(query, ref):
    """``mmcv.ops.knn`` on CUDA (the original's kernel); None when it is unavailable."""
    try:
        from mmcv.ops import knn as mmcv_knn
    except Exception:  # no mmcv, or mmcv built without ops
        return None
    # mmcv.ops.knn: xyz [B, N, 3] (refs), center_xyz [B, M, 3] (queries) -> int32 [B, k, M].
    idx = mmcv_knn(1, ref.float()[None].contiguous(), query.float()[None].contiguous())
    return idx[0, 0].long()


def knn1(query, ref, max_pairs=DEFAULT_MAX_PAIRS, use_mmcv=True):
    """Index of the nearest reference point for every query point (exact, brute force).

    Args:
        query (Tensor): [M, 3] points (any consistent unit; the head passes metres).
        ref (Tensor): [K, 3] points on the same device, K >= 1 (M may be 0).
        max_pairs (int): tile size bound of the pure-PyTorch path; peak extra memory is about
            8 bytes x max_pairs (default 2^24 pairs = 128 MiB).
        use_mmcv (bool): for CUDA tensors, call ``mmcv.ops.knn`` when it is importable (same
            semantics, far faster); CPU tensors always use the PyTorch path.

    Returns:
        LongTensor [M]: ``idx[i] = argmin_j |query_i - ref_j|^2`` computed in float32, lowest j
        on ties. Never squeezed (M = 1 gives shape [1]).
    """
    _check_points('query', query)
    _check_points('ref', ref)
    if query.device != ref.device:
        raise ValueError(f'knn1: query is on {query.device} but ref is on {ref.device}; '
                         'move both to the same device')
    if ref.shape[0] == 0:
        raise ValueError('knn1: `ref` is empty, every query needs at least one reference point '
                         '(skip the matching for empty sets before calling knn1)')
    if max_pairs < 1:
        raise ValueError(f'knn1: max_pairs must be >= 1, got {max_pairs}')
    if query.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=query.device)
    with torch.no_grad():
        if use_mmcv and query.is_cuda:
            idx = _mmcv_knn1(query, ref)
            if idx is not None:
                return idx
        idx, _ = _tiled_nn(query, ref, True, False, max_pairs)
    return idx


def knn1_bidirectional(a, b, max_pairs=DEFAULT_MAX_PAIRS, use_mmcv=True):
    """Both directions of the Chamfer matching, ``(knn1(a, b), knn1(b, a))``.

    The PyTorch path computes each distance tile once and reduces it along both axes, halving
    the work of two separate calls; results are identical to two ``knn1`` calls.

    Args:
        a (Tensor): [M, 3], M >= 1.
        b (Tensor): [K, 3], K >= 1, same device.

    Returns:
        tuple(LongTensor [M], LongTensor [K]): nearest b for each a, nearest a for each b.
    """
    _check_points('a', a)
    _check_points('b', b)
    if a.device != b.device:
        raise ValueError(f'knn1_bidirectional: a is on {a.device} but b is on {b.device}; '
                         'move both to the same device')
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f'knn1_bidirectional: both sets need at least one point, got '
                         f'{a.shape[0]} and {b.shape[0]}')
    if use_mmcv and a.is_cuda:
        ab = knn1(a, b, max_pairs, use_mmcv=True)
        ba = knn1(b, a, max_pairs, use_mmcv=True)
        return ab, ba
    if max_pairs < 1:
        raise ValueError(f'knn1_bidirectional: max_pairs must be >= 1, got {max_pairs}')
    with torch.no_grad():
        return _tiled_nn(a, b, True, True, max_pairs)
