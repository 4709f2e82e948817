"""The general sparse convolutions of models/sparse_conv.py (SparseConvolution3d, SubMConvolution3d, the LiDAR
encoder's kernels, strides and paddings) against torch's dense conv3d on a zero-filled grid, in float64:

* a regular conv's active output sites are the cells where the dense conv of the occupancy indicator with an
  all-ones kernel is positive (spconv's SparseConv3d indices), its values the dense conv read there;
* a submanifold conv's outputs sit at its input sites and equal the dense conv with padding k // 2 read there.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.sparse_conv import (
    SparseConvolution3d,
    SparseSequential,
    SparseTensor,
    SubMConvolution3d,
    conv_output_shape,
    dilate_sites,
    neighbour_table,
    regular_output_sites,
    rulebook,
    sparse_convolution,
)
from test_opusv2_sparse_conv import at_sites, dense_grid, random_sites

SHAPE = (9, 8, 7)   # odd and even sizes: the floor of (n + 2p - k) / s + 1 matters
B = 2
# float64 machine epsilon. A float64 sum of K terms is within K * eps/2 of the exact sum times the sum of the
# terms' magnitudes, in any order: two implementations differ by at most K * eps times that magnitude sum, which
# is the same convolution on |features|, |weights|, |bias| (`magnitude`).
EPS64 = float(torch.finfo(torch.float64).eps)
# (kernel, stride, padding): the LiDAR encoder's strided convs (SparseEncoder of OPUS-Fusion) and more
REGULAR = [(3, 2, 1), (3, 2, (0, 1, 1)), ((3, 1, 1), (2, 1, 1), 0), (3, 1, 1), (2, 2, 0), ((1, 3, 2), (1, 2, 3), 1)]


def weights(c_in, c_out, kernel, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((c_out,) + tuple(kernel) + (c_in,), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=g, dtype=torch.float64, requires_grad=True)
    return w, b


def dense_conv(feats, coords, w, b, stride, padding):
    # KRSC [out, k0, k1, k2, in] -> conv3d's [out, in, k0, k1, k2]; both cross-correlations
    return F.conv3d(dense_grid(feats, coords, B, SHAPE), w.permute(0, 4, 1, 2, 3), b, stride=stride, padding=padding)


def magnitude(feats, coords, w, b, stride, padding, out_coords):
    with torch.no_grad():
        return at_sites(dense_conv(feats.abs(), coords, w.abs(), b.abs(), stride, padding), out_coords)


def kernel_of(kernel):
    return (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)


@pytest.mark.parametrize('kernel,stride,padding', REGULAR)
def test_regular_conv_sites_and_values_match_dense_conv3d(kernel, stride, padding):
    kernel = kernel_of(kernel)
    coords = random_sites(B, SHAPE, 0.1, seed=11)
    c_in, c_out = 3, 4
    feats = torch.randn(coords.shape[0], c_in, dtype=torch.float64, requires_grad=True)
    w, b = weights(c_in, c_out, kernel, seed=12)
    out, out_coords, out_shape = sparse_convolution(feats, coords, w, b, B, SHAPE, stride, padding, subm=False)
    # the active set: a dense conv of the indicator with an all-ones kernel is positive exactly there
    indicator = dense_grid(torch.ones(coords.shape[0], 1, dtype=torch.float64), coords, B, SHAPE)
    reach = F.conv3d(indicator, torch.ones((1, 1) + kernel, dtype=torch.float64), stride=stride, padding=padding)
    assert tuple(reach.shape[2:]) == out_shape == conv_output_shape(SHAPE, kernel, stride, padding)
    want_sites = torch.nonzero(reach[:, 0] > 0)   # (b, o0, o1, o2), lexicographic: the documented order
    assert torch.equal(out_coords, want_sites)
    ref_dense = dense_conv(feats, coords, w, b, stride, padding)
    ref = at_sites(ref_dense, out_coords)
    taps = kernel[0] * kernel[1] * kernel[2]
    mag = magnitude(feats, coords, w, b, stride, padding, out_coords)
    torch.testing.assert_close(out, ref, rtol=0, atol=(taps * c_in + 1) * EPS64 * mag.max().item())
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (feats, w, b), grad)
    want = torch.autograd.grad(ref, (feats, w, b), grad)
    # a feature's gradient sums <= taps * c_out terms, a weight's or the bias's one term per output site; the
    # magnitudes: the same gradients of the all-|.| convolution back-propagating |grad|
    leaves = [t.detach().abs().requires_grad_(True) for t in (feats, w, b)]
    mags = torch.autograd.grad(at_sites(dense_conv(*leaves[:1], coords, *leaves[1:], stride, padding), out_coords),
                               leaves, grad.abs())
    for g1, g2, m, terms in zip(got, want, mags, (taps * c_out, len(out), len(out))):
        torch.testing.assert_close(g1, g2, rtol=0, atol=terms * EPS64 * m.max().item())


@pytest.mark.parametrize('kernel', [3, (1, 3, 5), 1])
def test_submanifold_conv_outputs_at_the_input_sites(kernel):
    kernel = kernel_of(kernel)
    coords = random_sites(B, SHAPE, 0.15, seed=13)
    c_in, c_out = 2, 3
    feats = torch.randn(coords.shape[0], c_in, dtype=torch.float64, requires_grad=True)
    w, b = weights(c_in, c_out, kernel, seed=14)
    conv = SubMConvolution3d(c_in, c_out, kernel, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    y = conv(SparseTensor(feats, coords, SHAPE, B))
    assert torch.equal(y.coords, coords) and y.spatial_shape == SHAPE
    centred = tuple(k // 2 for k in kernel)
    ref = at_sites(dense_conv(feats, coords, w, b, 1, centred), coords)
    taps = kernel[0] * kernel[1] * kernel[2]
    mag = magnitude(feats, coords, w, b, 1, centred, coords)
    torch.testing.assert_close(y.features, ref, rtol=0, atol=(taps * c_in + 1) * EPS64 * mag.max().item())


def test_a_single_tap_reads_the_input_at_o_times_s_minus_p_plus_t():
    """One active input, a kernel that is 1 at one tap: the output appears where o*s - p + t = input."""
    shape, site = (7, 7, 7), (0, 4, 3, 5)
    kernel, stride, padding = (3, 3, 3), (2, 2, 2), (1, 0, 1)
    feats = torch.ones(1, 1, dtype=torch.float64)
    for t0 in range(3):
        for t1 in range(3):
            for t2 in range(3):
                w = torch.zeros((1,) + kernel + (1,), dtype=torch.float64)
                w[0, t0, t1, t2, 0] = 1.0
                out, coords, _ = sparse_convolution(feats, torch.tensor([site]), w, None, 1, shape, stride, padding)
                hot = [tuple(c) for c, v in zip(coords.tolist(), out[:, 0].tolist()) if v == 1.0]
                want = [(0,) + tuple((i + p - t) // s for i, p, t, s in zip(site[1:], padding, (t0, t1, t2), stride))]
                divisible = all((i + p - t) % s == 0 for i, p, t, s in zip(site[1:], padding, (t0, t1, t2), stride))
                assert hot == (want if divisible else []), (t0, t1, t2)


def test_the_3x3x3_paths_agree_with_the_dense_lookup_of_opusv2():
    """rulebook (binary search) = neighbour_table (dense lookup grid) and regular_output_sites = dilate_sites for
    the stride-1, padding-1, 3x3x3 convolutions of OPUS-V2's CPD module."""
    coords = random_sites(B, SHAPE, 0.1, seed=15)
    sites, shape = regular_output_sites(coords, B, SHAPE, 3, 1, 1)
    assert shape == SHAPE and torch.equal(sites, dilate_sites(coords, B, SHAPE))
    for out in (coords, sites):
        assert torch.equal(rulebook(coords, out, SHAPE, 3, 1, 1, subm=False), neighbour_table(coords, out, B, SHAPE))
        assert torch.equal(rulebook(coords, out, SHAPE, 3, 1, 1, subm=True), neighbour_table(coords, out, B, SHAPE))


