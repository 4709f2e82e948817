"""Sparse 3D convolutions and per-voxel max pooling in plain PyTorch (CPU and GPU, no spconv/torch-scatter).

OPUS-V2's CPD module (models/densifier.py) runs spconv's `SparseConv3d(k=3, s=1, p=1)` and
`SubMConv3d(k=3, s=1, p=1)` and torch_scatter's `scatter_max`. This file gives the same maths
(docs/opusv2.md, "sparse convolutions"):

* sites are voxel indices `(b, x, y, z)` of a grid `spatial_shape = (X, Y, Z)` (200, 200, 16);
* a *regular* sparse conv outputs at every site whose 3x3x3 window holds an active input (the active
  set dilated by one voxel in all 26 directions, clipped to the grid); a *submanifold* conv outputs at
  its input sites only; inactive inputs count as zero; the bias is added to every output site;
* weights are stored as spconv >= 2.2 stores them, `[C_out, kx, ky, kz, C_in]` ("KRSC"), and applied as a
  cross-correlation: `y[o] = bias + sum_d W[:, dx+1, dy+1, dz+1, :] @ v[o + d]` for d in {-1, 0, 1}^3.
  A dense `F.conv3d(grid [B, C_in, X, Y, Z], W.permute(0, 4, 1, 2, 3), bias, padding=1)` read at the
  output sites gives the same numbers (tests/models/test_opusv2_sparse_conv.py).

Implementation: a dense int64 lookup grid `[B, X, Y, Z]` (site -> row, -1 if inactive; 5 MB per sample
for 200x200x16) gives, for each of the 27 kernel offsets, the pairs (output row, input row) whose
neighbour exists (the "rule book"). The convolution is 27 gathers + matmuls + index_add; a custom
autograd Function keeps only the input features and the rule book for the backward pass (not the 27
gathered copies autograd would save), so memory grows with the number of active sites.

Symbol legend:
    B        batch size
    X, Y, Z  grid size (voxels), indexed [x, y, z]
    U        active input sites;  U'  active output sites
    C_in, C_out  channels;  K = 27 kernel offsets (3x3x3), k = (dx+1)*9 + (dy+1)*3 + (dz+1)
    N        rows (points) pooled by `scatter_max`
"""
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['KERNEL_OFFSETS', 'linear_index', 'dilate_sites', 'build_rulebook', 'sparse_conv3d', 'SparseConv3d',
           'SubMConv3d', 'scatter_max']

# (dx, dy, dz) of kernel index k, in the order of the flattened [3, 3, 3] kernel axes (x slowest)
KERNEL_OFFSETS = tuple(itertools.product((-1, 0, 1), repeat=3))


def _check_coords(coords, batch_size, spatial_shape):
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f'sparse sites must be [U, 4] (b, x, y, z) integers, got {tuple(coords.shape)}')
    if coords.dtype not in (torch.int32, torch.int64):
        raise TypeError(f'sparse sites must be an integer tensor, got {coords.dtype}')
    if coords.numel():
        lo = coords.min(dim=0).values
        hi = coords.max(dim=0).values
        limits = [batch_size] + list(spatial_shape)
        if (lo < 0).any() or any(int(h) >= n for h, n in zip(hi.tolist(), limits)):
            raise ValueError(f'sparse sites outside batch {batch_size} x grid {tuple(spatial_shape)}: '
                             f'min {lo.tolist()}, max {hi.tolist()}')


def linear_index(coords, spatial_shape):
    """`[U, 4]` (b, x, y, z) -> int64 `[U]` = ((b * X + x) * Y + y) * Z + z (ascending = (b, x, y, z) order)."""
    X, Y, Z = (int(s) for s in spatial_shape)
    c = coords.long()
    return ((c[:, 0] * X + c[:, 1]) * Y + c[:, 2]) * Z + c[:, 3]


