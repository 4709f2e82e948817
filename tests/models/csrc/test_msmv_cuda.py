"""GPU tests of the CUDA sampling op and the CUDA 1-NN kernel (models/csrc/*.cu, msmv_cuda.py).

Skipped without a GPU or without the built extension. References are written here, independently
of the kernels and of the PyTorch fallback: the sampling formula of docs/method.md, "Sampling op", in float64 with
advanced indexing (its autograd gives the reference gradients), hand-computed values at borders,
and a float32 brute force for the 1-NN. One run checks forward and backward for 1 to 6 levels,
odd channel counts (every vector width and lane layout of the kernel), several point tiles,
fp64/fp32/fp16/bf16, misaligned and non-contiguous inputs, empty inputs and input errors.

Locations are mostly multiples of 1/4096: then u*(W-1) and v*(H-1) are exact in float32, the
kernel and the float64 reference interpolate at the same coordinates, and the only differences
left are float32 accumulation errors: K * eps relative to the largest value for the longest sum of K
terms behind a compared value (`accumulation_terms`). One test uses arbitrary float32 locations,
where float32 rounding of the pixel coordinate itself is allowed.
"""
import importlib
import os
import sys
import types

import pytest
import torch

DEVICE = 'cuda'
EPS32 = torch.finfo(torch.float32).eps   # 2^-23: one float32 rounding moves a value by <= half of it
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def import_csrc(name):
    """Import a models.csrc module. models/__init__.py registers the detector and needs mmcv and
    mmdet; a bare GPU machine may lack them, and the kernels do not: then the `models` package is
    stood in for by an empty one so that only models.csrc (torch only) is loaded."""
    try:
        import models  # noqa: F401
    except ImportError:
        pkg = types.ModuleType('models')
        pkg.__path__ = [os.path.join(ROOT, 'models')]
        sys.modules['models'] = pkg
    return importlib.import_module(name)


if not torch.cuda.is_available():
    pytest.skip('needs a CUDA GPU (the ops under test are CUDA kernels)', allow_module_level=True)
try:
    msmv_cuda = import_csrc('models.csrc.msmv_cuda')
except ImportError as err:
    # Skip only for the missing extension; any other import failure (e.g. of the `models`
    # package's dependencies) must show up as an error, not as a silent skip.
    if '_msmv_sampling_cuda is not available' not in str(err):
        raise
    pytest.skip(f'CUDA extension not built ({err})', allow_module_level=True)
msmv_sampling_cuda = msmv_cuda.msmv_sampling_cuda
knn1_cuda = msmv_cuda.knn1_cuda

# Level sizes (H, W): odd sizes, and 1-pixel maps from level 5 on.
SIZES = [(9, 17), (5, 9), (3, 5), (2, 3), (1, 4), (1, 1)]


# ------------------------------------------------------------------------------------------------
# References

def reference_sampling(feats, loc, weights):
    """The op (docs/method.md, "Sampling op") written out: feats L x [BB, N, H, W, C], loc [BB, Q, P, 3],
    weights [BB, Q, P, L] -> [BB, Q, C, P]; differentiable in feats, loc[..., :2] and weights (use float64)."""
    BB, Q, P, _ = loc.shape
    N = feats[0].shape[1]
    view = torch.floor((loc[..., 2].detach() * (N - 1)).clamp(0, N - 1) + 0.5).long()
    bidx = torch.arange(BB, device=loc.device).view(BB, 1, 1).expand(BB, Q, P)
    out = 0
    for lvl, feat in enumerate(feats):
        H, W = feat.shape[2], feat.shape[3]
        h = loc[..., 1] * (H - 1)
        w = loc[..., 0] * (W - 1)
        inside = (h > -1) & (h < H) & (w > -1) & (w < W)
        h = torch.where(inside, h, torch.zeros_like(h))   # keeps the integer casts below defined
        w = torch.where(inside, w, torch.zeros_like(w))
        h0, w0 = torch.floor(h.detach()), torch.floor(w.detach())
        lh, lw = h - h0, w - w0
        val = 0
        for dy in (0, 1):
            for dx in (0, 1):
                y, x = h0 + dy, w0 + dx
                ok = inside & (y >= 0) & (y < H) & (x >= 0) & (x < W)
                corner = feat[bidx, view, y.clamp(0, H - 1).long(), x.clamp(0, W - 1).long()]
                cw = (lh if dy else 1 - lh) * (lw if dx else 1 - lw)
                val = val + (cw * ok)[..., None] * corner
        out = out + weights[..., lvl, None] * val
    return out.permute(0, 1, 3, 2)


