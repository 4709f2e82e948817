"""The CPU equivalents of mmcv's CUDA-only ops (tests/fidelity/authors_code.py) against independent computations;
these need neither checkout, so they run in the normal suite.

* the sparse-convolution rulebook and convolution, driven through mmcv's own `SubMConv3d` / `SparseConv3d`
  modules: the densified output equals a dense `F.conv3d` of the densified input (everywhere for a regular
  convolution, whose inactive outputs see no active input; at the input sites for a submanifold one), and the
  active output sites are exactly those whose window holds an active input;
* `furthest_point_sample_kernel` equals a scalar loop run as the kernel's threads and reduction tree, on points
  with exact distance ties where the kernel's choice is not the first index;
* `knn_brute_force` equals the first minimum of a float64 distance table, with a tie.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from authors_code import furthest_point_sample_kernel, install_cpu_sparse_conv, knn_brute_force

SHAPE = (7, 9, 8)          # (z, y, x) grid of the sparse tests


def sparse_input(num_sites=40, channels=3, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    linear = torch.randperm(batch * math.prod(SHAPE), generator=gen)[:num_sites]
    sites, rest = [], linear
    for size in reversed(SHAPE):
        sites.append(rest % size)
        rest = rest // size
    indices = torch.stack([rest] + sites[::-1], dim=1).int()                # (b, z, y, x)
    return indices, torch.randn(num_sites, channels, generator=gen, dtype=torch.float64)


def dense(indices, features, batch=2):
    grid = features.new_zeros(batch, features.shape[1], *SHAPE)
    b, z, y, x = indices.long().unbind(1)
    grid[b, :, z, y, x] = features
    return grid


@pytest.mark.parametrize('kind, stride, padding', [('subm', 1, 1), ('regular', 2, (0, 1, 1)),
                                                  ('regular', (2, 1, 1), 0)])
def test_sparse_conv_equals_dense_conv(kind, stride, padding, monkeypatch):
    from mmcv.ops import SparseConv3d, SparseConvTensor, SubMConv3d
    install_cpu_sparse_conv(monkeypatch.setattr)   # undone after the test: the rest of the suite sees mmcv's own
    indices, features = sparse_input()
    kernel = 3 if stride != (2, 1, 1) else (3, 1, 1)
    if kind == 'subm':
        conv = SubMConv3d(3, 4, kernel, padding=padding, bias=False, indice_key='k')
    else:
        conv = SparseConv3d(3, 4, kernel, stride=stride, padding=padding, bias=False, indice_key='k')
    conv = conv.double()
    with torch.no_grad():
        conv.weight.normal_()
        out = conv(SparseConvTensor(features, indices, list(SHAPE), 2))
        # mmcv's weight [k_z, k_y, k_x, C_in, C_out] -> conv3d's [C_out, C_in, k_z, k_y, k_x] (a cross-correlation)
        ref = F.conv3d(dense(indices, features), conv.weight.permute(4, 3, 0, 1, 2), stride=stride, padding=padding)
        reach = F.conv3d(dense(indices, torch.ones_like(features[:, :1])), torch.ones(1, 1, *conv.kernel_size,
                         dtype=torch.float64), stride=stride, padding=padding)[:, 0] > 0
    got = out.dense()
    # float64 sums of at most 27 x 3 products in two orders: 1e-12 of the scale is far above their rounding
    tol = 1e-12 * ref.abs().max().item()
    if kind == 'subm':
        assert list(out.spatial_shape) == list(SHAPE) and torch.equal(out.indices, indices)
        b, z, y, x = indices.long().unbind(1)
        assert (got[b, :, z, y, x] - ref[b, :, z, y, x]).abs().max() <= tol
    else:
        assert tuple(got.shape) == tuple(ref.shape)
        assert (got - ref).abs().max() <= tol
        active = torch.zeros_like(reach)
        b, z, y, x = out.indices.long().unbind(1)
        active[b, z, y, x] = True
        assert torch.equal(active, reach) and len(out.indices) == int(reach.sum())


def kernel_threads_loop(xyz, num_samples):
    """mmcv's furthest_point_sampling kernel as a scalar loop: each thread's strided scan keeping its first strict
    maximum, then the halving tree that keeps the lower thread unless the upper one is strictly larger. For
    integer coordinates (below) every squared distance is exact in float32 and in Python's floats alike."""
    n = len(xyz)
    block = max(min(1 << int(math.log(n) / math.log(2.0)), 1024), 1)
    temp = [1e10] * n
    chosen, old = [0], 0
    for _ in range(1, num_samples):
        x1, y1, z1 = xyz[old]
        best, best_i = [-1.0] * block, [0] * block
        for t in range(block):
            for k in range(t, n, block):
                x2, y2, z2 = xyz[k]
                temp[k] = min((x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1), temp[k])
                if temp[k] > best[t]:
                    best[t], best_i[t] = temp[k], k
        half = block
        while half > 1:
            half //= 2
            for t in range(half):
                if best[t + half] > best[t]:
                    best[t], best_i[t] = best[t + half], best_i[t + half]
        old = best_i[0]
        chosen.append(old)
    return chosen


def test_furthest_point_sample_kernel_ties():
    # integer coordinates: every squared distance is an exact float32 integer, so ties are exact. With 10 points
    # the block has 8 threads: points 8 and 9 are scanned by threads 0 and 1 after points 0 and 1
    xyz = torch.tensor([[0, 0, 0], [3, 0, 0], [0, 1, 0], [0, 0, 2], [1, 1, 0], [2, 0, 0], [0, 2, 1], [1, 0, 1],
                        [-3, 0, 0], [0, -3, 0]], dtype=torch.float32)
    got = furthest_point_sample_kernel(xyz[None], 10)[0].tolist()
    assert got == kernel_threads_loop(xyz.tolist(), 10)
    # from point 0, points 1 (thread 1), 8 (thread 0) and 9 (thread 1) all lie at 9: thread 0's point 8 wins
    assert got[1] == 8
    rng = torch.Generator().manual_seed(0)
    cloud = torch.randint(-4, 5, (40, 3), generator=rng).float()
    assert furthest_point_sample_kernel(cloud[None], 25)[0].tolist() == kernel_threads_loop(cloud.tolist(), 25)


def test_knn_brute_force_first_minimum():
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 2, 0]]])
    centres = torch.tensor([[[0.0, 0, 0.5], [0.5, 0, 0], [0, 1, 0]]])
    got = knn_brute_force(1, points, centres)
    assert got.dtype == torch.int32 and got.shape == (1, 1, 3)
    # centre 1 ties between points 0 and 1 (0.25 each): the lower index; centre 2 ties 0 and 3 (1 each)
    assert got[0, 0].tolist() == [0, 0, 0]
    gen = torch.Generator().manual_seed(1)
    pts, ctr = torch.randn(1, 50, 3, generator=gen), torch.randn(1, 20, 3, generator=gen)
    table = ((ctr[0, :, None].double() - pts[0, None].double()) ** 2).sum(-1)
    assert torch.equal(knn_brute_force(1, pts, ctr)[0, 0].long(), table.argmin(1))
    assert torch.equal(knn_brute_force(3, pts, ctr)[0].long().t(), table.argsort(1)[:, :3])
