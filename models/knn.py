"""Exact 1-nearest-neighbour search for the head's point matching (docs/method.md, "Losses").

The original matches with ``mmcv.ops.knn(k=1)``: brute force over all reference points, squared L2
in float32, ties to the lowest reference index, CUDA only. Here the same semantics in pure PyTorch,
tiled so memory stays bounded whatever the set sizes, on CPU and GPU. For CUDA tensors it
dispatches to a compiled kernel when one is built (this project's ``models/csrc/knn_cuda.cu``,
else ``mmcv.ops.knn``), which is far faster than the tiled path.

Distances are formed from explicit coordinate differences, ``(dx*dx + dy*dy) + dz*dz`` with every
product and sum rounded to float32, never through the ``|a|^2 - 2ab + |b|^2`` expansion: that
expansion cancels catastrophically for points tens of metres from the origin and a few centimetres
apart, which would change the matching.

Symbols: M query points, K reference points (the head passes Ng ground-truth and Np predicted
points of one sample, metres).
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


BACKENDS = ('auto', 'torch', 'kdtree', 'csrc', 'mmcv')
_compiled = {}


def _load(backend):
    """The compiled 1-NN for CUDA tensors, or None when it cannot be imported (cached)."""
    if backend not in _compiled:
        fn = None
        try:
            if backend == 'csrc':
                # This project's kernel (models/csrc/knn_cuda.cu): the same fp32 rounding as the
                # PyTorch path below, so both pick the same neighbour.
                from .csrc._msmv_sampling_cuda import knn1 as fn
            else:
                from mmcv.ops import knn as mmcv_knn

                def fn(query, ref):
                    # mmcv.ops.knn: refs [B, N, 3], queries [B, M, 3] -> int32 [B, k, M].
                    return mmcv_knn(1, ref[None], query[None])[0, 0].long()
                if torch.cuda.is_available():
                    # mmcv imports without its compiled ops (their stubs raise when called): try one
                    fn(torch.zeros(1, 3, device='cuda'), torch.zeros(1, 3, device='cuda'))
        except Exception:  # not built / no mmcv ops
            fn = None
        _compiled[backend] = fn
    return _compiled[backend]


# Candidates per query taken from the KD-tree before the exact float32 re-ranking. Two suffice:
# whenever the second one is within float32 rounding of the first, the row is redone exactly.
KDTREE_CANDIDATES = 2


def _kdtree_nn(query, ref, max_pairs):
    """Exact float32 1-NN on the CPU through a KD-tree; same result as ``_tiled_nn``.

    The tree (float64) proposes the KDTREE_CANDIDATES nearest references; they are re-ranked with
    the float32 distance of the brute-force path, lowest index first among equals. A query whose
    last candidate is still within float32 rounding of the best could have more tied or
    re-ordered references than were proposed: those rows (rare: lattice corners) are redone by the
    tiled brute force. O((M + K) log K) instead of O(M K): the CPU demo's 100k GT voxels x 3k
    points go from seconds to milliseconds.
    """
    import numpy as np
    from scipy.spatial import cKDTree
    k = min(KDTREE_CANDIDATES, ref.shape[0])
    q32 = query.detach().to(torch.float32).cpu()
    r32 = ref.detach().to(torch.float32).cpu()
    # an unbalanced, non-compact tree builds ~2x faster and answers as fast on these point sets
    tree = cKDTree(r32.double().numpy(), balanced_tree=False, compact_nodes=False)
    d64, cand = tree.query(q32.double().numpy(), k=k, workers=torch.get_num_threads())
    d64 = np.asarray(d64, dtype=np.float64).reshape(len(q32), k)
    cand = torch.from_numpy(np.asarray(cand, dtype=np.int64).reshape(len(q32), k))
    diff = q32[:, None, :] - r32[cand]                                      # [M, k, 3] float32
    d32 = (diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]) + diff[..., 2] * diff[..., 2]
    best = d32.min(dim=1, keepdim=True).values
    # lowest reference index among the float32 minima
    idx = torch.where(d32 == best, cand, torch.iinfo(torch.int64).max).min(dim=1).values
    best_sq = torch.from_numpy(d64[:, 0] ** 2)
    unsure = torch.from_numpy(d64[:, -1] ** 2) <= best_sq * (1 + 1e-5) + 1e-12
    if k < ref.shape[0] and unsure.any():
        rows = unsure.nonzero()[:, 0]
        idx[rows] = _tiled_nn(q32[rows], r32, True, False, max_pairs)[0]
    return idx.to(query.device)


def _compiled_knn1(query, ref, backend):
    names = ('csrc', 'mmcv') if backend == 'auto' else (backend,)
    for name in names:
        fn = _load(name)
        if fn is not None:
            return fn(query.float().contiguous(), ref.float().contiguous())
    if backend != 'auto':
        raise RuntimeError(f"knn1: backend '{backend}' is not available (build the project's "
                           f"CUDA extension or mmcv-full with ops), or use backend='torch'")
    return None


def _check_common(query, ref, max_pairs, backend, fn_name):
    if query.device != ref.device:
        raise ValueError(f'{fn_name}: inputs are on {query.device} and {ref.device}; '
                         'move both to the same device')
    if max_pairs < 1:
        raise ValueError(f'{fn_name}: max_pairs must be >= 1, got {max_pairs}')
    if backend not in BACKENDS:
        raise ValueError(f'{fn_name}: backend must be one of {BACKENDS}, got {backend!r}')
    if backend in ('csrc', 'mmcv') and not query.is_cuda:
        raise ValueError(f"{fn_name}: backend '{backend}' needs CUDA tensors; use 'auto' or "
                         "'torch' on the CPU")


def knn1(query, ref, max_pairs=DEFAULT_MAX_PAIRS, backend='auto'):
    """Index of the nearest reference point for every query point (exact, brute force).

    Args:
        query (Tensor): [M, 3] points (any consistent unit; the head passes metres).
        ref (Tensor): [K, 3] points on the same device, K >= 1 (M may be 0).
        max_pairs (int): tile size bound of the PyTorch path; peak extra memory is about
            8 bytes x max_pairs (default 2^24 pairs = 128 MiB).
        backend (str): 'auto' = for CUDA tensors the project's compiled kernel
            (``models/csrc/knn_cuda.cu``) if built, else ``mmcv.ops.knn`` if built, else the
            tiled PyTorch path; CPU tensors take the KD-tree path (exact, same result as the tiled
            one) when scipy is importable, else the tiled path. 'torch', 'kdtree', 'csrc',
            'mmcv' force one (the compiled ones raise when unavailable).

    Returns:
        LongTensor [M]: ``idx[i] = argmin_j |query_i - ref_j|^2`` computed in float32, lowest j
        on ties. Never squeezed (M = 1 gives shape [1]).
    """
    _check_points('query', query)
    _check_points('ref', ref)
    _check_common(query, ref, max_pairs, backend, 'knn1')
    if ref.shape[0] == 0:
        raise ValueError('knn1: `ref` is empty, every query needs at least one reference point '
                         '(skip the matching for empty sets before calling knn1)')
    if query.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=query.device)
    with torch.no_grad():
        if query.is_cuda and backend != 'torch':
            idx = _compiled_knn1(query, ref, backend)
            if idx is not None:
                return idx
        if _use_kdtree(query, backend):
            return _kdtree_nn(query, ref, max_pairs)
        idx, _ = _tiled_nn(query, ref, True, False, max_pairs)
    return idx


def knn1_bidirectional(a, b, max_pairs=DEFAULT_MAX_PAIRS, backend='auto'):
    """Both directions of the Chamfer matching, ``(knn1(a, b), knn1(b, a))``.

    The PyTorch path computes each distance tile once and reduces it along both axes, halving
    the work of two separate calls; results are identical to two ``knn1`` calls.

    Args:
        a (Tensor): [M, 3], M >= 1.
        b (Tensor): [K, 3], K >= 1, same device.
        max_pairs, backend: as for ``knn1``.

    Returns:
        tuple(LongTensor [M], LongTensor [K]): nearest b for each a, nearest a for each b.
    """
    _check_points('a', a)
    _check_points('b', b)
    _check_common(a, b, max_pairs, backend, 'knn1_bidirectional')
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f'knn1_bidirectional: both sets need at least one point, got '
                         f'{a.shape[0]} and {b.shape[0]}')
    with torch.no_grad():
        if a.is_cuda and backend != 'torch':
            ab = _compiled_knn1(a, b, backend)
            if ab is not None:
                return ab, _compiled_knn1(b, a, backend)
        if _use_kdtree(a, backend):
            return _kdtree_nn(a, b, max_pairs), _kdtree_nn(b, a, max_pairs)
        return _tiled_nn(a, b, True, True, max_pairs)


def _use_kdtree(query, backend):
    """CPU tensors take the KD-tree ('auto' when scipy is importable, or 'kdtree' forced)."""
    if backend == 'kdtree':
        return True
    if backend != 'auto' or query.is_cuda:
        return False
    try:
        import scipy.spatial  # noqa: F401
    except ImportError:
        return False
    return True