def dilate_sites(coords, batch_size, spatial_shape):
    """Output sites of a regular 3x3x3 sparse conv (stride 1, padding 1).

    Args:
        coords (Tensor): int `[U, 4]` active input sites (b, x, y, z), unique.
        batch_size (int): B; spatial_shape: (X, Y, Z).
    Returns:
        Tensor: int64 `[U', 4]`, every site within one voxel (26-neighbourhood) of an input site, inside
        the grid, sorted by (b, x, y, z) (spconv's CUDA order is hash-dependent; any order gives the same
        losses and predictions).
    """
    X, Y, Z = (int(s) for s in spatial_shape)
    occ = torch.zeros(batch_size, 1, X, Y, Z, dtype=torch.float32, device=coords.device)
    c = coords.long()
    occ[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1.0
    # max-pool padding is -inf, so the dilation never creates sites outside the grid
    grown = F.max_pool3d(occ, kernel_size=3, stride=1, padding=1)[:, 0] > 0
    return torch.nonzero(grown, as_tuple=False)


def build_rulebook(in_coords, out_coords, batch_size, spatial_shape):
    """Pairs (output row, input row) per kernel offset: for each k, out_coords[o] + offset_k == in_coords[i].

    Returns:
        list of K (out_rows int64 [n_k], in_rows int64 [n_k]) tensors.
    """
    X, Y, Z = (int(s) for s in spatial_shape)
    device = in_coords.device
    lookup = torch.full((batch_size * X * Y * Z,), -1, dtype=torch.long, device=device)
    lookup[linear_index(in_coords, spatial_shape)] = torch.arange(in_coords.shape[0], device=device)
    out = out_coords.long()
    base = linear_index(out, spatial_shape)
    rules = []
    for dx, dy, dz in KERNEL_OFFSETS:
        nx, ny, nz = out[:, 1] + dx, out[:, 2] + dy, out[:, 3] + dz
        inside = (nx >= 0) & (nx < X) & (ny >= 0) & (ny < Y) & (nz >= 0) & (nz < Z)
        rows = torch.nonzero(inside, as_tuple=False).squeeze(1)
        src = lookup[base[rows] + (dx * Y + dy) * Z + dz]
        hit = src >= 0
        rules.append((rows[hit], src[hit]))
    return rules


class _SparseConvFunction(torch.autograd.Function):
    """y = bias + sum_k index_add(rows_k, x[src_k] @ W_k^T); backward recomputes the gathers per offset."""

    @staticmethod
    def forward(ctx, features, weight, bias, num_out, rules):
        c_out, c_in = weight.shape[0], weight.shape[-1]
        w = weight.reshape(c_out, len(KERNEL_OFFSETS), c_in)
        out = features.new_zeros(num_out, c_out)
        for k, (rows, src) in enumerate(rules):
            if rows.numel():
                out.index_add_(0, rows, features.index_select(0, src) @ w[:, k].t())
        if bias is not None:
            out += bias
        ctx.save_for_backward(features, weight)
        ctx.rules = rules
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, weight = ctx.saved_tensors
        c_out, c_in = weight.shape[0], weight.shape[-1]
        w = weight.reshape(c_out, len(KERNEL_OFFSETS), c_in)
        grad_feat = grad_w = grad_bias = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            grad_feat = torch.zeros_like(features)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(w)
        for k, (rows, src) in enumerate(ctx.rules):
            if not rows.numel():
                continue
            g = grad_out.index_select(0, rows)
            if grad_feat is not None:
                grad_feat.index_add_(0, src, g @ w[:, k])
            if grad_w is not None:
                grad_w[:, k] = g.t() @ features.index_select(0, src)
        if grad_w is not None:
            grad_w = grad_w.reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_feat, grad_w, grad_bias, None, None


def sparse_conv3d(features, coords, weight, bias, batch_size, spatial_shape, subm):
    """Functional 3x3x3 sparse conv, stride 1, padding 1.

    Args:
        features (Tensor): `[U, C_in]` features of the active sites.
        coords (Tensor): int `[U, 4]` sites (b, x, y, z), unique.
        weight (Tensor): `[C_out, 3, 3, 3, C_in]` (KRSC); bias: `[C_out]` or None.
        batch_size (int), spatial_shape (X, Y, Z).
        subm (bool): True: submanifold (outputs at `coords`, same order); False: regular (dilated sites).
    Returns:
        tuple: features `[U', C_out]`, sites int64 `[U', 4]`.
    """
    if features.dim() != 2 or features.shape[0] != coords.shape[0]:
        raise ValueError(f'features {tuple(features.shape)} must be [U, C_in] for {coords.shape[0]} sites')
    if tuple(weight.shape[1:4]) != (3, 3, 3) or weight.shape[-1] != features.shape[1]:
        raise ValueError(f'weight {tuple(weight.shape)} must be [C_out, 3, 3, 3, C_in={features.shape[1]}]')
    _check_coords(coords, batch_size, spatial_shape)
    coords = coords.long()
    out_coords = coords if subm else dilate_sites(coords, batch_size, spatial_shape)
    rules = build_rulebook(coords, out_coords, batch_size, spatial_shape)
    out = _SparseConvFunction.apply(features, weight, bias, out_coords.shape[0], rules)
    return out, out_coords


class SparseConv3d(nn.Module):
    """Regular sparse conv, kernel 3, stride 1, padding 1: the active set grows by one voxel.

    Parameters as spconv >= 2.2 stores them: `weight` `[C_out, 3, 3, 3, C_in]`, `bias` `[C_out]`.
    Initialisation as spconv: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 27 * C_in.
    """
    subm = False

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True, indice_key=None):
        super().__init__()
        if (kernel_size, stride, padding) != (3, 1, 1):
            raise ValueError(f'{type(self).__name__}: only kernel_size=3, stride=1, padding=1 is implemented, got '
                             f'{kernel_size}, {stride}, {padding}')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.indice_key = indice_key   # spconv's rule-book cache key: accepted, nothing is shared here
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        # torch's fan-in helper would read the KRSC layout wrongly (dim 1 is kx, not C_in)
        bound = 1.0 / math.sqrt(27 * self.in_channels)
        self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    def forward(self, features, coords, batch_size, spatial_shape):
        """`[U, C_in]` at int `[U, 4]` sites -> (`[U', C_out]`, int64 `[U', 4]` sites)."""
        return sparse_conv3d(features, coords, self.weight, self.bias, batch_size, spatial_shape, self.subm)

    def extra_repr(self):
        return f'{self.in_channels}, {self.out_channels}, kernel_size=3, subm={self.subm}'


