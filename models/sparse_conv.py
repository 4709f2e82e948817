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

Implementation: a dense int64 lookup grid `[B*X*Y*Z]` (site -> row; 5 MB per sample for 200x200x16)
gives a neighbour table `[U', 27]`: for each output site and kernel offset the input row, or a zero
pad row where the neighbour is inactive or outside the grid. The convolution gathers the 27 input
rows of a chunk of output sites and multiplies them with the kernel reshaped to `[27*C_in, C_out]`
(one GEMM per chunk; no scatter, which is slow on the CPU and non-deterministic on the GPU). The
backward pass does the same with the reversed table (the outputs an input feeds) and the transposed
kernel. A custom autograd Function keeps only the features, the weights and the tables, so memory
grows with the number of active sites, not with 27 gathered copies.

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

__all__ = ['KERNEL_OFFSETS', 'linear_index', 'dilate_sites', 'neighbour_table', 'sparse_conv3d', 'SparseConv3d',
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


def neighbour_table(in_coords, out_coords, batch_size, spatial_shape, sign=1):
    """Row of the input site at `out_coords[o] + sign * offset_k` for every output site o and offset k.

    Args:
        in_coords (Tensor): int `[U, 4]` input sites, unique; out_coords: int `[U', 4]`.
        sign (int): +1 gives the inputs an output reads (forward); -1 the outputs an input feeds (backward).
    Returns:
        Tensor: int64 `[U', K]`, rows of `in_coords`, or U (one past the last row: a zero pad row) where the
        neighbour is outside the grid or inactive.
    """
    X, Y, Z = (int(s) for s in spatial_shape)
    device = in_coords.device
    num_in = in_coords.shape[0]
    lookup = torch.full((batch_size * X * Y * Z,), num_in, dtype=torch.long, device=device)
    lookup[linear_index(in_coords, spatial_shape)] = torch.arange(num_in, device=device)
    out = out_coords.long()
    base = linear_index(out, spatial_shape)
    table = torch.empty(out.shape[0], len(KERNEL_OFFSETS), dtype=torch.long, device=device)
    for k, (dx, dy, dz) in enumerate(KERNEL_OFFSETS):
        dx, dy, dz = sign * dx, sign * dy, sign * dz
        nx, ny, nz = out[:, 1] + dx, out[:, 2] + dy, out[:, 3] + dz
        inside = (nx >= 0) & (nx < X) & (ny >= 0) & (ny < Y) & (nz >= 0) & (nz < Z)
        # outside the grid the shifted linear index may alias another site: mask it
        idx = lookup[(base + (dx * Y + dy) * Z + dz).clamp(0, lookup.numel() - 1)]
        table[:, k] = torch.where(inside, idx, torch.full_like(idx, num_in))
    return table


def _gather_matmul(rows, table, weight2d, chunk):
    """sum_k rows_pad[table[:, k]] @ W_k for a `[M, K]` table: one GEMM per chunk of M, no scatter.

    rows: `[U, C]` (a zero row is appended for the pad index U); weight2d: `[K * C, C_out]`.
    """
    padded = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
    out = rows.new_empty(table.shape[0], weight2d.shape[1])
    for i in range(0, table.shape[0], chunk):
        cols = padded[table[i:i + chunk]]                                    # [m, K, C]
        out[i:i + chunk] = cols.reshape(cols.shape[0], -1) @ weight2d
    return out


class _SparseConvFunction(torch.autograd.Function):
    """y[o] = bias + sum_k W_k x[nbr[o, k]]: gathers and GEMMs both ways (a scatter-free backward)."""

    @staticmethod
    def forward(ctx, features, weight, bias, table, in_coords, out_coords, batch_size, spatial_shape):
        c_out, c_in = weight.shape[0], weight.shape[-1]
        chunk = max(1024, (1 << 24) // (len(KERNEL_OFFSETS) * max(c_in, c_out)))   # ~64 MB of fp32 columns
        # [C_out, kx, ky, kz, C_in] -> [K * C_in, C_out], row k * C_in + c
        out = _gather_matmul(features, table, weight.reshape(c_out, -1).t(), chunk)
        if bias is not None:
            out += bias
        ctx.save_for_backward(features, weight, table, in_coords, out_coords)
        ctx.geometry = (batch_size, tuple(spatial_shape), chunk, bias is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, weight, table, in_coords, out_coords = ctx.saved_tensors
        batch_size, spatial_shape, chunk, has_bias = ctx.geometry
        c_out, c_in = weight.shape[0], weight.shape[-1]
        grad_out = grad_out.contiguous()
        grad_feat = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            # input j feeds output o = j - offset_k through W_k: the same gather-GEMM on the reversed table
            reverse = neighbour_table(out_coords, in_coords, batch_size, spatial_shape, sign=-1)
            w_t = weight.permute(1, 2, 3, 0, 4).reshape(len(KERNEL_OFFSETS) * c_out, c_in)   # row k * C_out + o
            grad_feat = _gather_matmul(grad_out, reverse, w_t, chunk)
        if ctx.needs_input_grad[1]:
            padded = torch.cat([features, features.new_zeros(1, c_in)])
            grad_w = features.new_zeros(c_out, len(KERNEL_OFFSETS) * c_in)
            for i in range(0, table.shape[0], chunk):
                cols = padded[table[i:i + chunk]]
                grad_w += grad_out[i:i + chunk].t() @ cols.reshape(cols.shape[0], -1)
            grad_w = grad_w.reshape(weight.shape)
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_feat, grad_w, grad_bias, None, None, None, None, None


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
    table = neighbour_table(coords, out_coords, batch_size, spatial_shape)
    out = _SparseConvFunction.apply(features, weight, bias, table, coords, out_coords, int(batch_size),
                                    tuple(int(s) for s in spatial_shape))
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