def make_inputs(BB=2, N=3, C=32, Q=5, P=7, L=4, dtype=torch.float32, seed=0, dyadic=True,
                margin=0.15, sizes=SIZES):
    """Random features (cast to dtype), locations in [-margin, 1+margin] (so some corners and
    samples fall outside), valid views k/(N-1), positive level weights. Locations and weights are
    float32 (float64 for float64 features)."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(BB, N, H, W, C, generator=g, dtype=torch.float64).to(dtype)
             for H, W in sizes[:L]]
    if dyadic:
        lo, hi = int(-margin * 4096), int((1 + margin) * 4096)
        uv = torch.randint(lo, hi + 1, (BB, Q, P, 2), generator=g).double() / 4096
    else:
        uv = torch.rand(BB, Q, P, 2, generator=g, dtype=torch.float64) * (1 + 2 * margin) - margin
    view = torch.randint(0, N, (BB, Q, P, 1), generator=g).double() / max(N - 1, 1)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    loc = torch.cat([uv, view], -1).to(acc)
    weights = torch.rand(BB, Q, P, L, generator=g, dtype=torch.float64).to(acc)
    return [f.to(DEVICE) for f in feats], loc.to(DEVICE), weights.to(DEVICE)


def run_op(feats, loc, weights, grad_out, op=None):
    """Forward + backward of the CUDA op; returns out, grad feats, grad loc, grad weights."""
    op = op or msmv_sampling_cuda
    feats = [f.detach().requires_grad_(True) for f in feats]  # detach keeps storage (and offset)
    loc = loc.detach().clone().requires_grad_(True)
    weights = weights.detach().clone().requires_grad_(True)
    out = op(feats, loc, weights)
    out.backward(grad_out)
    return out.detach(), [f.grad for f in feats], loc.grad, weights.grad


def run_reference(feats, loc, weights, grad_out):
    """The same quantities from reference_sampling in float64."""
    feats = [f.detach().double().requires_grad_(True) for f in feats]
    loc = loc.detach().double().requires_grad_(True)
    weights = weights.detach().double().requires_grad_(True)
    out = reference_sampling(feats, loc, weights)
    out.backward(grad_out.double())
    return out.detach(), [f.grad for f in feats], loc.grad, weights.grad


def rel_err(a, b):
    """max |a - b| / max |b| (0 when both are empty or b is all zeros and a equals it)."""
    if b.numel() == 0:
        return 0.0
    scale = b.abs().max().item()
    diff = (a.double() - b.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


def accumulation_terms(out, gfeats):
    """Length of the longest sum behind a compared value: a feature gradient gathers the 4 corners of all Q * P
    samples of its map (atomics: any order), a u or v gradient differences of 2 corners of 2 rows over C channels
    and L levels (4 C L terms), a weight gradient 4 C, an output 4 L. A K-term float32 sum is within K * eps / 2
    of the sum of its terms' magnitudes, whatever the order: two of them differ by at most K * eps of that,
    taken here relative to the largest compared value (of the terms' scale)."""
    _, Q, C, P = out.shape
    return max(4 * Q * P, 4 * C * len(gfeats))


def assert_all_close(got, ref, tol, what):
    out, gfeats, gloc, gw = got
    rout, rfeats, rloc, rw = ref
    errors = {'out': rel_err(out, rout), 'grad u,v': rel_err(gloc[..., :2], rloc[..., :2]),
              'grad weights': rel_err(gw, rw)}
    errors.update({f'grad feat {i}': rel_err(a, b) for i, (a, b) in enumerate(zip(gfeats, rfeats))})
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f'{what}: relative errors above {tol}: {bad} (all: {errors})'
    assert torch.all(gloc[..., 2] == 0), f'{what}: the view coordinate must get zero gradient'


# ------------------------------------------------------------------------------------------------
# Sampling op: agreement with the float64 reference

CASES = [  # (L, C, P): C picks the kernel's vector width / lanes per texel / channel chunks
    (4, 32, 7), (4, 64, 33), (5, 64, 7), (6, 16, 5), (4, 8, 1), (4, 48, 9), (4, 20, 7),
    (4, 3, 7), (2, 256, 3), (1, 64, 40), (5, 6, 32),
]


@pytest.mark.parametrize('L,C,P', CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_matches_float64_reference(L, C, P, dtype):
    feats, loc, weights = make_inputs(C=C, P=P, L=L, dtype=dtype, seed=L * 1000 + C + P)
    grad_out = torch.randn(loc.shape[0], loc.shape[1], C, P, device=DEVICE, dtype=torch.float64).to(dtype)
    got = run_op(feats, loc, weights, grad_out)
    ref = run_reference(feats, loc, weights, grad_out)
    assert got[0].dtype == dtype and got[0].shape == (2, 5, C, P)
    assert all(g.dtype == dtype for g in got[1]) and got[2].dtype == loc.dtype
    tol = accumulation_terms(got[0], got[1]) * torch.finfo(dtype).eps      # dyadic locations: sums only
    assert_all_close(got, ref, tol, f'L={L} C={C} P={P} {dtype}')


def test_model_like_shape_float32():
    """The model's layout (C = 64, 6 views, 4 levels of a 704x256 image / 16) at a moderate size."""
    sizes = [(16, 44), (8, 22), (4, 11), (2, 6)]
    feats, loc, weights = make_inputs(BB=4, N=6, C=64, Q=60, P=16, L=4, sizes=sizes, seed=7)
    grad_out = torch.randn(4, 60, 64, 16, device=DEVICE)
    got = run_op(feats, loc, weights, grad_out)
    assert_all_close(got, run_reference(feats, loc, weights, grad_out),
                     accumulation_terms(got[0], got[1]) * EPS32, 'model-like fp32')


def test_arbitrary_float32_locations():
    """Non-dyadic locations: float32 rounding of u*(W-1) (up to half an ulp of W, ~5e-7 px here)
    moves the interpolation point, so the bound is looser than with exact coordinates."""
    feats, loc, weights = make_inputs(C=32, P=9, L=4, seed=3, dyadic=False)
    grad_out = torch.randn(2, 5, 32, 9, device=DEVICE)
    got = run_op(feats, loc, weights, grad_out)
    # the sums' bound, plus u * (W_l - 1) rounding by <= 16 * eps / 2 = 8 eps px on each axis, which moves a
    # sample by <= the largest texel step (<= 2 max |f|) per pixel, on each of L levels: 2 * 2 * 8 * L eps
    tol = (accumulation_terms(got[0], got[1]) + 32 * len(feats)) * EPS32
    assert_all_close(got, run_reference(feats, loc, weights, grad_out), tol, 'arbitrary fp32 locations')


def test_gradcheck_float64():
    """Finite differences of the CUDA op itself (float64), all inputs at once."""
    feats, loc, weights = make_inputs(BB=1, N=2, C=4, Q=2, P=3, L=2, dtype=torch.float64, seed=11,
                                      dyadic=False, margin=0.1, sizes=[(4, 5), (2, 3)])
    inputs = [f.requires_grad_(True) for f in feats] + [loc.requires_grad_(True), weights.requires_grad_(True)]

    def fn(f0, f1, loc_, w_):
        return msmv_sampling_cuda([f0, f1], loc_, w_)

    # central differences in float64: the op is linear in the features and weights and, inside a texel cell, in
    # each of u and v (no truncation error); an output (|f| <= ~3, ~15 roundings) is within ~5e-15 of exact,
    # over 2h = 2e-6 that is 2.5e-9: atol 1e-7, no relative part
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=0)


def assert_low_precision_close(got, ref, dtype, what):
    """fp16/bf16 features: fp32 accumulation and one rounding to the feature dtype at the end. The
    reference sees the same (rounded) inputs in float64, so the output and the feature gradients
    may differ by that final rounding (half an ulp: 2^-11 fp16, 2^-8 bf16, relative) plus float32
    accumulation error (`accumulation_terms` * eps of the largest value); the float32 location / weight
    gradients by accumulation error only."""
    rel = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    out, gfeats, gloc, gw = got
    rout, rfeats, rloc, rw = ref
    assert out.dtype == dtype and all(g.dtype == dtype for g in gfeats)
    assert gloc.dtype == torch.float32 and gw.dtype == torch.float32
    acc = accumulation_terms(out, gfeats) * EPS32
    for name, a, b in [('output', out, rout)] + [(f'grad feat {i}', a, b)
                                                for i, (a, b) in enumerate(zip(gfeats, rfeats))]:
        tol = rel * b.abs() + acc * b.abs().max()
        excess = ((a.double() - b).abs() - tol).max().item()
        assert excess <= 0, f'{what} {name}: exceeds the rounding bound by {excess}'
    assert rel_err(gloc[..., :2], rloc[..., :2]) < acc, what
    assert rel_err(gw, rw) < acc, what
    assert torch.all(gloc[..., 2] == 0), what


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('L,C', [(4, 64), (5, 24), (4, 6)])
def test_low_precision_features(dtype, L, C):
    feats, loc, weights = make_inputs(C=C, P=9, L=L, dtype=dtype, seed=C + L)
    grad_out = torch.randn(2, 5, C, 9, device=DEVICE).to(dtype)
    assert_low_precision_close(run_op(feats, loc, weights, grad_out),
                               run_reference(feats, loc, weights, grad_out), dtype, f'L={L} C={C}')


# ------------------------------------------------------------------------------------------------
# Borders, outside points, view rounding: hand-computed values

def _texel(n, y, x, C):
    """Feature value of the hand-made map: 100 n + 10 y + x + c/16 (exact in float32)."""
    return 100.0 * n + 10.0 * y + x + torch.arange(C, dtype=torch.float64) / 16


def test_borders_and_outside_hand_computed():
    """One level H=3, W=5 (so v*(H-1) = 2v, u*(W-1) = 4u), two views, C=8, weight 1."""
    H, W, N, C = 3, 5, 2, 8
    fmap = torch.zeros(1, N, H, W, C, dtype=torch.float64)
    for n in range(N):
        for y in range(H):
            for x in range(W):
                fmap[0, n, y, x] = _texel(n, y, x, C)
    T = lambda n, y, x: _texel(n, y, x, C)  # noqa: E731
    zero = torch.zeros(C, dtype=torch.float64)
    # (u, v, view_norm) -> expected value, from the bilinear formula with zero padding
    cases = [
        ((0.0, 0.0, 0.0), T(0, 0, 0)),                       # first texel centre
        ((1.0, 1.0, 1.0), T(1, 2, 4)),                       # last texel centre, view 1
        ((0.25, 0.5, 0.0), T(0, 1, 1)),                      # interior texel centre
        ((-0.125, 0.5, 1.0), 0.5 * T(1, 1, 0)),              # w = -0.5: left corner outside
        ((1.125, 0.5, 0.0), 0.5 * T(0, 1, 4)),               # w = 4.5: right corner outside
        ((-0.1875, 0.5, 0.0), 0.25 * T(0, 1, 0)),            # w = -0.75
        ((0.5, -0.25, 0.0), 0.5 * T(0, 0, 2)),               # h = -0.5: upper row outside
        ((-0.125, -0.25, 1.0), 0.25 * T(1, 0, 0)),           # both outside half a pixel
        ((1.125, 1.25, 1.0), 0.25 * T(1, 2, 4)),             # beyond the far corner
        ((-0.25, 0.5, 0.0), zero),                           # w = -1 exactly: strict bound
        ((1.25, 0.5, 0.0), zero),                            # w = W exactly: strict bound
        ((0.5, -0.5, 0.0), zero),                            # h = -1 exactly
        ((0.5, 1.5, 0.0), zero),                             # h = H exactly
        ((7.0, -3.0, 0.0), zero),                            # far outside
        ((0.6875, 0.125, 1.0),                               # h = 0.25, w = 2.75
         0.75 * 0.25 * T(1, 0, 2) + 0.75 * 0.75 * T(1, 0, 3) + 0.25 * 0.25 * T(1, 1, 2)
         + 0.25 * 0.75 * T(1, 1, 3)),
        ((0.25, 0.5, 0.49), T(0, 1, 1)),                     # view 0.49 -> round to 0
        ((0.25, 0.5, 0.51), T(1, 1, 1)),                     # view 0.51 -> 1
        ((0.25, 0.5, 1.7), T(1, 1, 1)),                      # view beyond 1: clamped to the last
        ((0.25, 0.5, -0.3), T(0, 1, 1)),                     # view below 0: clamped to the first
    ]
    loc = torch.tensor([[[c[0] for c in cases]]], dtype=torch.float64)          # [1, 1, P, 3]
    expected = torch.stack([c[1] for c in cases], -1)[None, None]               # [1, 1, C, P]
    P = len(cases)
    for dtype in (torch.float32, torch.float64):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        feats = [fmap.to(DEVICE, dtype)]
        lo = loc.to(DEVICE, acc)
        w = torch.ones(1, 1, P, 1, device=DEVICE, dtype=acc)
        out = msmv_sampling_cuda(feats, lo, w)
        # exact: the coordinates, corner weights (multiples of 1/16) and texel values (11 significant bits) are
        # dyadic, so every product and the sums of <= 4 of them fit in float32's 24 bits
        torch.testing.assert_close(out.double(), expected.to(DEVICE), rtol=0, atol=0)
        # the reference implements the same conventions (sanity check of the reference itself)
        ref = reference_sampling([fmap.to(DEVICE)], loc.to(DEVICE), w.double())
        torch.testing.assert_close(ref, expected.to(DEVICE), rtol=0, atol=0)


def test_border_gradients_hand_computed():
    """d out / d(u, v) at w = -0.5, h = 1 (H=3, W=5, C=8, all upstream grads 1):
    out = lw * T(1, 0) with lw = w + 1 -> d/du = (W-1) * sum_c T(1,0)_c;
    h is an integer, lh = 0, rows 1 and 2 with column weight 0.5 -> d/dv = (H-1) * 0.5 * sum_c
    (T(2,0) - T(1,0))_c = 2 * 0.5 * 10 * 8 = 80; d/dweight = sum_c out_c. Strictly outside
    (w = -1): everything zero."""
    H, W, N, C = 3, 5, 1, 8
    fmap = torch.zeros(1, N, H, W, C, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            fmap[0, 0, y, x] = _texel(0, y, x, C)
    feats = [fmap.to(DEVICE, torch.float32).requires_grad_(True)]
    loc = torch.tensor([[[[-0.125, 0.5, 0.0], [-0.25, 0.5, 0.0]]]], device=DEVICE, requires_grad=True)
    w = torch.full((1, 1, 2, 1), 2.0, device=DEVICE, requires_grad=True)
    out = msmv_sampling_cuda(feats, loc, w)
    out.backward(torch.ones_like(out))
    s10 = _texel(0, 1, 0, C).sum().item()
    expect_loc = torch.tensor([[[[2.0 * 4 * s10, 2.0 * 80.0, 0.0], [0.0, 0.0, 0.0]]]])
    # dyadic texels, weights and coordinates: every term and partial sum is exact in float32; allow one rounding
    # of the result (eps relative) for a kernel that scales in another order; zeros must be exact zeros
    torch.testing.assert_close(loc.grad.cpu(), expect_loc, rtol=EPS32, atol=0)
    torch.testing.assert_close(w.grad.cpu(), torch.tensor([[[[0.5 * s10], [0.0]]]]), rtol=EPS32, atol=0)
    expect_feat = torch.zeros(1, N, H, W, C)
    expect_feat[0, 0, 1, 0] = 2.0 * 0.5    # level weight x corner weight, per channel
    torch.testing.assert_close(feats[0].grad.cpu(), expect_feat, rtol=0, atol=0)


def test_nan_location_reads_nothing():
    feats, loc, weights = make_inputs(C=16, P=4, L=4, seed=5)
    loc[0, 0, 1, 0] = float('nan')
    loc[1, 2, 3, 1] = float('nan')
    loc[0, 3, 0, 2] = float('nan')  # NaN view -> view 0 (no out-of-bounds read)
    out, gfeats, gloc, gw = run_op(feats, loc, weights, torch.ones(2, 5, 16, 4, device=DEVICE))
    assert torch.all(out[0, 0, :, 1] == 0) and torch.all(out[1, 2, :, 3] == 0)
    assert torch.all(gloc[0, 0, 1] == 0) and torch.all(gw[1, 2, 3] == 0)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in gfeats)


# ------------------------------------------------------------------------------------------------
# Layout edge cases

@pytest.mark.parametrize('dtype,offset', [(torch.float32, 1), (torch.float32, 2), (torch.float16, 2),
                                          (torch.bfloat16, 1)])
def test_misaligned_feature_pointers(dtype, offset):
    """Features that are contiguous views at an odd storage offset: the kernel must drop to
    narrower loads instead of faulting or reading wrong channels."""
    feats, loc, weights = make_inputs(C=32, P=5, L=4, dtype=dtype, seed=offset)
    shifted = []
    for f in feats:
        buf = torch.zeros(f.numel() + offset, device=DEVICE, dtype=dtype)
        buf[offset:] = f.reshape(-1)
        shifted.append(buf[offset:].view(f.shape))
    assert all(f.data_ptr() % 16 != 0 for f in shifted) and all(f.is_contiguous() for f in shifted)
    grad_out = torch.randn(2, 5, 32, 5, device=DEVICE).to(dtype)
    got = run_op(shifted, loc, weights, grad_out)
    ref = run_reference(feats, loc, weights, grad_out)
    if dtype == torch.float32:
        assert_all_close(got, ref, accumulation_terms(got[0], got[1]) * EPS32, f'misaligned by {offset} elements')
    else:
        assert_low_precision_close(got, ref, dtype, f'misaligned by {offset} elements')


def test_non_contiguous_inputs_and_grad_output():
    feats, loc, weights = make_inputs(C=16, P=6, L=4, seed=9)
    # channel-first storage seen through a channel-last permutation, and transposed locations
    feats_cf = [f.permute(0, 1, 4, 2, 3).contiguous().requires_grad_(True) for f in feats]
    loc_t = loc.transpose(1, 2).contiguous().requires_grad_(True)       # [BB, P, Q, 3]
    w = weights.clone().requires_grad_(True)
    out = msmv_sampling_cuda([f.permute(0, 1, 3, 4, 2) for f in feats_cf], loc_t.transpose(1, 2), w)
    R = torch.randn(2, 16, 5, 6, device=DEVICE)
    (out.permute(0, 2, 1, 3) * R).sum().backward()   # upstream gradient is non-contiguous
    grad_out = R.permute(0, 2, 1, 3)
    rout, rfeats, rloc, rw = run_reference(feats, loc, weights, grad_out)
    tol = accumulation_terms(out, feats) * EPS32                         # dyadic locations: sums only
    assert rel_err(out, rout) < tol
    for f, rf in zip(feats_cf, rfeats):
        assert rel_err(f.grad.permute(0, 1, 3, 4, 2), rf) < tol
    assert rel_err(loc_t.grad.transpose(1, 2)[..., :2], rloc[..., :2]) < tol
    assert rel_err(w.grad, rw) < tol


def test_feature_gradients_skipped_when_not_needed():
    feats, loc, weights = make_inputs(C=32, P=7, L=4, seed=13)
    grad_out = torch.randn(2, 5, 32, 7, device=DEVICE)
    full = run_op(feats, loc, weights, grad_out)
    loc2 = loc.clone().requires_grad_(True)
    w2 = weights.clone().requires_grad_(True)
    msmv_sampling_cuda(feats, loc2, w2).backward(grad_out)
    assert all(f.grad is None for f in feats)
    # another backward variant may sum the 4 C L (u, v) and 4 C (weights) terms in another order: K * eps of
    # the largest value
    C, L = grad_out.shape[2], len(feats)
    torch.testing.assert_close(loc2.grad, full[2], rtol=0, atol=4 * C * L * EPS32 * full[2].abs().max().item())
    torch.testing.assert_close(w2.grad, full[3], rtol=0, atol=4 * C * EPS32 * full[3].abs().max().item())


def test_locations_in_other_dtypes_get_gradients_in_their_dtype():
    feats, loc, weights = make_inputs(C=8, P=3, L=4, seed=17)
    loc64 = loc.double().requires_grad_(True)
    w16 = weights.half().requires_grad_(True)
    out = msmv_sampling_cuda(feats, loc64, w16)
    out.sum().backward()
    assert loc64.grad.dtype == torch.float64 and w16.grad.dtype == torch.float16
    rout = reference_sampling([f.double() for f in feats], loc64.detach(), w16.detach().double())
    # dyadic locations (exact in float32) and fp16 weights (exact in float32): only the output's 4 L = 16-term
    # sums, 16 eps ≈ 1.9e-6 of the largest value; 1e-5 (84 eps) leaves 5x
    assert rel_err(out, rout) < 1e-5


def test_empty_inputs():
    feats, _, _ = make_inputs(C=8, P=3, L=4)
    for Q, P in [(0, 3), (4, 0)]:
        loc = torch.rand(2, Q, P, 3, device=DEVICE, requires_grad=True)
        w = torch.rand(2, Q, P, 4, device=DEVICE, requires_grad=True)
        fs = [f.clone().requires_grad_(True) for f in feats]
        out = msmv_sampling_cuda(fs, loc, w)
        assert out.shape == (2, Q, 8, P)
        out.sum().backward()
        assert loc.grad.shape == loc.shape and all(torch.all(f.grad == 0) for f in fs)


def test_input_errors_are_explained():
    feats, loc, weights = make_inputs(C=8, P=3, L=4)
    with pytest.raises(RuntimeError, match='CUDA'):
        msmv_sampling_cuda([f.cpu() for f in feats], loc.cpu(), weights.cpu())
    with pytest.raises(RuntimeError, match='float32, float64, float16 or bfloat16'):
        msmv_sampling_cuda([(f * 10).int() for f in feats], loc, weights)
    with pytest.raises(RuntimeError, match='share one dtype'):
        msmv_sampling_cuda([feats[0].double()] + feats[1:], loc, weights)
    with pytest.raises(RuntimeError, match='BB, N, C of level 0'):
        msmv_sampling_cuda([feats[0], feats[1][..., :4]] + feats[2:], loc, weights)
    with pytest.raises(RuntimeError, match=r'\[BB, Q, P, 3\]'):
        msmv_sampling_cuda(feats, loc[..., :2], weights)
    with pytest.raises(RuntimeError, match=r'\[BB, Q, P, L\]'):
        msmv_sampling_cuda(feats, loc, weights[..., :3])
    with pytest.raises(RuntimeError, match='channel-last'):
        msmv_sampling_cuda([f[0] for f in feats], loc, weights)
    with pytest.raises(ValueError, match='1 to 6'):
        msmv_sampling_cuda(feats + feats, loc, weights.repeat(1, 1, 1, 2))


# ------------------------------------------------------------------------------------------------
# Agreement with the PyTorch fallback (models/csrc/wrapper.py), when present

def test_agrees_with_pytorch_fallback_and_dispatch():
    wrapper = import_csrc('models.csrc.wrapper')
    feats, loc, weights = make_inputs(BB=2, N=6, C=32, Q=8, P=8, L=4, seed=21, dyadic=False, margin=0.1)
    grad_out = torch.randn(2, 8, 32, 8, device=DEVICE)
    got = run_op(feats, loc, weights, grad_out)
    fb = run_op(feats, loc, weights, grad_out, op=wrapper.msmv_sampling_pytorch)
    assert_all_close(got, [t.double() if torch.is_tensor(t) else [x.double() for x in t] for t in fb],
                     1e-4, 'vs PyTorch fallback')
    # On CUDA tensors the dispatching entry point must be this op (bitwise: the forward has no atomics).
    assert wrapper.cuda_op_available()
    assert torch.equal(wrapper.msmv_sampling(feats, loc, weights), got[0])


# ------------------------------------------------------------------------------------------------
# 1-NN kernel

def knn_reference(query, ref):
    """float32 distances rounded like models/knn.py, then the first minimum (lowest index)."""
    d = (query[:, None, 0] - ref[None, :, 0]) ** 2 + (query[:, None, 1] - ref[None, :, 1]) ** 2
    d = d + (query[:, None, 2] - ref[None, :, 2]) ** 2
    return d, d.argmin(dim=1)


KNN_METHODS = ['brute-force', 'grid']


@pytest.mark.parametrize('method', KNN_METHODS)
@pytest.mark.parametrize('M,K', [(1000, 3000), (1, 1), (5, 50_000), (2049, 1024), (333, 7)])
def test_knn1_matches_brute_force(M, K, method):
    g = torch.Generator().manual_seed(M + K)
    # metre-scale coordinates far from the origin, centimetres apart (where cancellation bites)
    ref = (torch.rand(K, 3, generator=g) * 0.5 + torch.tensor([35.0, -38.0, 4.0])).to(DEVICE)
    query = (torch.rand(M, 3, generator=g) * 0.5 + torch.tensor([35.0, -38.0, 4.0])).to(DEVICE)
    idx = knn1_cuda(query, ref, method)
    d, expect = knn_reference(query, ref)
    assert idx.dtype == torch.long and idx.shape == (M,)
    rows = torch.arange(M, device=DEVICE)
    # same float32 distance (bitwise) and the lowest index among equals
    assert torch.equal(d[rows, idx], d.min(dim=1).values)
    assert torch.equal(idx, expect)
    # and truly nearest in float64 up to float32 rounding: the coordinates (same sign, within 2x) subtract
    # exactly, the squares and the two sums of nonnegative terms round 3 times (3 * 2^-24 relative), so the
    # chosen neighbour's float64 distance is within 2 * 3 * 2^-24 = 3 eps of the best one
    d64 = ((query.double()[:, None] - ref.double()[None]) ** 2).sum(-1)
    best = d64.min(dim=1).values
    assert torch.all(d64[rows, idx] - best <= 3 * EPS32 * best)


@pytest.mark.parametrize('method', KNN_METHODS)
def test_knn1_ties_go_to_the_lowest_index(method):
    g = torch.Generator().manual_seed(1)
    ref = torch.randint(0, 4, (5000, 3), generator=g).float()        # many exact duplicates
    query = torch.randint(0, 4, (700, 3), generator=g).float() + 0.5  # equidistant neighbours
    idx = knn1_cuda(query.to(DEVICE), ref.to(DEVICE), method).cpu()
    d = ((query[:, None] - ref[None]) ** 2).sum(-1)
    best = d.min(dim=1).values
    first = torch.stack([torch.nonzero(d[i] == best[i])[0, 0] for i in range(len(query))])
    assert torch.equal(idx, first)


@pytest.mark.parametrize('method', KNN_METHODS)
def test_knn1_ties_across_reference_splits(method):
    """Few queries and many references: the kernel splits the references over blocks, and the
    lowest index must still win when the equal neighbours sit in different splits (the grid: in one
    cell, in sorted order)."""
    K = 60_000
    ref = torch.full((K, 3), 100.0)
    ref[[40_000, 123, 59_999, 7_000]] = torch.tensor([1.0, 2.0, 3.0])
    query = torch.tensor([[1.0, 2.0, 3.0], [1.5, 2.0, 3.0], [100.0, 100.0, 100.0]])
    idx = knn1_cuda(query.to(DEVICE), ref.to(DEVICE), method).cpu()
    assert idx.tolist() == [123, 123, 0]


@pytest.mark.parametrize('method', KNN_METHODS)
def test_knn1_non_finite_points(method):
    ref = torch.tensor([[float('nan'), 0.0, 0.0], [5.0, 5.0, 5.0], [1.0, 1.0, 1.0]], device=DEVICE)
    query = torch.tensor([[0.0, 0.0, 0.0], [float('nan'), 0.0, 0.0]], device=DEVICE)
    assert knn1_cuda(query, ref, method).tolist() == [2, 0]
    # no finite reference: every distance is NaN, the first reference is kept
    assert knn1_cuda(query, torch.full((4, 3), float('inf'), device=DEVICE), method).tolist() == [0, 0]


def lattice_scene(seed, num_gt=20_000, num_pred=30_000):
    """The matching's sets: ground truth at the centres of occupied 0.4 m voxels of the Occ3D grid (metres,
    pc_range [-40, -40, -1, 40, 40, 5.4]), most near the ground; predictions scattered around them, a quarter
    exactly on the midpoints between two centres (equidistant: ties) and some outside the range."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(200 * 200 * 16, generator=g)[:num_gt * 4]
    z = cells % 16
    cells = cells[z < torch.randint(2, 16, (len(cells),), generator=g)][:num_gt]   # dense low, sparse high
    ijk = torch.stack([cells // (200 * 16), cells // 16 % 200, cells % 16], 1).float()
    gt = ijk * 0.4 + torch.tensor([-40.0, -40.0, -1.0]) + 0.2
    pick = torch.randint(0, len(gt), (num_pred,), generator=g)
    pred = gt[pick] + torch.randn(num_pred, 3, generator=g) * 0.3
    mid = num_pred // 4
    pred[:mid] = gt[pick[:mid]] + torch.tensor([0.2, 0.0, 0.0])             # halfway to the next centre in x
    pred[-100:] = torch.rand(100, 3, generator=g) * 120 - 60                 # beyond the grid of the gt
    return gt.to(DEVICE), pred.to(DEVICE)


@pytest.mark.parametrize('seed', [0, 1])
def test_knn1_grid_equals_brute_force_on_the_matching_sets(seed):
    """Both directions of the head's matching, exact equality (the same fp32 keys, ties included)."""
    gt, pred = lattice_scene(seed)
    for query, ref in ((gt, pred), (pred, gt), (pred[:600], gt), (gt, pred[:600])):
        assert torch.equal(knn1_cuda(query, ref, 'grid'), knn1_cuda(query, ref, 'brute-force'))


def test_knn1_grid_degenerate_layouts():
    """Sets the grid's cell size must survive: a far outlier stretching the box, a plane (one thin axis),
    a line, every point at one place, large coordinates, tiny ones (denormal squared distances, many equal),
    and queries far outside the references' box."""
    g = torch.Generator().manual_seed(3)
    base = torch.rand(5000, 3, generator=g) * 10
    queries = torch.cat([torch.rand(2000, 3, generator=g) * 12 - 1, torch.tensor([[1e7, -1e7, 3.0]])]).to(DEVICE)
    outlier = base.clone()
    outlier[17] = torch.tensor([1e6, 1e6, 1e6])
    plane, line = base.clone(), base.clone()
    plane[:, 2] = 2.5
    line[:, 1:] = 0.0
    for scale, ref in ((1.0, outlier), (1.0, plane), (1.0, line), (1.0, torch.full((300, 3), 4.0)),
                       (1e15, base * 1e15), (1e-20, base * 1e-20)):
        ref, q = ref.to(DEVICE), queries * scale
        assert torch.equal(knn1_cuda(q, ref, 'grid'), knn1_cuda(q, ref, 'brute-force'))


def test_knn1_agrees_with_models_knn():
    try:
        knn = import_csrc('models.knn')
    except ImportError as err:  # its CPU KD-tree path may need packages absent on a GPU machine
        pytest.skip(f'models.knn not importable here ({err})')
    g = torch.Generator().manual_seed(5)
    ref = (torch.randn(4000, 3, generator=g) * 20).to(DEVICE)
    query = (torch.randn(1500, 3, generator=g) * 20).to(DEVICE)
    assert torch.equal(knn1_cuda(query, ref), knn.knn1(query, ref, backend='torch'))


def test_knn1_errors():
    q = torch.rand(4, 3, device=DEVICE)
    with pytest.raises(ValueError, match='method must be one of'):
        knn1_cuda(q, q, 'kdtree')
    with pytest.raises(RuntimeError, match='reference set is empty'):
        knn1_cuda(q, torch.zeros(0, 3, device=DEVICE))
    with pytest.raises(RuntimeError, match='CUDA tensor'):
        knn1_cuda(q.cpu(), q.cpu())
    with pytest.raises(RuntimeError, match='float32'):
        knn1_cuda(q.double(), q.double())
    with pytest.raises(RuntimeError, match=r'\[N, 3\]'):
        knn1_cuda(q[:, :2], q)
