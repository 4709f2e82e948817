"""models/sparse_conv.py against dense references: torch's Conv3d on a zero-filled grid read at the
active sites (float64, to 1e-12), Python loops for the active set and for the per-voxel max."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from models import sparse_conv
from models.sparse_conv import (
    KERNEL_OFFSETS,
    SparseConv3d,
    SubMConv3d,
    dilate_sites,
    neighbour_table,
    scatter_max,
    sparse_conv3d,
)

SHAPE = (7, 6, 5)   # small grid: every site is near a border somewhere
# float64 machine epsilon 2^-52. A K-term float64 sum is within K * 2^-53 of the sum of its terms' magnitudes,
# in any order: two implementations of it differ by at most K * eps times that magnitude sum, which is the same
# computation on |inputs| (`magnitudes`).
EPS64 = float(torch.finfo(torch.float64).eps)


def random_sites(batch, shape, density, seed):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand((batch,) + shape, generator=g) < density
    occ[0, 0, 0, 0] = occ[-1, -1, -1, -1] = True   # corners: the dilation must clip there
    return torch.nonzero(occ)


def dense_grid(features, coords, batch, shape):
    grid = torch.zeros((batch, features.shape[1]) + shape, dtype=features.dtype)
    grid[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]] = features
    return grid


def at_sites(grid, coords):
    return grid[coords[:, 0], :, coords[:, 1], coords[:, 2], coords[:, 3]]


def magnitudes(feats, coords, w, b, batch, out_coords, grad=None, shape=SHAPE):
    """The dense reference on |feats|, |w|, |b|: per output site the sum of its terms' magnitudes; with `grad`,
    also those of the gradients of feats, w, b (back-propagating |grad|)."""
    leaves = [t.detach().abs().requires_grad_(grad is not None) for t in (feats, w, b)]
    out = at_sites(F.conv3d(dense_grid(leaves[0], coords, batch, shape), leaves[1].permute(0, 4, 1, 2, 3), leaves[2],
                            padding=1), out_coords)
    if grad is None:
        return out.detach()
    return out.detach(), torch.autograd.grad(out, leaves, grad.abs())


def params(c_in, c_out, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c_out, 3, 3, 3, c_in, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=g, dtype=torch.float64, requires_grad=True)
    return w, b


# the two formulations of a conv (`sparse_conv._apply_conv` picks the one with the smaller intermediate)
FORMULATIONS = {'gathered inputs': sparse_conv.GatheredInputs, 'products per tap': sparse_conv.ProductsPerTap}


@pytest.fixture(params=list(FORMULATIONS))
def formulation(request, monkeypatch):
    chosen = FORMULATIONS[request.param]
    monkeypatch.setattr(sparse_conv, '_apply_conv', lambda *args: sparse_conv._SparseConvFunction.apply(*args, chosen))
    return request.param


@pytest.mark.parametrize('subm', [False, True])
def test_conv_matches_dense_conv3d_at_output_sites(subm, formulation):
    B, c_in, c_out = 2, 3, 4
    coords = random_sites(B, SHAPE, 0.12, seed=1)
    feats = torch.randn(coords.shape[0], c_in, dtype=torch.float64, requires_grad=True)
    w, b = params(c_in, c_out, seed=2)
    out, out_coords = sparse_conv3d(feats, coords, w, b, B, SHAPE, subm)
    # dense reference: KRSC [out, kx, ky, kz, in] -> conv3d's [out, in, kx, ky, kz]; cross-correlation
    ref = at_sites(F.conv3d(dense_grid(feats, coords, B, SHAPE), w.permute(0, 4, 1, 2, 3), b, padding=1),
                   out_coords)
    grad = torch.randn_like(out)
    mag, grad_mags = magnitudes(feats, coords, w, b, B, out_coords, grad)
    # each output sums <= 27 * c_in + 1 terms (zeros of the dense grid add no rounding)
    torch.testing.assert_close(out, ref, rtol=0, atol=(27 * c_in + 1) * EPS64 * mag.max().item())
    if subm:
        assert torch.equal(out_coords, coords)
    got = torch.autograd.grad(out, (feats, w, b), grad)
    want = torch.autograd.grad(ref, (feats, w, b), grad)
    # gradient sums: 27 * c_out terms per feature, one term per output site for a weight or the bias
    for g1, g2, m, terms in zip(got, want, grad_mags, (27 * c_out, len(out), len(out))):
        torch.testing.assert_close(g1, g2, rtol=0, atol=terms * EPS64 * m.max().item())


def test_a_conv_in_several_chunks_matches_dense_conv3d(monkeypatch, formulation):
    """More output sites than one chunk holds (`CHUNK_ELEMENTS` small: chunks of the 1,024-row minimum, or of one
    tap): the chunked gathers, GEMMs, the products' sums over tap chunks and the weight gradient's sum over chunks
    give the dense reference's values."""
    monkeypatch.setattr(sparse_conv, 'CHUNK_ELEMENTS', 1)
    B, shape, c_in, c_out = 1, (24, 24, 8), 2, 3
    g = torch.Generator().manual_seed(4)
    coords = torch.nonzero(torch.rand((B,) + shape, generator=g) < 0.08)
    feats = torch.randn(coords.shape[0], c_in, generator=g, dtype=torch.float64, requires_grad=True)
    w, b = params(c_in, c_out, seed=5)
    out, out_coords = sparse_conv3d(feats, coords, w, b, B, shape, subm=False)
    assert len(out) > 2 * 1024          # at least three chunks
    ref = at_sites(F.conv3d(dense_grid(feats, coords, B, shape), w.permute(0, 4, 1, 2, 3), b, padding=1), out_coords)
    grad = torch.randn_like(out)
    mag, grad_mags = magnitudes(feats, coords, w, b, B, out_coords, grad, shape=shape)
    # each output is a float64 sum of at most 27 * c_in + 1 terms (taps x channels, and the bias), in another order
    # and grouping (chunks, taps) than conv3d's: two such sums differ by at most that many float64 epsilons times the
    # sum of the terms' magnitudes, `mag` (the same conv on |inputs|); hardware-independent, IEEE float64
    torch.testing.assert_close(out, ref, rtol=0, atol=(27 * c_in + 1) * EPS64 * mag.max().item())
    got = torch.autograd.grad(out, (feats, w, b), grad)
    want = torch.autograd.grad(ref, (feats, w, b), grad)
    # the same bound per gradient entry, by its number of float64 terms: 27 * c_out for a feature (the outputs it
    # feeds), one per output site for a weight or the bias (summed over chunks here); magnitudes from |grad|
    for g1, g2, m, terms in zip(got, want, grad_mags, (27 * c_out, len(out), len(out))):
        torch.testing.assert_close(g1, g2, rtol=0, atol=terms * EPS64 * m.max().item())


