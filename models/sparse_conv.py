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
pad row where the neighbour is inactive or outside the grid. A conv then takes the formulation with the
smaller intermediate (`_apply_conv`): gathered inputs, the 27 input rows of a chunk of output sites times
the kernel reshaped to `[27*C_in, C_out]` (`GatheredInputs`), or products per tap, every input times
every tap's kernel and each output's sum of the products addressed to it (`ProductsPerTap`;
the regular conv's outputs outnumber its inputs and most of their table entries are pads). Neither
scatters (slow on the CPU, non-deterministic on the GPU); both backward passes use the reversed table
(the outputs an input feeds). The autograd Function keeps only the features, the weights and the tables,
so memory grows with the number of active sites, not with 27 gathered copies.

The LiDAR encoder of OPUS-Fusion (models/lidar/, docs/method.md, "OPUS-Fusion: the LiDAR branch") needs
spconv's convolutions with any kernel, stride and padding, on grids far too large for a dense lookup grid
(1 x 41 x 1600 x 1600 sites). `SparseConvolution3d` / `SubMConvolution3d` (with `SparseTensor` and
`SparseSequential`) give them, with spconv's index semantics:

* a *regular* conv of kernel k, stride s, padding p (per axis) maps the grid `n` to
  `floor((n + 2p - k) / s) + 1` cells; output site o is active when some active input i = o*s - p + t
  (0 <= t < k per axis) exists, and `y[o] = bias + sum_t W[:, t0, t1, t2, :] @ v[o*s - p + t]` (a
  cross-correlation: a dense `F.conv3d(grid, W.permute(0, 4, 1, 2, 3), bias, stride=s, padding=p)` read
  at the active output sites gives the same numbers);
* a *submanifold* conv (odd kernel, stride 1) outputs at its input sites only, reading `v[o + t - k//2]`;
* the sites are looked up by binary search in their sorted linear indices (`rulebook`), so memory grows
  with the active sites, not with the grid.

Both paths share the gather-GEMM autograd Function below; its backward inverts the forward table, so it
needs no second search.

Symbol legend:
    B        batch size
    X, Y, Z  grid size (voxels), indexed [x, y, z] (any three axes: the LiDAR encoder's are (z, y, x))
    U        active input sites;  U'  active output sites
    C_in, C_out  channels;  K kernel taps: 27 (3x3x3), k = (dx+1)*9 + (dy+1)*3 + (dz+1); in general
             k = (t0 * k1 + t1) * k2 + t2 for the tap (t0, t1, t2) of a (k0, k1, k2) kernel
    N        rows (points) pooled by `scatter_max`
"""
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.matmul_precision import matmul_precision

from .device_constants import device_vector

__all__ = ['KERNEL_OFFSETS', 'linear_index', 'dilated_cells', 'dilate_sites', 'neighbour_table', 'sparse_conv3d',
           'GatheredInputs', 'ProductsPerTap',
           'SparseConv3d', 'SubMConv3d', 'scatter_max', 'SparseTensor', 'conv_output_shape', 'regular_output_sites',
           'rulebook', 'sparse_convolution', 'SparseConvolution3d', 'SubMConvolution3d', 'SparseSequential']

# (dx, dy, dz) of kernel index k, in the order of the flattened [3, 3, 3] kernel axes (x slowest)
KERNEL_OFFSETS = tuple(itertools.product((-1, 0, 1), repeat=3))


def _check_coords(coords, batch_size, spatial_shape):
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f'sparse sites must be [U, 4] (b, x, y, z) integers, got {tuple(coords.shape)}')
    if coords.dtype not in (torch.int32, torch.int64):
        raise TypeError(f'sparse sites must be an integer tensor, got {coords.dtype}')
    if coords.numel():
        # one host read per call: in OPUS-V2's eager training step each read waits for the queued kernels
        lo, hi = torch.stack(torch.aminmax(coords, dim=0)).tolist()
        limits = [batch_size] + list(spatial_shape)
        if min(lo) < 0 or any(h >= n for h, n in zip(hi, limits)):
            raise ValueError(f'sparse sites outside batch {batch_size} x grid {tuple(spatial_shape)}: '
                             f'min {lo}, max {hi}')


def linear_index(coords, spatial_shape):
    """`[U, 4]` (b, x, y, z) -> int64 `[U]` = ((b * X + x) * Y + y) * Z + z (ascending = (b, x, y, z) order)."""
    X, Y, Z = (int(s) for s in spatial_shape)
    c = coords.long()
    return ((c[:, 0] * X + c[:, 1]) * Y + c[:, 2]) * Z + c[:, 3]


def dilated_cells(cells, batch_size, spatial_shape):
    """The cells within one voxel (26-neighbourhood) of the given ones, inside the grid, as a mask.

    Args:
        cells (Tensor): int64 `[U]` linear indices ((b * X + x) * Y + y) * Z + z (`linear_index`), repeats allowed.
        batch_size (int): B; spatial_shape: (X, Y, Z).
    Returns:
        Tensor: bool `[B, X, Y, Z]`.
    """
    X, Y, Z = (int(s) for s in spatial_shape)
    occ = torch.zeros(batch_size * X * Y * Z, dtype=torch.float32, device=cells.device)
    occ.index_fill_(0, cells, 1.0)   # a scalar kernel argument: no host tensor (OPUS-V2's graphed dense CPD)
    # max-pool padding is -inf, so the dilation never creates sites outside the grid
    return F.max_pool3d(occ.view(batch_size, 1, X, Y, Z), kernel_size=3, stride=1, padding=1)[:, 0] > 0


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
    grown = dilated_cells(linear_index(coords, spatial_shape), batch_size, spatial_shape)
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
    base = linear_index(out, spatial_shape)                                       # [U']
    d = sign * (_kernel_taps((3, 3, 3), device) - 1)                              # [K, 3], KERNEL_OFFSETS' order
    n = out[:, None, 1:] + d                                                      # [U', K, 3]
    inside = (n >= 0).all(-1) & (n[..., 0] < X) & (n[..., 1] < Y) & (n[..., 2] < Z)
    # outside the grid the shifted linear index may alias another site: `inside` masks it
    shift = (d[:, 0] * Y + d[:, 1]) * Z + d[:, 2]                                 # [K]
    idx = lookup[(base[:, None] + shift).clamp(0, lookup.numel() - 1)]
    return torch.where(inside, idx, num_in)


@torch.no_grad()
def spconv_init_(weight, bias):
    """spconv's default initialisation: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = K * C_in.

    torch's fan-in helper would read the KRSC layout `[C_out, k0, k1, k2, C_in]` wrongly (dim 1 is k0, not C_in).
    """
    bound = 1.0 / math.sqrt(weight[0].numel())
    weight.uniform_(-bound, bound)
    if bias is not None:
        bias.uniform_(-bound, bound)


# elements of the gathered columns `[m, K, C]` of one chunk (~64 MB of fp32): the conv's transient memory, and the
# number of chunks (a gather and a GEMM each) that a large active set takes (benchmarks/bench_cpd.py times it)
CHUNK_ELEMENTS = 1 << 24


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


def invert_table(table, num_in):
    """The reversed table of a `[U', K]` table: `[U, K]`, entry (j, k) = the output o with table[o, k] == j, or U'.

    For a fixed tap k every output reads a different input (o -> o*s - p + t is injective), so each (j, k)
    has at most one such o: the inversion is a plain index assignment, no search.
    """
    num_out, num_taps = table.shape
    reverse = torch.full((num_in + 1, num_taps), num_out, dtype=torch.long, device=table.device)
    taps = torch.arange(num_taps, device=table.device).expand(num_out, num_taps)
    rows = torch.arange(num_out, device=table.device)[:, None].expand(num_out, num_taps)
    # every pad entry (== num_in) lands in the extra last row, which is dropped
    reverse[table, taps] = rows
    return reverse[:num_in]


class GatheredInputs:
    """A conv as gathered inputs: the K input rows of a chunk of output sites times the kernel as `[K * C_in, C_out]`
    (intermediate `[U', K, C_in]`); the backward the same on the reversed table with the transposed kernel, and the
    weight gradient a GEMM of the output gradients with the gathered inputs."""

    @staticmethod
    def _chunk(weight, table):
        return max(1024, CHUNK_ELEMENTS // (table.shape[1] * max(weight.shape[0], weight.shape[-1])))

    @staticmethod
    def forward(features, weight, table):
        # [C_out, k0, k1, k2, C_in] -> [K * C_in, C_out], row k * C_in + c
        return _gather_matmul(features, table, weight.reshape(weight.shape[0], -1).t(),
                              GatheredInputs._chunk(weight, table))

    @staticmethod
    def backward(features, weight, table, grad_out, need_feat, need_w):
        chunk = GatheredInputs._chunk(weight, table)
        c_out, c_in = weight.shape[0], weight.shape[-1]
        num_taps = table.shape[1]
        grad_feat = grad_w = None
        if need_feat:
            # input j feeds output o = reverse[j, k] through W_k: the same gather-GEMM on the reversed table
            reverse = invert_table(table, features.shape[0])
            # row k * C_out + o
            w_t = weight.reshape(c_out, num_taps, c_in).transpose(0, 1).reshape(num_taps * c_out, c_in)
            grad_feat = _gather_matmul(grad_out, reverse, w_t, chunk)
        if need_w:
            padded = torch.cat([features, features.new_zeros(1, c_in)])
            grad_w = features.new_zeros(c_out, num_taps * c_in)
            for i in range(0, table.shape[0], chunk):
                cols = padded[table[i:i + chunk]]
                grad_w += grad_out[i:i + chunk].t() @ cols.reshape(cols.shape[0], -1)
            grad_w = grad_w.reshape(weight.shape)
        return grad_feat, grad_w


def _tap_chunks(num_rows, num_taps, channels):
    """Tap ranges [t0, t1) whose products `[num_rows, t1 - t0, channels]` hold at most ~CHUNK_ELEMENTS elements."""
    step = max(1, min(num_taps, CHUNK_ELEMENTS // max(1, num_rows * channels)))
    return [(t0, min(t0 + step, num_taps)) for t0 in range(0, num_taps, step)]


class ProductsPerTap:
    """A conv as products per tap: P[i, k] = W_k x[i] for every input and tap (one GEMM with the kernel as
    `[C_in, K * C_out]`, intermediate `[U, K, C_out]`), then y[o] = sum_k P[table[o, k], k], each output's sum of the
    at most K products addressed to it (`F.embedding_bag`, bags of K rows, pad entries skipped).

    Fewer operations than gathered inputs where outputs outnumber inputs: OPUS-V2's regular conv outputs at its inputs
    dilated by one voxel (U' = 5.6 to 17 U), and most of those outputs' table entries are pads, which gathered inputs
    multiply and this skips. Backward: each product feeds at most one output (`invert_table`), so its gradient is a
    gather of the output gradients, `[U, K, C_out]`, and the input and weight gradients are GEMMs with it.
    """

    @staticmethod
    def forward(features, weight, table):
        num_in, c_in = features.shape
        c_out, num_taps = weight.shape[0], table.shape[1]
        w = weight.reshape(c_out, num_taps, c_in)
        out = features.new_zeros(table.shape[0], c_out)
        for t0, t1 in _tap_chunks(num_in, num_taps, c_out):
            taps = t1 - t0
            # [U, taps * C_out], column (k - t0) * C_out + c: the products of every input with taps t0..t1-1
            products = features @ w[:, t0:t1].permute(2, 1, 0).reshape(c_in, taps * c_out)
            rows = torch.cat([products.reshape(num_in * taps, c_out), products.new_zeros(1, c_out)])
            sub = table[:, t0:t1]
            pad = num_in * taps
            index = torch.where(sub < num_in, sub * taps + torch.arange(taps, device=sub.device), pad)
            out += F.embedding_bag(index, rows, mode='sum', padding_idx=pad)
        return out

    @staticmethod
    def backward(features, weight, table, grad_out, need_feat, need_w):
        num_in, c_in = features.shape
        c_out, num_taps = weight.shape[0], table.shape[1]
        w = weight.reshape(c_out, num_taps, c_in)
        padded = torch.cat([grad_out, grad_out.new_zeros(1, c_out)])
        reverse = invert_table(table, num_in)                         # [U, K]: the output each product feeds, or U'
        grad_feat = features.new_zeros(num_in, c_in) if need_feat else None
        grad_w = weight.new_empty(c_out, num_taps, c_in) if need_w else None
        for t0, t1 in _tap_chunks(num_in, num_taps, c_out):
            taps = t1 - t0
            grad_products = padded[reverse[:, t0:t1]].reshape(num_in, taps * c_out)      # [U, taps * C_out]
            if need_feat:
                grad_feat += grad_products @ w[:, t0:t1].transpose(0, 1).reshape(taps * c_out, c_in)
            if need_w:
                grad_w[:, t0:t1] = (grad_products.t() @ features).reshape(taps, c_out, c_in).transpose(0, 1)
        return grad_feat, grad_w.reshape(weight.shape) if need_w else None


class _SparseConvFunction(torch.autograd.Function):
    """y[o] = bias + sum_k W_k x[table[o, k]] for a `[U', K]` neighbour table, in the given formulation
    (`GatheredInputs`, `ProductsPerTap`); no scatter either way. The backward runs at the float32 matmul precision of
    the forward, as autocast's custom_bwd keeps the autocast state: a precision scope around a module's forward has
    ended when autograd runs the backward (accel/precision.py)."""

    @staticmethod
    def forward(ctx, features, weight, bias, table, formulation):
        out = formulation.forward(features, weight, table)
        if bias is not None:
            out += bias
        ctx.save_for_backward(features, weight, table)
        ctx.formulation, ctx.has_bias = formulation, bias is not None
        ctx.matmul_precision = torch.get_float32_matmul_precision()
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, weight, table = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        with matmul_precision(ctx.matmul_precision):
            grad_feat, grad_w = ctx.formulation.backward(features, weight, table, grad_out,
                                                         ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_feat, grad_w, grad_bias, None, None


def _apply_conv(features, weight, bias, table):
    """The conv of a `[U', K]` table in the formulation with the smaller intermediate: an input's products with every
    tap `[U, K, C_out]` (`ProductsPerTap`) or an output's gathered inputs `[U', K, C_in]` (`GatheredInputs`)."""
    smaller = ProductsPerTap if features.shape[0] * weight.shape[0] < table.shape[0] * weight.shape[-1] \
        else GatheredInputs
    return _SparseConvFunction.apply(features, weight, bias, table, smaller)


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
    out = _apply_conv(features, weight, bias, table)
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

    def reset_parameters(self):
        spconv_init_(self.weight, self.bias)

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
    (PyTorch's `scatter_reduce('amax')` would split it between tied rows). Empty segments give 0. Without a
    gradient to route (no grad mode, or `src` not requiring one) the maximum alone is computed: the same values,
    without the argmax bookkeeping's `[U, C]` int64 tensors (OPUS-V2's dense CPD module pools into every cell of
    the grid, accel/dense_cpd.py).

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
    routes_gradient = torch.is_grad_enabled() and src.requires_grad
    with torch.no_grad():
        values = src.new_zeros(num_segments, C).scatter_reduce(0, idx, src, reduce='amax', include_self=False)
        if not routes_gradient:
            return values
        rows = torch.arange(N, device=src.device)[:, None].expand(N, C)
        candidate = torch.where(src == values.gather(0, idx), rows, torch.full_like(rows, N))
        arg = torch.full((num_segments, C), N, dtype=torch.long, device=src.device)
        arg = arg.scatter_reduce(0, idx, candidate, reduce='amin', include_self=True)
        empty = arg == N
    out = src.gather(0, arg.clamp(max=max(N - 1, 0))) if N else src.new_zeros(num_segments, C)
    return out.masked_fill(empty, 0.0) if N else out


# ---------------------------------------------------------------------------------------------------------------
# General sparse convolutions (any kernel, stride, padding), spconv's SparseConv3d / SubMConv3d semantics
# ---------------------------------------------------------------------------------------------------------------

def _triple(value, name):
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * 3
    if len(values) != 3:
        raise ValueError(f'{name} must be an int or 3 ints, got {value!r}')
    return values


class SparseTensor:
    """Active sites of a batch of 3D grids with their features (spconv's SparseConvTensor, minus the rule-book cache).

    Args:
        features (Tensor): `[U, C]`.
        coords (Tensor): int `[U, 4]` (b, i0, i1, i2), unique; stored as int64.
        spatial_shape (sequence[3]): grid size (D0, D1, D2) of the axes i0, i1, i2.
        batch_size (int): B.
    """

    def __init__(self, features, coords, spatial_shape, batch_size):
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.batch_size = int(batch_size)
        if features.dim() != 2 or features.shape[0] != coords.shape[0]:
            raise ValueError(f'SparseTensor: features {tuple(features.shape)} must be [U, C] for '
                             f'{coords.shape[0]} sites')
        _check_coords(coords, self.batch_size, self.spatial_shape)
        self.features = features
        self.coords = coords.long()

    @classmethod
    def _of(cls, features, coords, spatial_shape, batch_size):
        """Without the checks (they read the sites back to the host): for the outputs of the convs here."""
        x = cls.__new__(cls)
        x.features, x.coords, x.spatial_shape, x.batch_size = features, coords, tuple(spatial_shape), batch_size
        return x

    def replace_features(self, features):
        """The same sites with new features `[U, C']`."""
        if features.shape[0] != self.coords.shape[0]:
            raise ValueError(f'SparseTensor: {features.shape[0]} feature rows for {self.coords.shape[0]} sites')
        return SparseTensor._of(features, self.coords, self.spatial_shape, self.batch_size)

    def dense(self):
        """`[B, C, D0, D1, D2]`, zeros at inactive sites (spconv's `dense()`)."""
        c = self.coords
        grid = self.features.new_zeros((self.batch_size, self.features.shape[1]) + self.spatial_shape)
        grid[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = self.features
        return grid


def conv_output_shape(spatial_shape, kernel_size, stride, padding):
    """Grid size after a regular conv: `floor((n + 2p - k) / s) + 1` per axis (dilation 1)."""
    k, s, p = _triple(kernel_size, 'kernel_size'), _triple(stride, 'stride'), _triple(padding, 'padding')
    out = tuple((int(n) + 2 * pa - ka) // sa + 1 for n, ka, sa, pa in zip(spatial_shape, k, s, p))
    if min(out) < 1:
        raise ValueError(f'a conv of kernel {k}, stride {s}, padding {p} leaves nothing of the grid '
                         f'{tuple(spatial_shape)} (output {out})')
    return out


def _kernel_taps(kernel_size, device):
    """int64 `[K, 3]`: the taps (t0, t1, t2) of a kernel in the order of its flattened weight axes (t2 fastest).

    Written by kernels on `device`, as are the per-axis constants below (`_per_axis`; models/device_constants.py
    says why).
    """
    k0, k1, k2 = kernel_size
    i = torch.arange(k0 * k1 * k2, device=device)
    return torch.stack([i // (k1 * k2), i // k2 % k1, i % k2], dim=1)


def _per_axis(values, device):
    """Three ints as something that broadcasts over a `[..., 3]` int64 tensor: the int when they are equal, else
    an int64 `[3]` tensor written on `device`."""
    a, b, c = (int(v) for v in values)
    return a if a == b == c else device_vector((a, b, c), torch.long, device)


def regular_output_sites(coords, batch_size, spatial_shape, kernel_size, stride, padding):
    """Active output sites of a regular sparse conv (spconv's `SparseConv3d` indices).

    Args:
        coords (Tensor): int `[U, 4]` active input sites (b, i0, i1, i2), unique.
        batch_size (int), spatial_shape (D0, D1, D2): the input grid.
        kernel_size, stride, padding: ints or 3-tuples.
    Returns:
        tuple: int64 `[U', 4]` sites o with some input i = o*s - p + t (0 <= t < k, per axis) active, sorted by
        (b, o0, o1, o2) (spconv's GPU order depends on its hash table; any order gives the same dense result);
        the output grid size (3 ints).
    """
    k, s, p = _triple(kernel_size, 'kernel_size'), _triple(stride, 'stride'), _triple(padding, 'padding')
    out_shape = conv_output_shape(spatial_shape, k, s, p)
    c = coords.long()
    if c.shape[0] == 0:
        return c.new_zeros((0, 4)), out_shape
    taps = _kernel_taps(k, c.device)                                               # [K, 3]
    scaled = c[:, None, 1:] + _per_axis(p, c.device) - taps[None]                # [U, K, 3] = o * s
    s_t, out_t = _per_axis(s, c.device), _per_axis(out_shape, c.device)
    o = torch.div(scaled, s_t, rounding_mode='floor')
    ok = ((scaled - o * s_t) == 0).all(-1) & (o >= 0).all(-1) & (o < out_t).all(-1)
    cand = torch.cat([c[:, None, :1].expand(-1, taps.shape[0], 1), o], dim=-1)[ok]   # [M, 4]
    keys = torch.unique(linear_index(cand, out_shape))                            # sorted
    d0, d1, d2 = out_shape
    sites = torch.stack([keys // (d0 * d1 * d2), keys // (d1 * d2) % d0, keys // d2 % d1, keys % d2], dim=1)
    return sites, out_shape


def rulebook(in_coords, out_coords, spatial_shape, kernel_size, stride, padding, subm):
    """Row of the input read by every output site and kernel tap.

    Args:
        in_coords (Tensor): int `[U, 4]` input sites, unique; out_coords: int `[U', 4]`.
        spatial_shape (D0, D1, D2): the input grid.
        kernel_size, stride, padding: ints or 3-tuples; subm (bool): taps read `o + t - k//2` (stride and padding
            unused) instead of `o*s - p + t`.
    Returns:
        Tensor: int64 `[U', K]`, rows of `in_coords`, or U (one past the last row: a zero pad row) where the input
        is outside the grid or inactive.
    """
    k = _triple(kernel_size, 'kernel_size')
    device = in_coords.device
    num_in = in_coords.shape[0]
    taps = _kernel_taps(k, device)
    out = out_coords.long()
    if subm:
        pos = out[:, None, 1:] + taps[None] - _per_axis([kk // 2 for kk in k], device)
    else:
        s, p = _per_axis(_triple(stride, 'stride'), device), _per_axis(_triple(padding, 'padding'), device)
        pos = out[:, None, 1:] * s - p + taps[None]                                # [U', K, 3]
    inside = ((pos >= 0) & (pos < _per_axis(spatial_shape, device))).all(-1)
    if num_in == 0:
        return torch.zeros(inside.shape, dtype=torch.long, device=device)   # all pad (index U = 0)
    wanted = torch.cat([out[:, None, :1].expand(-1, taps.shape[0], 1), pos], dim=-1)
    keys = linear_index(wanted.reshape(-1, 4), spatial_shape).reshape(inside.shape)
    sorted_keys, order = torch.sort(linear_index(in_coords, spatial_shape))
    # outside the grid a linear index may alias another site: `inside` masks it
    at = torch.searchsorted(sorted_keys, keys).clamp(max=num_in - 1)
    found = inside & (sorted_keys[at] == keys)
    return torch.where(found, order[at], torch.full_like(at, num_in))


def sparse_convolution(features, coords, weight, bias, batch_size, spatial_shape, stride=1, padding=0, subm=False):
    """Functional sparse conv with spconv's semantics (module docstring), kernel size from the weight.

    Args:
        features (Tensor): `[U, C_in]`; coords: int `[U, 4]` sites (b, i0, i1, i2), unique.
        weight (Tensor): `[C_out, k0, k1, k2, C_in]` (KRSC); bias: `[C_out]` or None.
        batch_size (int), spatial_shape (D0, D1, D2): the input grid.
        stride, padding: ints or 3-tuples (regular conv only).
        subm (bool): submanifold: outputs at `coords` in the same order, odd kernel, stride 1.
    Returns:
        tuple: features `[U', C_out]`, int64 sites `[U', 4]`, the output grid size.
    """
    if features.dim() != 2 or features.shape[0] != coords.shape[0]:
        raise ValueError(f'features {tuple(features.shape)} must be [U, C_in] for {coords.shape[0]} sites')
    if weight.dim() != 5 or weight.shape[-1] != features.shape[1]:
        raise ValueError(f'weight {tuple(weight.shape)} must be [C_out, k0, k1, k2, C_in={features.shape[1]}]')
    spatial_shape = tuple(int(n) for n in spatial_shape)
    _check_coords(coords, batch_size, spatial_shape)
    kernel = tuple(weight.shape[1:4])
    coords = coords.long()
    if subm:
        if any(kk % 2 == 0 for kk in kernel) or _triple(stride, 'stride') != (1, 1, 1):
            raise ValueError(f'a submanifold conv needs an odd kernel and stride 1, got kernel {kernel}, stride '
                             f'{stride}')
        out_coords, out_shape = coords, spatial_shape
    else:
        out_coords, out_shape = regular_output_sites(coords, batch_size, spatial_shape, kernel, stride, padding)
    table = rulebook(coords, out_coords, spatial_shape, kernel, stride, padding, subm)
    out = _apply_conv(features, weight, bias, table)
    return out, out_coords, out_shape


class SparseConvolution3d(nn.Module):
    """Regular sparse conv (spconv's `SparseConv3d`) on a `SparseTensor`: any kernel, stride, padding.

    Parameters as spconv >= 2.2 stores them: `weight` `[C_out, k0, k1, k2, C_in]`, `bias` `[C_out]` (if any);
    spconv's initialisation (`spconv_init_`). `indice_key` (spconv's rule-book cache key) is accepted and unused:
    every conv builds its own table.
    """
    subm = False
    takes_sparse_tensor = True   # SparseSequential passes it the SparseTensor, not the features

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, indice_key=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _triple(kernel_size, 'kernel_size')
        self.stride, self.padding = _triple(stride, 'stride'), _triple(padding, 'padding')
        self.indice_key = indice_key
        if self.subm and (any(k % 2 == 0 for k in self.kernel_size) or self.stride != (1, 1, 1)):
            raise ValueError(f'{type(self).__name__}: a submanifold conv needs an odd kernel and stride 1, got '
                             f'kernel {self.kernel_size}, stride {self.stride}')
        self.weight = nn.Parameter(torch.empty(self.out_channels, *self.kernel_size, self.in_channels))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        spconv_init_(self.weight, self.bias)

    def forward(self, x):
        """SparseTensor `[U, C_in]` -> SparseTensor `[U', C_out]` on the output grid."""
        feats, coords, shape = sparse_convolution(x.features, x.coords, self.weight, self.bias, x.batch_size,
                                                  x.spatial_shape, self.stride, self.padding, self.subm)
        return SparseTensor._of(feats, coords, shape, x.batch_size)

    def extra_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, subm={self.subm}, bias={self.bias is not None}')


class SubMConvolution3d(SparseConvolution3d):
    """Submanifold sparse conv (spconv's `SubMConv3d`): outputs at the input sites, same order; odd kernel,
    centred (the padding argument is accepted for the configs' sake; spconv centres a submanifold kernel too)."""
    subm = True


class SparseSequential(nn.Sequential):
    """spconv's `SparseSequential`: sparse convs get the `SparseTensor`, every other module (BatchNorm1d, ReLU)
    its features `[U, C]`. The children are numbered 0, 1, ... as spconv's, so the state-dict keys match."""
    takes_sparse_tensor = True   # nested SparseSequentials get the SparseTensor too

    def forward(self, x):
        for module in self:
            if getattr(module, 'takes_sparse_tensor', False):
                x = module(x)
            else:
                x = x.replace_features(module(x.features))
        return x