def test_gradcheck_of_a_strided_conv():
    shape = (5, 4, 3)
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 1], [0, 4, 3, 2], [1, 2, 1, 0]])
    feats = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    w, b = weights(2, 3, (3, 1, 3), seed=16)
    # linear in each input: central differences carry only the float64 rounding of f (a few dozen terms of
    # magnitude ~10: ~1e-13) over 2h = 2e-6, ~1e-7: atol 1e-6, no rtol
    assert torch.autograd.gradcheck(
        lambda f, w_, b_: sparse_convolution(f, coords, w_, b_, 2, shape, (2, 1, 2), (1, 0, 1))[0],
        (feats, w, b), fast_mode=True, atol=1e-6, rtol=0)


def test_sequential_dense_and_empty_input():
    coords = random_sites(B, SHAPE, 0.1, seed=17)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64)
    net = SparseSequential(SparseConvolution3d(3, 5, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(5),
                           nn.ReLU()).double().eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        y = net(SparseTensor(feats, coords, SHAPE, B))
        conv_only = net[0](SparseTensor(feats, coords, SHAPE, B))
    bn = net[1]
    want = torch.relu((conv_only.features - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
                      + bn.bias)
    assert torch.equal(y.coords, conv_only.coords)
    # BatchNorm's kernel orders subtract, rsqrt/divide, scale and shift its own way: each of the ~5 float64
    # operations adds <= eps/2 relative to the magnitude of its terms
    scale = (conv_only.features - bn.running_mean).abs() / torch.sqrt(bn.running_var + bn.eps) * bn.weight.abs()
    torch.testing.assert_close(y.features, want, rtol=0, atol=8 * EPS64 * (scale + bn.bias.abs()).max().item())
    dense = y.dense()
    assert dense.shape == (B, 5) + conv_output_shape(SHAPE, 3, 2, 1)
    assert torch.equal(at_sites(dense, y.coords), y.features)
    assert int((dense.abs().sum(1) > 0).sum()) <= y.coords.shape[0]   # zeros elsewhere
    out, out_coords, _ = sparse_convolution(feats[:0], coords[:0], net[0].weight, None, B, SHAPE, 2, 1)
    assert out.shape == (0, 5) and out_coords.shape == (0, 4)


def test_bad_inputs():
    with pytest.raises(ValueError, match='odd kernel and stride 1'):
        SubMConvolution3d(1, 1, 2)
    with pytest.raises(ValueError, match='odd kernel and stride 1'):
        SubMConvolution3d(1, 1, 3, stride=2)
    with pytest.raises(ValueError, match='leaves nothing'):
        conv_output_shape((2, 8, 8), 3, 1, 0)
    with pytest.raises(ValueError, match=r'must be \[C_out, k0, k1, k2, C_in=2\]'):
        sparse_convolution(torch.zeros(1, 2), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, 3, 3, 1), None,
                           1, SHAPE)
    with pytest.raises(ValueError, match='outside'):
        SparseTensor(torch.zeros(1, 1), torch.tensor([[0, 9, 0, 0]]), SHAPE, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_same_sites_and_values_on_the_gpu():
    coords = random_sites(B, SHAPE, 0.1, seed=18)
    feats = torch.randn(coords.shape[0], 4, dtype=torch.float64)
    for kernel, stride, padding in REGULAR:
        w, b = weights(4, 4, kernel_of(kernel), seed=19)
        w, b = w.detach(), b.detach()
        cpu, cpu_coords, _ = sparse_convolution(feats, coords, w, b, B, SHAPE, stride, padding)
        gpu, gpu_coords, _ = sparse_convolution(feats.cuda(), coords.cuda(), w.cuda(), b.cuda(), B, SHAPE, stride,
                                                padding)
        assert torch.equal(gpu_coords.cpu(), cpu_coords)
        taps = w[0, ..., 0].numel()
        mag = magnitude(feats, coords, w, b, stride, padding, cpu_coords)
        # other summation orders on the GPU: the bound of the dense comparison
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=(taps * 4 + 1) * EPS64 * mag.max().item())