class MatmulPrecisions(TorchDispatchMode):
    """Records torch's float32 matmul precision at every matrix product dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ('mm', 'addmm', 'bmm'):
            self.seen.append(torch.get_float32_matmul_precision())
        return func(*args, **(kwargs or {}))


def test_the_backward_runs_at_its_forwards_matmul_precision(formulation):
    """A precision scope (accel/precision.py: the fast preset's TF32 'cpd' part) encloses a module's forward and has
    ended when autograd runs the backward: the conv's gradient GEMMs take the forward's precision from the conv
    itself, and the caller's precision is what it was afterwards. (On the CPU the precision does not change the
    products; the dispatcher sees the setting each one runs under.)"""
    B = 1
    coords = random_sites(B, SHAPE, 0.3, seed=6)
    feats = torch.randn(coords.shape[0], 2, requires_grad=True)
    w = torch.randn(3, 3, 3, 3, 2, requires_grad=True)
    assert torch.get_float32_matmul_precision() == 'highest'
    torch.set_float32_matmul_precision('high')
    try:
        out, _ = sparse_conv3d(feats, coords, w, None, B, SHAPE, subm=False)
    finally:
        torch.set_float32_matmul_precision('highest')
    with MatmulPrecisions() as spy:
        out.square().sum().backward()
    assert len(spy.seen) >= 2 and set(spy.seen) == {'high'}, spy.seen   # the feature and the weight gradients
    assert torch.get_float32_matmul_precision() == 'highest'


def test_active_set_is_the_input_dilated_by_one_voxel_clipped_and_sorted():
    B = 2
    coords = random_sites(B, SHAPE, 0.05, seed=3)
    expected = set()
    for b, x, y, z in coords.tolist():
        for dx, dy, dz in itertools.product((-1, 0, 1), repeat=3):
            site = (b, x + dx, y + dy, z + dz)
            if all(0 <= v < n for v, n in zip(site[1:], SHAPE)):
                expected.add(site)
    got = dilate_sites(coords, B, SHAPE)
    assert [tuple(s) for s in got.tolist()] == sorted(expected)


def test_kernel_axes_pair_with_x_y_z_offsets():
    """One input site, a kernel that is 1 at a single tap: the output appears at o = input - offset."""
    B, shape = 1, (5, 5, 5)
    site = torch.tensor([[0, 2, 2, 2]])
    feats = torch.ones(1, 1, dtype=torch.float64)
    for k, (dx, dy, dz) in enumerate(KERNEL_OFFSETS):
        w = torch.zeros(1, 3, 3, 3, 1, dtype=torch.float64)
        w[0, dx + 1, dy + 1, dz + 1, 0] = 1.0
        out, coords = sparse_conv3d(feats, site, w, None, B, shape, subm=False)
        hot = coords[out[:, 0] == 1.0].tolist()
        # y[o] = sum_d W[d] v[o + d]: the tap d reads the input at o + d, so o = (2, 2, 2) - d
        assert hot == [[0, 2 - dx, 2 - dy, 2 - dz]], (k, dx, dy, dz)


def test_cpd_stack_matches_dense_with_the_inactive_sites_zeroed():
    """SparseConv3d -> ReLU -> SubMConv3d equals dense conv -> mask to the grown set -> ReLU -> dense conv."""
    B, c = 2, 3
    coords = random_sites(B, SHAPE, 0.08, seed=4)
    feats = torch.randn(coords.shape[0], c, dtype=torch.float64)
    conv, subm = SparseConv3d(c, c).double(), SubMConv3d(c, 5).double()
    y, grown = conv(feats, coords, B, SHAPE)
    z, z_coords = subm(torch.relu(y), grown, B, SHAPE)
    assert torch.equal(z_coords, grown)
    dense = F.conv3d(dense_grid(feats, coords, B, SHAPE), conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)
    mask = torch.zeros((B, 1) + SHAPE, dtype=torch.float64)
    mask[grown[:, 0], 0, grown[:, 1], grown[:, 2], grown[:, 3]] = 1.0
    # the dense conv writes its bias everywhere: outside the active set the sparse conv has no site
    dense = F.conv3d(torch.relu(dense) * mask, subm.weight.permute(0, 4, 1, 2, 3), subm.bias, padding=1)
    # two convolutions of 27 * c + 1 terms: the first one's error (ReLU passes at most all of it) is summed by
    # the second with |weights|, so both fit in (K1 + K2) eps of the magnitudes of the chain on |inputs|
    with torch.no_grad():
        mag1 = F.conv3d(dense_grid(feats.abs(), coords, B, SHAPE), conv.weight.abs().permute(0, 4, 1, 2, 3),
                        conv.bias.abs(), padding=1) * mask
        mag2 = F.conv3d(mag1, subm.weight.abs().permute(0, 4, 1, 2, 3), subm.bias.abs(), padding=1)
    torch.testing.assert_close(z, at_sites(dense, grown), rtol=0, atol=2 * (27 * c + 1) * EPS64 * mag2.max().item())


def test_gradcheck_and_empty_input(formulation):
    B, shape = 1, (3, 3, 2)
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 1], [0, 2, 1, 0]])
    feats = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    w, b = params(2, 2, seed=5)
    # the convolution is linear in each input, so central differences have no truncation error, only the
    # float64 rounding of f (55 terms of magnitude ~10: ~6e-14) over 2h = 2e-6, ~3e-8: atol 1e-7, no rtol
    for subm in (False, True):
        assert torch.autograd.gradcheck(lambda f, w_, b_: sparse_conv3d(f, coords, w_, b_, B, shape, subm)[0],
                                        (feats, w, b), fast_mode=True, atol=1e-7, rtol=0)
    out, out_coords = sparse_conv3d(feats[:0], coords[:0], w, b, B, shape, subm=False)
    assert out.shape == (0, 2) and out_coords.shape == (0, 4)


def test_neighbour_table_and_bad_inputs():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]])
    table = neighbour_table(coords, coords, 1, (2, 1, 1))
    hits = {KERNEL_OFFSETS[k]: table[:, k].tolist() for k in range(27) if (table[:, k] < 2).any()}
    # row 2 = the zero pad row (inactive or outside the grid)
    assert hits == {(0, 0, 0): [0, 1], (1, 0, 0): [1, 2], (-1, 0, 0): [2, 0]}
    reverse = neighbour_table(coords, coords, 1, (2, 1, 1), sign=-1)
    assert reverse[:, KERNEL_OFFSETS.index((1, 0, 0))].tolist() == [2, 0]
    with pytest.raises(ValueError, match='outside'):
        sparse_conv3d(torch.zeros(1, 1), torch.tensor([[0, 2, 0, 0]]), torch.zeros(1, 3, 3, 3, 1), None, 1,
                      (2, 1, 1), True)
    with pytest.raises(ValueError, match='only kernel_size=3'):
        SparseConv3d(1, 1, kernel_size=1)


def test_spconv_default_init_bound():
    conv = SparseConv3d(64, 17)
    bound = 1 / (27 * 64) ** 0.5   # 0.02406
    assert conv.weight.shape == (17, 3, 3, 3, 64)
    assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
    # 17 * 27 * 64 = 29376 draws of U(-bound, bound) all stay below 0.9 * bound with probability 0.9^29376 ≈ 0
    assert conv.weight.abs().max() > 0.9 * bound


def test_scatter_max_against_a_python_loop():
    g = torch.Generator().manual_seed(6)
    N, C, U = 40, 3, 7                     # segment 6 stays empty
    src = torch.randint(-3, 4, (N, C), generator=g).double()   # small integers: many ties
    index = torch.randint(0, U - 1, (N,), generator=g)
    src.requires_grad_(True)
    out = scatter_max(src, index, U)
    weights = torch.randn(U, C, dtype=torch.float64, generator=g)
    (out * weights).sum().backward()
    want = torch.zeros(U, C, dtype=torch.float64)
    want_grad = torch.zeros(N, C, dtype=torch.float64)
    for u in range(U):
        rows = [i for i in range(N) if index[i] == u]
        for c in range(C):
            if not rows:
                continue   # empty segment: 0, no gradient
            best = max(rows, key=lambda i: (src[i, c].item(), -i))   # the first row attaining the max
            want[u, c] = src[best, c]
            want_grad[best, c] = weights[u, c]
    assert torch.equal(out.detach(), want)
    assert torch.equal(src.grad, want_grad)
    # without a gradient to route (no grad mode; a source without one) only the maximum is computed: the same values
    with torch.no_grad():
        assert torch.equal(scatter_max(src, index, U), want)
    assert torch.equal(scatter_max(src.detach(), index, U), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_same_results_on_the_gpu():
    B, c = 2, 4
    coords = random_sites(B, SHAPE, 0.1, seed=7)
    feats = torch.randn(coords.shape[0], c, dtype=torch.float64)
    w, b = params(c, c, seed=8)
    for subm in (False, True):
        cpu, cpu_coords = sparse_conv3d(feats, coords, w, b, B, SHAPE, subm)
        gpu, gpu_coords = sparse_conv3d(feats.cuda(), coords.cuda(), w.cuda(), b.cuda(), B, SHAPE, subm)
        assert torch.equal(gpu_coords.cpu(), cpu_coords)
        # other summation orders (and fused multiply-adds) on the GPU: the K = 27 * c + 1 bound of the dense test
        mag = magnitudes(feats, coords, w, b, B, cpu_coords)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=(27 * c + 1) * EPS64 * mag.max().item())
