"""The fast modules (accel/modules.py) and their kernels compute their faithful parents' functions (within
float32 rounding)."""
import copy

import pytest
import torch
from mmdet.models.backbones.resnet import ResNet

from accel import accelerate, policy_from_config
from accel.folded_backbone import fold_conv_norm
from accel.fused_attention import fused_biased_attention, sdpa_biased_attention
from accel.kernels import project_points_fast
from accel.modules import FAST_MODULES, FUSED_MODULES
from accel.precision import HALF_MIN_QUERIES
from core.compiled import CompiledOrNone
from models.ops_sampling import project_points
from models.ops_transformer import OPSSelfAttention, decode_points
from tiny_detector import build

PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
# float32 machine epsilon 2^-23: one rounding moves a value by at most half of it (relative); a K-term float32
# sum is within K * eps / 2 of the exact sum of its terms' magnitudes, whatever the order (the K * eps below)
EPS32 = float(torch.finfo(torch.float32).eps)


def as_fast(module, table=FAST_MODULES):
    """A copy of the faithful `module` as its subclass in `table` (what `accelerate` swaps in), same weights."""
    fast = copy.deepcopy(module)
    fast.__class__ = table[type(module)]
    return fast


def rig(B, T, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    mats = torch.randn(B, T * N, 4, 4, generator=g, dtype=torch.float64) * 100
    mats[..., 3, :] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    points = torch.rand(B, 7, T, 5, 3, generator=g, dtype=torch.float64) * 80 - 40
    return mats, points


def test_fast_projection_is_the_projection():
    B, T, N = 2, 3, 4
    mats, points = rig(B, T, N)
    faithful = project_points(points.float(), mats.float(), N)                     # [B, T, N, Q, GP, 4]
    fast = project_points_fast(points.float(), mats.float(), N)                    # [B, T, N, Q, GP, 3]
    # float64 by hand: view (t, n) of sample b maps point (q, t, p) with matrix b, t*N + n
    m = mats.view(B, T, N, 4, 4)
    expected = torch.einsum('btnij,bqtpj->btnqpi', m[..., :3, :3], points) + m[:, :, :, None, None, :3, 3]
    assert fast.shape == expected.shape == faithful[..., :3].shape
    # float32 inputs (m and p rounded once each) and a 4-term float32 sum (3 products and the translation, at
    # most 4 roundings per term): each element is within (2 + 4) * 2^-24 = 3 eps of the float64 value, relative
    # to the sum of its terms' magnitudes (to first order; 4 eps leaves the second-order terms room)
    terms = torch.einsum('btnij,bqtpj->btnqpi', m[..., :3, :3].abs(), points.abs()) + m[..., None, None, :3, 3].abs()
    assert ((fast.double() - expected).abs() / terms).max() < 4 * EPS32
    assert ((faithful[..., :3].double() - expected).abs() / terms).max() < 4 * EPS32
    assert torch.equal(faithful[..., 3], torch.ones_like(faithful[..., 3]))


def attention(seed=0):
    torch.manual_seed(seed)
    module = OPSSelfAttention(256, 8, 0.1, PC_RANGE)
    module.init_weights()
    torch.nn.init.normal_(module.gen_tau.weight, std=0.05)     # tau varies per query row
    return module.eval()


@pytest.mark.parametrize('queries', [1, 37])
def test_fused_attention_equals_the_masked_attention(queries):
    """FlexAttention's reference (unfused, on the CPU) with the in-kernel bias = the [B*H, Q, Q] mask path."""
    module = attention()
    g = torch.Generator().manual_seed(queries)
    points, feat = torch.rand(2, queries, 4, 3, generator=g), torch.randn(2, queries, 256, generator=g)
    with torch.no_grad():
        expected = module(points, feat)                                            # faithful (mask)
        centres = decode_points(points, PC_RANGE).mean(2)
        tau = module.gen_tau(feat).permute(0, 2, 1)
        got = fused_biased_attention(module.attention.attn, feat, centres, tau, compiled=False)
        far = fused_biased_attention(module.attention.attn, feat, centres * 2, tau, compiled=False)
    # Both float32, summed in other orders: in- and out-projection (256 terms each), scores (32) and the value
    # product (Q): worst case (544 + Q) eps of the attention branch; adding the residual rounds once more (eps).
    branch = (expected - feat).abs().max().item()
    torch.testing.assert_close(got, expected, rtol=EPS32, atol=(2 * 256 + 32 + queries) * EPS32 * branch)
    if queries > 1:                      # the bias is used: other centroids, other output
        # twice the distances move every logit by tau * d (metres): the branch (~1) changes by far more than
        # the rounding tolerance above (~1e-4); 1e-3 asks for ten times that tolerance
        assert (far - got).abs().max() > 1e-3
    # on the CPU the fast module keeps the mask path (no compiled kernel there)
    with torch.no_grad():
        assert torch.equal(as_fast(module)(points, feat), expected)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def relative_error(got, expected):
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize('device, queries, half', [('cpu', 23, False), pytest.param('cuda', 23, False, marks=CUDA),
                                                   pytest.param('cuda', HALF_MIN_QUERIES + 52, False, marks=CUDA),
                                                   pytest.param('cuda', HALF_MIN_QUERIES + 52, True, marks=CUDA)])
def test_training_sdpa_attention_equals_the_masked_attention(device, queries, half):
    """Training's fused self-attention (the bias tensor through SDPA; float32, or fp16 as the fast mode runs it
    on CUDA from HALF_MIN_QUERIES on) against mmcv's module on the [B*H, Q, Q] mask in float64: the output and
    the gradients of the input, of tau's generator (through the bias) and of the in-projection (dropout off,
    whose random numbers differ); on CUDA the layer's training path is this function (the fused module's in
    float32, the fast module's in fp16); with dropout on, SDPA applies it."""
    g = torch.Generator().manual_seed(3)
    points, feat = torch.rand(2, queries, 4, 3, generator=g), torch.randn(2, queries, 256, generator=g)
    weights = torch.linspace(-1, 1, feat.numel()).view_as(feat)

    def run(dtype, device, fast):
        module = attention().to(device, dtype).train()
        module.attention.attn.dropout = 0.0
        x = feat.to(device, dtype).requires_grad_(True)
        pts = points.to(device, dtype)
        if fast:
            centres = decode_points(pts, PC_RANGE).mean(2)
            tau = module.gen_tau(x).permute(0, 2, 1)
            out = sdpa_biased_attention(module.attention, x, lambda: OPSSelfAttention.attention_bias(centres, tau),
                                        half=half)
        else:
            out = module(pts, x)                                                   # faithful (mask)
        (out * weights.to(device, dtype)).sum().backward()
        return module, out, (out, x.grad, module.gen_tau.weight.grad, module.attention.attn.in_proj_weight.grad)

    _, _, expected = run(torch.float64, 'cpu', fast=False)
    module, out, got = run(torch.float32, device, fast=True)
    # float32 against the float64 reference, normwise. Worst case K * eps over the float32 sums of the chain:
    # forward 256 (in-projection, tau), 32 (scores), Q (value product), 256 (out-projection); backward 256
    # (out-projection), 32 + Q (attention), 768 (input gradient through the packed in-projection; the weight
    # gradients sum 2Q rows): (1600 + 2Q) eps ≈ 2e-4 at Q = 23.
    # fp16 (CUDA, Q >= HALF_MIN_QUERIES): q, k, v, the bias, the kernel's probabilities and dq, dk, dv are
    # rounded to 2^-11 ≈ 4.9e-4 relative; about 5 such roundings, and the tau gradient (sums of P * (dP -
    # rowsum) over keys) loses a further factor ~4 to cancellation: 5 * 4 * 2^-11 ≈ 1e-2.
    tol = 1e-2 if half else (1600 + 2 * queries) * EPS32
    for a, b, name in zip(got, expected, ('output', 'input grad', 'tau grad', 'in_proj grad')):
        err = relative_error(a, b)
        assert err < tol, f'{name}: relative error {err:.2e} (tolerance {tol:.0e})'
    if device == 'cuda':
        table = FAST_MODULES if half else FUSED_MODULES
        with torch.no_grad():
            layer_path = as_fast(module, table)(points.to(device), feat.to(device))
        # The same q, k, v and bias, but SDPA may pick another kernel without autograd. float32: other orders
        # in the scores (32 terms) and the value product (Q), and the logits' own roundings: the keys that
        # carry weight have logits |tau * d| up to ~155 here, so each rounding moves a weight by up to 155 *
        # eps / 2, relative; about 8 of them: (32 + Q + 8 * 155 / 2) eps ≈ 8e-5 of the output. fp16: each kernel
        # rounds its output to fp16, which may differ by one fp16 ulp: 2^-10 relative.
        tol = 2.0 ** -10 if half else 1e-4
        assert relative_error(layer_path, out) < tol
        module.attention.attn.dropout = 0.5
        with torch.no_grad():
            dropped = as_fast(module, table)(points.to(device), feat.to(device))
        # dropout 0.5 zeroes half of the weights and doubles the rest: the attention branch changes by a
        # sizeable part of itself, ten times the kernel tolerance above
        assert relative_error(dropped, out) > 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('queries, half', [(600, False), (HALF_MIN_QUERIES + 352, False),
                                           (HALF_MIN_QUERIES + 352, True)])
def test_compiled_fused_attention_on_cuda(queries, half):
    module = attention().cuda()
    g = torch.Generator().manual_seed(1)
    points = torch.rand(1, queries, 4, 3, generator=g).cuda()
    feat = torch.randn(1, queries, 256, generator=g).cuda()
    with torch.no_grad():
        expected = module(points, feat)
        got = as_fast(module, FAST_MODULES if half else FUSED_MODULES)(points, feat)
    # float32 kernel (the fused module; the fast one below HALF_MIN_QUERIES): in- and out-projection (256 terms
    # each), scores (32) and the value product (Q) in other orders, worst case (544 + Q) eps of the attention branch
    # (|branch| ≈ 1.5 here). The fast module's fp16 q/k/v from HALF_MIN_QUERIES on (and fp16 probabilities and
    # kernel output): roundings of 2^-11 relative, independent across the 256 channels that the out-projection
    # (weights of rms 1/16/sqrt(3) ≈ 0.036) sums: sigma ≈ sqrt(3 * 256) * 0.036 * 2^-11 * rms|a| (≈ 1) ≈ 5e-4;
    # the largest of 6e5 outputs ≈ 5 sigma ≈ 2.5e-3.
    branch = (expected - feat).abs().max().item()
    tol = 1e-2 if half else (2 * 256 + 32 + queries) * EPS32 * branch
    assert (got - expected).abs().max() < tol


def test_a_kernel_that_cannot_be_built_falls_back_with_one_warning(monkeypatch):
    """No Triton for this GPU, say: the fast module warns once and computes the faithful attention."""
    import accel.fused_attention as fa

    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError('triton: no kernel for this device\nsecond line')
    kernel = CompiledOrNone(fa._attention, 'the fused self-attention kernel', 'the faithful attention')
    monkeypatch.setattr(kernel, 'compile', lambda: broken)
    monkeypatch.setattr(fa, 'ATTENTION_KERNEL', kernel)
    module = attention()
    g = torch.Generator().manual_seed(3)
    points, feat = torch.rand(1, 9, 4, 3, generator=g), torch.randn(1, 9, 256, generator=g)
    centres = decode_points(points, PC_RANGE).mean(2)
    with torch.no_grad():
        tau = module.gen_tau(feat).permute(0, 2, 1)
        with pytest.warns(UserWarning, match='could not be built here .RuntimeError: triton: no kernel for this '
                                             'device.; using the faithful attention'):
            assert fused_biased_attention(module.attention.attn, feat, centres, tau) is None
        assert fused_biased_attention(module.attention.attn, feat, centres, tau) is None   # not tried again
    assert len(calls) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_compiled_sampling_geometry_and_mixing_on_cuda():
    """The fast modules' compiled projection + view choice and adaptive mixing against eager float32."""
    import accel.kernels as kernels
    import models.ops_transformer as ops_transformer
    g = torch.Generator().manual_seed(5)
    B, Q, T, G, P, L, N = 1, 300, 8, 4, 4, 4, 6
    mats, _ = rig(B, T, N, seed=5)
    points = torch.rand(B, Q, T, G, P, 3, generator=g) * 80 - 40
    weights = torch.rand(B, Q, G, T, P, L, generator=g).softmax(-1)
    args = (points.cuda(), weights.cuda(), mats.float().cuda(), 256, 704, N, 1e-5)
    with torch.no_grad():
        loc, w = kernels.SAMPLING_GEOMETRY(*args)
    assert not kernels.SAMPLING_GEOMETRY.failed
    ref_loc, ref_w = kernels.fast_sampling_locations(*args)
    assert torch.equal(w, ref_w)
    # Each float32 evaluation of u = (m_u . p + t_u) / d / W is within (2 cond + 1) eps of the exact value, cond =
    # (sum of |terms| of u * d) / (|d| W) + (sum of |terms| of d) / |d| * |u| (4 roundings per term, 2 divisions);
    # the two kernels may round differently, so they differ by up to (4 cond + 2) eps. In this data (float64)
    # cond reaches 425 for in-image points, and 10 of the 38400 points (2.6e-4) lie within that distance of an
    # image border in some view: only those may change camera or seen-ness.
    same_view = loc[..., 2] == ref_loc[..., 2]
    assert same_view.float().mean() > 0.999                      # a point on a border may change camera
    # Points that no camera sees (view 0, u, v outside the image) read zeros, and their u, v are not
    # compared: with a depth near 0 they reach 1e6 and differ by the rounding of that depth.
    seen_ref = (ref_loc[..., :2] > 0).all(-1) & (ref_loc[..., :2] < 1).all(-1)
    seen = (loc[..., :2] > 0).all(-1) & (loc[..., :2] < 1).all(-1)
    # (the second condition is no tolerance: the case must have seen points)
    assert (seen == seen_ref).float().mean() > 0.999 and seen_ref.float().mean() > 0.1
    both = seen & seen_ref & same_view
    assert (loc - ref_loc)[both].abs().max() < (4 * 425 + 2) * EPS32
    mix = ops_transformer.AdaptiveMixing(in_dim=64, in_points=32, n_groups=4, query_dim=256, out_points=32).cuda()
    torch.nn.init.normal_(mix.parameter_generator.weight, std=0.02)
    x, query = torch.randn(B, Q, 4, 32, 64, generator=g).cuda(), torch.randn(B, Q, 256, generator=g).cuda()
    with torch.no_grad():
        fast, eager = as_fast(mix)(x, query), mix(x, query)
    assert not kernels.MIXING_KERNEL.failed
    # float32 in other orders: the generator (256 terms), channel mixing (64), point mixing (32), the
    # out-projection (4 * 32 * 64 = 8192) and the two LayerNorms' mean and variance over 32 x 64 = 2048 values
    # (tree reductions on the GPU: log2(2048) = 11 levels each): worst case (256 + 64 + 32 + 8192 + 4 * 11) eps
    # ≈ 1e-3 of the output's scale (the residual query, |q| up to ~4, is larger than the mixed branch here)
    assert ((fast - eager).abs().max() / eager.abs().max()) < (256 + 64 + 32 + 8192 + 4 * 11) * EPS32


def test_or_eager_runs_the_function_itself_when_the_kernel_cannot_be_built(monkeypatch):
    kernel = CompiledOrNone(lambda x: x * 2 + 1, 'a test kernel', 'the eager one')

    def broken(*args):
        raise RuntimeError('no triton')
    monkeypatch.setattr(kernel, 'compile', lambda: broken)
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(kernel.or_eager(False, x), torch.tensor([3.0, 5.0])) and not kernel.failed  # not tried
    with pytest.warns(UserWarning, match='a test kernel could not be built here .RuntimeError: no triton.; using '
                                         'the eager one'):
        assert torch.equal(kernel.or_eager(True, x), torch.tensor([3.0, 5.0]))
    assert kernel.failed and torch.equal(kernel.or_eager(True, x), torch.tensor([3.0, 5.0]))


# --- the backbone's batch norms folded into its convolutions (accel/folded_backbone.py) ---

EPS64 = float(torch.finfo(torch.float64).eps)
BACKBONE = dict(num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1, norm_cfg=dict(type='BN2d', requires_grad=True),
                norm_eval=True, style='pytorch', with_cp=True)      # configs/_base_/ops_r50_704x256_8f.py's


def backbone_images(seed=0):
    """Two normalised images [2, 3, 64, 96]: stage 4 is 2 x 3 (stride 32)."""
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


def resnet(depth=50, seed=0, **kw):
    """The faithful ResNet of the configs at a quarter of the width (base_channels 16: the blocks of depth 50 are
    Bottlenecks of 16-128 planes, every code path of the full width at 1/16 of the work), trained-looking: random
    affine norms whose running statistics are `backbone_images`' own (each norm then maps its input to about unit
    scale), perturbed per channel."""
    torch.manual_seed(seed)
    net = ResNet(depth=depth, **dict(BACKBONE, base_channels=16, **kw))
    net.init_weights()
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.normal_(0.0, 0.1, generator=g)
            norm.train()
            norm.momentum = None                    # the running statistics become this batch's
        net(backbone_images())
        for norm in norms:
            norm.eval()
            norm.momentum = 0.1
            norm.running_var.mul_(torch.empty_like(norm.running_var).uniform_(0.5, 2.0, generator=g))
            norm.running_mean.add_(0.2 * norm.running_var.sqrt() * torch.randn(norm.num_features, generator=g))
    return net


def evaluating(net):
    """`net` in eval mode (mmdet's ResNet.train returns None, so `net.eval()` cannot be chained)."""
    net.eval()
    return net


def folded(net):
    """A copy of the faithful `net` with every module of a FAST_MODULES type swapped, as `accelerate` does."""
    fast = copy.deepcopy(net)
    for module in fast.modules():
        if type(module) in FAST_MODULES:
            module.__class__ = FAST_MODULES[type(module)]
    return fast


def backbone_tolerance(net, eps):
    """Normwise relative error of a whole backbone evaluated with machine epsilon `eps` against exact arithmetic.

    Independent roundings add in quadrature: a K-term sum of zero-mean terms rounds each partial sum S_j (of size
    sqrt(j) terms) by a uniform error of std eps / 2 / sqrt(3), in all sqrt(K / 6) eps / 2 ~ sqrt(K) eps / 5 of the
    sum's own size sqrt(K); a fold adds three roundings per output (weight, bias, bias add). Each norm keeps the
    activations' scale (its statistics are the input's own), so the layers' relative errors pass on without
    growth and add: at most sum over convs of sqrt(K + 3) eps / 5; the tolerance is five times that."""
    lengths = [m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
               for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    return sum((k + 3) ** 0.5 for k in lengths) * eps


def normwise(got, expected):
    """max over the stages of |got - expected| / |expected| (Frobenius norms, in float64)."""
    return max(relative_error(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize('conv_bias, affine', [(False, True), (True, False)])
def test_a_folded_conv_is_the_conv_then_the_eval_norm(conv_bias, affine):
    """One conv + norm pair against the float64 evaluation of norm(conv(x)) from the same float32 values."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 32, 3, stride=2, padding=1, bias=conv_bias)
    norm = torch.nn.BatchNorm2d(32, affine=affine).eval()
    norm.running_mean.normal_(0.0, 0.5)
    norm.running_var.uniform_(0.1, 3.0)
    if affine:
        torch.nn.init.uniform_(norm.weight, -1.5, 1.5)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 64, 9, 11)
    weight, bias = fold_conv_norm(conv, norm)
    assert weight.dtype == bias.dtype == torch.float64
    with torch.no_grad():
        got = conv._conv_forward(x, weight.float(), bias.float())
        expected = copy.deepcopy(norm).double()(copy.deepcopy(conv).double()(x.double()))
        terms = torch.nn.functional.conv2d(x.double().abs(), weight.abs(), bias.abs(), stride=2, padding=1)
    # Each output is a (K + 1)-term float32 sum (K = 64 * 3 * 3 products and the bias): within (K + 1) eps / 2 of
    # the sum of its terms' magnitudes; the folded weights and bias are rounded once from float64, eps / 2 more:
    # (K + 2) eps / 2, doubled for the second-order terms
    assert ((got.double() - expected).abs() / terms).max() < (64 * 9 + 2) * EPS32


@pytest.mark.parametrize('depth', [18, 50])
def test_the_folded_backbone_in_eval_is_the_faithful_one(depth):
    """ResNet-18 (BasicBlock) and -50 (Bottleneck), with checkpointing on as configured: the folded backbone in
    eval against the faithful one, float32 and float64; no norm runs."""
    faithful = evaluating(resnet(depth))
    fast = folded(faithful).eval()
    assert type(fast).__name__ == 'FoldedResNet'
    folding = [m for m in fast.modules() if hasattr(m, 'fold_batch_norms')]
    assert len(folding) == 1 + sum(faithful.stage_blocks) and all(m.fold_batch_norms for m in folding)
    calls = []
    for norm in fast.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.register_forward_hook(lambda *args: calls.append(1))
    x = backbone_images()
    with torch.no_grad():
        got, expected = fast(x), faithful(x)
        exact = copy.deepcopy(faithful).double()(x.double())
        # converted while in eval: the folds are recomputed in float64 (not the float32 folds widened)
        got64 = copy.deepcopy(fast).double()(x.double())
    assert not calls
    # float32 (folded and faithful) against float64: the error of float32 arithmetic (backbone_tolerance)
    tol = backbone_tolerance(faithful, EPS32)
    assert normwise(got, exact) < tol and normwise(expected, exact) < tol
    # float64 folded against float64 faithful: the same estimate with float64's eps (~4e-13 here)
    assert normwise(got64, exact) < backbone_tolerance(faithful, EPS64)


def fold_buffers(net):
    return {name: buf for name, buf in net.named_buffers() if 'folded' in name}


def gradient_tolerance(net, x, eps):
    """Normwise relative error bound of a backbone's parameter gradients, both evaluated with machine epsilon `eps`.

    Worst case (Higham's gamma_n = n eps per n-term sum): every gradient passes through at most 2 L sums (L convs,
    forward and backward), each of at most N terms, N the longest (C_in kh kw of a conv, or the B H W positions a
    weight gradient sums over: at most those of the stem's output); both sides err, hence twice 2 L N eps."""
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    longest = max(max(m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] for m in convs),
                  x.shape[0] * (x.shape[2] // 2) * (x.shape[3] // 2))
    return 2 * 2 * len(convs) * longest * eps


def training_gradients(net, x):
    """{name: gradient} of sum(stage outputs squared) after one training forward and backward of `net`."""
    net.zero_grad()
    sum(out.square().sum() for out in net(x)).backward()
    return {name: p.grad for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('depth', [18, 50])
def test_training_folds_the_eval_norms_with_their_gradients(depth):
    """In training with the configs' norm_eval (norms in eval, gamma and beta trainable; stem and stage 1 frozen) the
    backbone folds at every forward, no norm runs, and the gradients of every trainable weight, gamma and beta are
    the faithful backbone's: float64 against float64 (the exact same function), float32 outputs within rounding."""
    faithful = resnet(depth)
    faithful.train()
    fast = folded(faithful).train()
    calls = []
    for norm in fast.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.register_forward_hook(lambda *args: calls.append(1))
    x = backbone_images()
    got = training_gradients(copy.deepcopy(fast).double(), x.double())
    expected = training_gradients(copy.deepcopy(faithful).double(), x.double())
    assert not calls
    assert list(got) == list(expected)
    gammas = {f'{name}.weight' for name, m in fast.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert gammas & set(got) and not any(name.startswith(('conv1', 'bn1', 'layer1')) for name in got)
    tol = gradient_tolerance(faithful, x, EPS64)
    for name in got:
        assert relative_error(got[name], expected[name]) < tol, name
    with torch.no_grad():
        outputs, exact = fast(x), copy.deepcopy(faithful).double()(x.double())
    # float32 against float64 as test_the_folded_backbone_in_eval_is_the_faithful_one: the folds computed in float32
    # round a few more times per weight than the float64 ones (sqrt(K + 6) for sqrt(K + 3): inside the factor five)
    assert normwise(outputs, exact) < backbone_tolerance(faithful, EPS32)
    # the optimizer's step reaches the next forward: folded again from the new weights
    with torch.no_grad():
        fast.layer2[0].norm1.weight.mul_(2.0)
        faithful.layer2[0].norm1.weight.mul_(2.0)
        assert normwise(fast(x), faithful(x)) < 2 * backbone_tolerance(faithful, EPS32)


def test_norms_that_train_keep_the_faithful_forward():
    """norm_eval=False: the trained stages' norms normalise by the batch's statistics in training, so their blocks
    run the faithful forward (outputs, gradients and running statistics bit for bit); the frozen stem and stage 1,
    whose norms sit in eval, still fold; eval folds everything from the buffers."""
    faithful = resnet(18, norm_eval=False)
    faithful.train()
    fast = folded(faithful).train()
    assert fast.layer2[0].current_folds() is None
    assert fast.current_folds() is not None and fast.layer1[0].current_folds() is not None
    features = torch.randn(2, 16, 16, 24, generator=torch.Generator().manual_seed(3))   # stage 1's output
    for block in (fast.layer2[0], faithful.layer2[0]):
        block(features).square().sum().backward()
    for (name, a), b in zip(fast.layer2[0].named_parameters(), faithful.layer2[0].parameters()):
        assert torch.equal(a.grad, b.grad), name
    assert torch.equal(fast.layer2[0].bn1.running_mean, faithful.layer2[0].bn1.running_mean)
    fast.eval()
    with torch.no_grad():
        assert fast.layer2[0].current_folds()['conv1'][1] is fast.layer2[0].conv1_folded_weight


def test_eval_with_a_gradient_asked_folds_the_current_weights():
    """In eval the buffered folds serve where no gradient is asked of their parameters (the frozen stem and stage
    1); a block whose weights want a gradient folds them at the forward, so its gradients reach them."""
    fast = folded(resnet(18))
    fast.eval()
    frozen, trained = fast.layer1[0], fast.layer2[0]
    assert frozen.current_folds()['conv1'][1] is frozen.conv1_folded_weight
    assert trained.current_folds()['conv1'][1] is not trained.conv1_folded_weight
    with torch.no_grad():
        assert trained.current_folds()['conv1'][1] is trained.conv1_folded_weight
    gradients = training_gradients(fast, backbone_images())
    assert gradients['layer2.0.conv1.weight'].abs().sum() > 0 and 'layer1.0.conv1.weight' not in gradients


def test_the_folds_follow_training_and_loading_in_place():
    """train() + an optimizer step + eval(): the folds are those of the new weights, in the same storage (a
    captured CUDA graph reads them); load_state_dict while in eval refreshes them too."""
    faithful = resnet(50)
    fast = folded(faithful).eval()
    buffers = fold_buffers(fast)
    pointers = {name: buf.data_ptr() for name, buf in buffers.items()}
    # every conv + norm pair: the stem, 3 per block and 4 downsamples, a weight and a bias each
    assert len(buffers) == 2 * (1 + 3 * sum(faithful.stage_blocks) + 4)
    x = backbone_images()
    with torch.no_grad():
        before = fast(x)
    fast.train()
    optimizer = torch.optim.SGD([p for p in fast.parameters() if p.requires_grad], lr=0.5)
    sum(out.square().mean() for out in fast(x)).backward()
    optimizer.step()
    fast.eval()
    assert {name: buf.data_ptr() for name, buf in fold_buffers(fast).items()} == pointers
    block = fast.layer4[0]
    weight, bias = fold_conv_norm(block.conv2, block.norm2)
    assert torch.equal(block.conv2_folded_weight, weight.float()) and torch.equal(block.conv2_folded_bias, bias.float())
    trained = resnet(50)
    trained.load_state_dict(fast.state_dict())
    trained.eval()
    tol = backbone_tolerance(faithful, EPS32)        # twice: both float32 against the exact result
    with torch.no_grad():
        after, expected = fast(x), trained(x)
        assert normwise(after, expected) < 2 * tol
        # (the step changed the output by far more than rounding: the comparison above sees stale folds)
        assert normwise(after, before) > 100 * tol
        other = evaluating(resnet(50, seed=1))
        fast.load_state_dict(other.state_dict())     # still in eval: the post hook refolds
        assert normwise(fast(x), other(x)) < 2 * tol
    assert {name: buf.data_ptr() for name, buf in fold_buffers(fast).items()} == pointers


def test_the_state_dict_is_the_faithful_one():
    faithful = resnet(18)
    fast = folded(faithful).eval()
    assert fold_buffers(fast)                        # the folds exist, outside the state dict
    state = fast.state_dict()
    assert list(state) == list(faithful.state_dict())
    faithful.load_state_dict(state, strict=True)
    fast.load_state_dict(resnet(18, seed=2).state_dict(), strict=True)


@pytest.mark.parametrize('kw, folds', [
    (dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=0.25), stages=(False, False, True, False),
                        position='after_conv3')]), 'all but stage 3'),
    (dict(deep_stem=True), 'all but the stem'),
    (dict(conv_cfg=dict(type='ConvWS')), 'none')])
def test_unsupported_parts_keep_the_faithful_forward(kw, folds):
    """Plugins, a deep stem, weight-standardised convs: those parts run their faithful forward, the rest folds."""
    faithful = evaluating(resnet(50, **kw))
    fast = folded(faithful).eval()
    refused = {'all but stage 3': fast.layer3, 'all but the stem': [fast], 'none': list(fast.modules())}[folds]
    for module in fast.modules():
        if hasattr(module, 'fold_batch_norms'):
            assert module.fold_batch_norms == (not any(module is m for m in refused))
    x = backbone_images()
    with torch.no_grad():
        got, expected = fast(x), faithful(x)
        if folds == 'none':
            assert all(torch.equal(a, b) for a, b in zip(got, expected))
        else:
            # the folded parts' float32 rounding (see test_the_folded_backbone_in_eval_is_the_faithful_one), twice:
            # both against the exact result
            assert normwise(got, expected) < 2 * backbone_tolerance(faithful, EPS32)
        if folds == 'all but stage 3':
            features = torch.randn(2, 128, 8, 12, generator=torch.Generator().manual_seed(4))
            assert torch.equal(fast.layer3[0](features), faithful.layer3[0](features))


def test_the_fast_detector_folds_its_backbone():
    """The fast policy's tiny detector: its ResNet-18 folds in eval from the buffers (the whole model's results against
    the faithful policy's: tests/accel/test_accelerate.py) and in training at every forward."""
    faithful = build()
    fast = accelerate(copy.deepcopy(faithful), policy_from_config(fast=True))
    backbone = fast.img_backbone
    assert type(backbone).__name__ == 'FoldedResNet' and type(backbone.layer2[0]).__name__ == 'FoldedBasicBlock'
    blocks = [m for m in backbone.modules() if hasattr(m, 'fold_batch_norms')]
    fast.eval()
    assert all(m.fold_batch_norms and m.folds_fresh for m in blocks)
    fast.train()
    assert all(m.fold_batch_norms and not m.folds_fresh for m in blocks)
    assert all(m.current_folds() is not None for m in blocks)          # its config keeps the norms in eval
    fast.eval()
    faithful.eval()
    x = backbone_images()
    with torch.no_grad():
        # the float32 error estimate of a backbone (Kaiming-initialised convs and norms of statistics 0 and 1 keep
        # about the input's scale), twice: both against the exact result
        assert normwise(backbone(x), faithful.img_backbone(x)) < 2 * backbone_tolerance(backbone, EPS32)


@CUDA
def test_folded_backbone_under_fp16_autocast_and_a_cuda_graph():
    """The fast test mode's backbone: fp16 autocast on NHWC images, replayed from a CUDA graph that keeps reading the
    folds after more training (no new capture)."""
    from accel.cuda_graph import GraphedFunction
    faithful = evaluating(resnet(50).cuda())
    fast = folded(faithful).eval()
    x = torch.randn(2, 3, 128, 352, generator=torch.Generator().manual_seed(5)).cuda()
    x = x.contiguous(memory_format=torch.channels_last)

    def step(model):
        def run(images):
            with torch.autocast('cuda', torch.float16):
                return model(images)
        return run
    with torch.no_grad():
        exact = copy.deepcopy(faithful).double()(x.double())
        graphed = GraphedFunction(step(fast))
        got, expected = [t.clone() for t in graphed(x)], step(faithful)(x)
    # Both paths round each conv's input and weights to fp16 (2^-11 relative); the faithful rounds the conv's output
    # before its norm, the folded rounds W * s instead of W: as many fp16 roundings per layer, so errors of the same
    # size against float64; twice the faithful's leaves room for their independent fluctuations
    assert normwise(got, exact) < 2 * normwise(expected, exact)
    fast.train()
    optimizer = torch.optim.SGD([p for p in fast.parameters() if p.requires_grad], lr=0.5)
    sum(out.float().square().mean() for out in fast(x)).backward()
    optimizer.step()
    fast.eval()
    trained = resnet(50).cuda()                     # the faithful backbone of the trained weights
    trained.load_state_dict(fast.state_dict())
    trained.eval()
    with torch.no_grad():
        replayed = graphed(x)                        # the same graph, the refreshed folds
        exact = copy.deepcopy(trained).double()(x.double())
        expected = step(trained)(x)
        assert normwise(replayed, exact) < 2 * normwise(expected, exact)


@CUDA
def test_folded_backbone_trains_under_fp16_autocast():
    """The fast training step's backbone: fp16 autocast on NHWC images, the norms folded at every forward; its
    gradients against float64 are as accurate as the faithful backbone's under the same autocast."""
    faithful = resnet(50).cuda()
    faithful.train()
    fast = folded(faithful).train()
    x = torch.randn(2, 3, 128, 352, generator=torch.Generator().manual_seed(6)).cuda()
    x = x.contiguous(memory_format=torch.channels_last)

    def gradients(model, images, autocast):
        model.zero_grad()
        with torch.autocast('cuda', torch.float16, enabled=autocast):
            outs = model(images)
        sum(out.float().square().mean() for out in outs).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    exact = gradients(copy.deepcopy(faithful).double(), x.double(), False)
    got, expected = gradients(fast, x, True), gradients(faithful, x, True)
    assert list(got) == list(expected) == list(exact)
    # as the test above: the same number of fp16 roundings per layer on both paths (the folded one rounds W * s where
    # the faithful one rounds W and the conv's output before its norm); twice the faithful's error leaves room for
    # their independent fluctuations. Compared over all the gradients at once (a per-tensor norm of a small gamma
    # gradient fluctuates more)
    def stacked(grads):
        return torch.cat([g.double().flatten() for g in grads.values()])
    assert relative_error(stacked(got), stacked(exact)) < 2 * relative_error(stacked(expected), stacked(exact))