class SubMConv3d(SparseConv3d):
    """Submanifold sparse conv, kernel 3, stride 1, padding 1: outputs at the input sites, same order."""
    subm = True


def scatter_max(src, index, num_segments):
    """Per-segment, per-channel maximum: out[u, c] = max over rows i with index[i] == u of src[i, c].

    Values equal torch_scatter's `scatter_max(src, index, dim=0)[0]`; the gradient of each (u, c) goes
    to a single row, the first (lowest index) attaining the maximum, as torch_scatter does on the CPU
    (PyTorch's `scatter_reduce('amax')` would split it between tied rows). Empty segments give 0.

    Args:
        src (Tensor): `[N, C]`.
        index (Tensor): int64 `[N]` in [0, num_segments).
        num_segments (int): U.
    Returns:
        Tensor: `[U, C]`.
    """
    if src.dim() != 2 or index.shape != src.shape[:1]:
        raise ValueError(f'scatter_max: src must be [N, C] and index [N], got {tuple(src.shape)}, '
                         f'{tuple(index.shape)}')
    N, C = src.shape
    idx = index.long()[:, None].expand(N, C)
    with torch.no_grad():
        values = src.new_zeros(num_segments, C).scatter_reduce(0, idx, src, reduce='amax', include_self=False)
        rows = torch.arange(N, device=src.device)[:, None].expand(N, C)
        candidate = torch.where(src == values.gather(0, idx), rows, torch.full_like(rows, N))
        arg = torch.full((num_segments, C), N, dtype=torch.long, device=src.device)
        arg = arg.scatter_reduce(0, idx, candidate, reduce='amin', include_self=True)
        empty = arg == N
    out = src.gather(0, arg.clamp(max=max(N - 1, 0))) if N else src.new_zeros(num_segments, C)
    return out.masked_fill(empty, 0.0) if N else out
