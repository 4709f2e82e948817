"""Decoder pieces (docs/method.md, "Decoder") against direct float64 computations, gradient checks, wiring."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import models.ops_transformer as opt
from camera_rig import pinhole_rig
from models.ops_transformer import (
    AdaptiveMixing,
    OPSSampling,
    OPSSelfAttention,
    OPSTransformer,
    OPSTransformerDecoderLayer,
    decode_points,
    encode_points,
)

PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
# float32 machine epsilon 2^-23: one rounding moves a value by at most half of it (relative); a K-term float32
# sum is within K * eps / 2 of the sum of its terms' magnitudes, in any order (the K * eps bounds below)
EPS32 = float(np.finfo(np.float32).eps)


def layer_norm_ref(x, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5)


def np64(t):
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------- adaptive mixing
def test_adaptive_mixing_matches_reference():
    torch.manual_seed(0)
    B, Q, G, Pin, Cg, Pout, D = 2, 3, 2, 5, 4, 3, 8
    mix = AdaptiveMixing(in_dim=Cg, in_points=Pin, n_groups=G, query_dim=D, out_points=Pout)
    nn_params = {k: np64(v) for k, v in mix.state_dict().items()}
    x, query = torch.randn(B, Q, G, Pin, Cg), torch.randn(B, Q, D)
    out = mix(x, query)

    params = np64(query) @ nn_params['parameter_generator.weight'].T + nn_params['parameter_generator.bias']
    params = params.reshape(B, Q, G, Cg * Cg + Pout * Pin)
    M = params[..., :Cg * Cg].reshape(B, Q, G, Cg, Cg)
    S = params[..., Cg * Cg:].reshape(B, Q, G, Pout, Pin)
    y = np.maximum(layer_norm_ref(np.einsum('bqgpc,bqgcd->bqgpd', np64(x), M), (-2, -1)), 0)
    z = np.maximum(layer_norm_ref(np.einsum('bqgop,bqgpd->bqgod', S, y), (-2, -1)), 0)
    ref = z.reshape(B, Q, -1) @ nn_params['out_proj.weight'].T + nn_params['out_proj.bias'] + np64(query)
    # float32 sums of the chain: generator D + 1 = 9 terms, channel mixing Cg = 4, LayerNorm mean and variance
    # over Pin * Cg = 20, point mixing Pin = 5, LayerNorm over Pout * Cg = 12 (twice), out-projection
    # G * Pout * Cg + 1 = 25: worst case 107 eps of the mixed branch; the residual adds one rounding (eps)
    branch = np.abs(ref - np64(query)).max()
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=EPS32, atol=107 * EPS32 * branch)


def test_adaptive_mixing_gradcheck_and_shape_error():
    torch.manual_seed(1)
    mix = AdaptiveMixing(in_dim=3, in_points=4, n_groups=2, query_dim=6, out_points=2).double()
    x = torch.randn(1, 2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    # central differences in float64: outputs of size ~2 from ~100-term sums carry <= 100 * 2^-53 * 2 ≈ 2e-14,
    # over 2h = 2e-6 that is 1e-8; truncation h^2 / 6 times the third derivative (LayerNorm: ~1 / std^3, std ~1)
    # ~1e-12: atol 1e-6 with gradcheck's default rtol 1e-3 is far above both; 1e-7 and no relative part
    assert torch.autograd.gradcheck(mix, (x, q), eps=1e-6, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match='in_points=4'):
        mix(torch.randn(1, 2, 2, 5, 3, dtype=torch.float64), q)


def test_official_mixing_sizes():
    """T: in_points 4*8 = 32 -> generator 4*(64*64 + 32*32) = 20480; S/M/L: 18432; out_proj 8192 -> 256."""
    for num_points, width in ((4, 20480), (2, 18432)):
        mix = AdaptiveMixing(in_dim=64, in_points=num_points * 8, n_groups=4, query_dim=256, out_points=32)
        assert mix.parameter_generator.weight.shape == (width, 256)
        assert mix.out_proj.weight.shape == (256, 8192)


# ----------------------------------------------------------------------------- self-attention
def test_scale_adaptive_self_attention_matches_reference():
    torch.manual_seed(2)
    B, Q, P, E, H = 2, 5, 3, 16, 4
    sa = OPSSelfAttention(E, H, dropout=0.1, pc_range=PC_RANGE).eval()
    points, feat = torch.rand(B, Q, P, 3), torch.randn(B, Q, E)
    out = sa(points, feat)

    sd = {k: np64(v) for k, v in sa.state_dict().items()}
    f = np64(feat)
    centres = np64(decode_points(points, PC_RANGE)).mean(2)
    dist = np.linalg.norm(centres[:, :, None] - centres[:, None], axis=-1)            # [B, Q, Q]
    tau = f @ sd['gen_tau.weight'].T + sd['gen_tau.bias']                              # [B, Q, H]
    w_in, b_in = sd['attention.attn.in_proj_weight'], sd['attention.attn.in_proj_bias']
    q, k, v = [(f @ w_in[i * E:(i + 1) * E].T + b_in[i * E:(i + 1) * E]).reshape(B, Q, H, E // H) for i in range(3)]
    scores = np.einsum('bihd,bjhd->bhij', q, k) / math.sqrt(E // H)
    scores = scores - tau.transpose(0, 2, 1)[..., None] * dist[:, None]                # bias -tau[b, i, h] * D[i, j]
    attn = np.exp(scores - scores.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    o = np.einsum('bhij,bjhd->bihd', attn, v).reshape(B, Q, E)
    ref = o @ sd['attention.attn.out_proj.weight'].T + sd['attention.attn.out_proj.bias'] + f
    # float32 sums: in-projection and tau E = 16 terms, scores E / H = 4, value product Q = 5, out-projection 16.
    # The logit bias -tau * d (|.| <= S) is float32 too: tau's 16-term sum (8 eps relative), the distance
    # (~3 eps) and ~3 more roundings move a logit by <= 14 eps * S, a weight by twice that, relative, and the
    # output by that times max |v|: (3E + E/H + Q + 28 S) eps * max |v|; the residual adds one rounding (eps)
    S = np.abs(tau.transpose(0, 2, 1)[..., None] * dist[:, None]).max()
    atol = (3 * E + E // H + Q + 28 * S) * EPS32 * np.abs(v).max()
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=EPS32, atol=atol)


# ----------------------------------------------------------------------------- consistent point sampling
def test_sampling_points_centre_unbiased_std_and_single_point(monkeypatch):
    calls = {}

    def record(sample_points, weights, occ2img, num_views):     # the sampler's shape check sees its inputs
        calls.update(points=sample_points, weights=weights)

    def no_sampling(mlvl_feats, loc, weights, B, T, G, op):
        Q, P = calls['points'].shape[1], calls['points'].shape[4]
        return torch.zeros(B, Q, G, T * P, 4)

    monkeypatch.setattr(opt, 'check_sampling_shapes', record)
    monkeypatch.setattr(opt, 'sample_features', no_sampling)
    torch.manual_seed(3)
    B, Q, T, G, P, L, E = 1, 4, 3, 2, 2, 3, 8
    sampler = OPSSampling(E, T, 6, G, P, L, PC_RANGE)
    monkeypatch.setattr(sampler, 'locations', lambda *args: (None, None))
    nn.init.normal_(sampler.sampling_offset.weight)
    feat = torch.randn(B, Q, E)
    offsets = np64(sampler.sampling_offset(feat)).reshape(B, Q, G * P, 3)
    logits = np64(sampler.scale_weights(feat)).reshape(B, Q, G, P, L)
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    for P_in in (1, 5):
        pts = torch.rand(B, Q, P_in, 3)
        sampler(pts, feat, None, None, 10, 20)
        metres = np64(decode_points(pts, PC_RANGE))
        centre = metres.mean(2)
        scale = metres.std(2, ddof=1) if P_in > 1 else np.zeros_like(centre)   # unbiased; 0 for one point
        expected = (centre[:, :, None] + offsets * scale[:, :, None]).reshape(B, Q, G, P, 3)
        got = np64(calls['points'])
        assert got.shape == (B, Q, T, G, P, 3)
        # float32: the decode (2 roundings) and the mean of P_in points (P_in roundings) move the centre by
        # <= ~7 eps / 2 of the metres involved; the std (deviations, squares, sum, sqrt) by ~6 eps relative, and
        # the product and sum by one rounding each: <= 8 eps of |centre| + |offset * scale|
        atol = 8 * EPS32 * (np.abs(centre).max() + np.abs(offsets * scale[:, :, None]).max())
        for t in range(T):    # the same 3D points for every frame
            np.testing.assert_allclose(got[:, :, t], expected, rtol=0, atol=atol)
        w = np64(calls['weights'])
        assert w.shape == (B, Q, G, T, P, L)
        # float32 softmax over L = 3 of the same logits: x - max (spread ~3: 3 * 2^-24 relative in exp), exp,
        # two additions and the division: <= 7 * 2^-24 ≈ 4 eps relative
        for t in range(T):
            np.testing.assert_allclose(w[:, :, :, t], soft, rtol=4 * EPS32, atol=0)


# ----------------------------------------------------------------------------- decoder layer
def make_rig(T, N, H, W):
    """N evenly spaced cameras per frame; list of T*N float32 [4, 4]."""
    return list(pinhole_rig(range(T), [360 * n / N for n in range(N)], H, W, W / 2, 0.5).astype(np.float32))


def small_layer(with_cp=False, in_points=3, out_points=4):
    return OPSTransformerDecoderLayer(embed_dims=32, num_frames=2, num_views=3, num_groups=4, num_points=2,
                                      num_levels=2, num_classes=17, in_points=in_points, out_points=out_points,
                                      scale=0.5, pc_range=PC_RANGE, num_heads=8, ffn_dims=48, mixing_out_points=5,
                                      attn_drop=0.0, ffn_drop=0.0, with_cp=with_cp)


def layer_inputs(B=2, Q=6, P=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    T, N, G, E, H, W = 2, 3, 4, 32, 24, 40
    feats = [torch.randn(B * T * G, N, h, w, E // G, generator=g) for h, w in ((6, 10), (3, 5))]
    occ2img = torch.from_numpy(np.stack([np.stack(make_rig(T, N, H, W))] * B))
    # points within 15 m of the car so that they project into the images
    pts = 0.5 + (torch.rand(B, Q, P, 3, generator=g) - 0.5) * torch.tensor([0.3, 0.3, 0.5])
    return pts, torch.randn(B, Q, E, generator=g), feats, occ2img, H, W


def test_layer_wiring_and_refinement():
    torch.manual_seed(4)
    layer = small_layer().eval()
    pts, qf, feats, occ2img, H, W = layer_inputs()
    qf_out, cls, new_pts = layer(pts, qf, feats, occ2img, H, W)
    B, Q = qf.shape[:2]
    with torch.no_grad():
        x = qf + layer.position_encoder(pts.flatten(2))
        x = layer.norm1(layer.mixing(layer.sampling(pts, x, feats, occ2img, H, W), x))
        x = layer.norm2(layer.self_attn(pts, x))
        x = layer.norm3(layer.ffn(x))
        # the same float32 operations on the same tensors in the same order: bitwise equal
        assert torch.equal(qf_out, x)
        assert torch.equal(cls, layer.cls_branch(x).reshape(B, Q, 4, 17))
        centre = np64(decode_points(pts, PC_RANGE)).mean(2, keepdims=True)                # metres
        offsets = np64(layer.reg_branch(x)).reshape(B, Q, 4, 3) * 0.5
        expected = (centre + offsets - np.array(PC_RANGE[:3])) / (np.array(PC_RANGE[3:]) - np.array(PC_RANGE[:3]))
    # float32 decode, mean of 3, + offset and encode: x, y move by <= ~1.6e-5 m of 80 m, z by <= ~2e-6 m of
    # 6.4 m (a few roundings each), <= 3 eps of the normalised range, plus the final rounding: 4 eps
    np.testing.assert_allclose(np64(new_pts), expected, rtol=0, atol=4 * EPS32)
    # decode rounds twice (<= 2 eps / 2 of |n * size| + |min| <= 1.5 size), encode twice more: <= 4 eps
    assert torch.allclose(encode_points(decode_points(pts, PC_RANGE), PC_RANGE), pts, rtol=0, atol=4 * EPS32)


def test_gradient_checkpointing_is_transparent():
    torch.manual_seed(5)
    a = small_layer(with_cp=False).train()
    b = small_layer(with_cp=True).train()
    b.load_state_dict(a.state_dict())
    pts, qf, feats, occ2img, H, W = layer_inputs(seed=1)
    feats = [f.requires_grad_(True) for f in feats]
    grads = []
    for layer in (a, b):
        layer.zero_grad()
        for f in feats:
            f.grad = None
        out = layer(pts, qf, feats, occ2img, H, W)
        (out[0].square().sum() + out[1].sum() + out[2].sum()).backward()
        grads.append([p.grad.clone() for p in layer.parameters()] + [f.grad.clone() for f in feats])
    # recomputation runs the same float32 operations on the same values, and every parameter and feature map
    # is used once (one gradient contribution each, nothing summed in another order): bitwise equal
    for ga, gb in zip(*grads):
        assert torch.equal(ga, gb)


def test_init_weights_as_spec():
    torch.manual_seed(6)
    layer = small_layer()
    layer.init_weights()
    assert torch.all(layer.sampling.sampling_offset.weight == 0)
    b = layer.sampling.sampling_offset.bias
    # 24 U(-0.5, 0.5) draws: standard deviation 1/sqrt(12) = 0.289 with sigma = sqrt((1/80 - 1/144) / 24) /
    # (2 * 0.289) = 0.026 over the draws: above 0.289 - 5 sigma = 0.156
    assert b.min() >= -0.5 and b.max() <= 0.5 and b.std() > 0.156
    assert torch.all(layer.mixing.parameter_generator.weight == 0)
    assert torch.all(layer.self_attn.gen_tau.weight == 0)
    tau = layer.self_attn.gen_tau.bias
    assert tau.min() >= 0 and tau.max() <= 2
    # one float32 rounding of the same float64 value (mmcv's -log((1 - p) / p) agrees to 1e-16): equal
    assert torch.equal(layer.cls_branch[-1].bias, torch.full((4 * 17,), -math.log(0.99 / 0.01)))


# ----------------------------------------------------------------------------- full decoder
def small_transformer(**kw):
    cfg = dict(embed_dims=32, num_frames=2, num_points=2, num_layers=3, num_levels=2, num_classes=17,
               num_refines=[1, 2, 4], scales=[0.5], pc_range=PC_RANGE, num_views=3, num_groups=4, ffn_dims=48,
               mixing_out_points=5)
    cfg.update(kw)
    return OPSTransformer(**cfg)


def decoder_inputs(B=1, Q=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    T, N, E, H, W = 2, 3, 32, 24, 40
    feats = [torch.randn(B, T * N, E, h, w, generator=g) for h, w in ((6, 10), (3, 5))]
    ego2lidar = np.eye(4, dtype=np.float32)
    ego2lidar[:3, 3] = [0.9, -0.2, 0.3]
    metas = [dict(lidar2img=make_rig(T, N, H, W), ego2lidar=ego2lidar, img_shape=[(H, W, 3)] * (T * N))
             for _ in range(B)]
    pts = 0.5 + (torch.rand(B, Q, 1, 3, generator=g) - 0.5) * 0.3
    return pts, torch.zeros(B, Q, E), feats, metas


def test_decoder_outputs_and_detached_points():
    torch.manual_seed(7)
    tr = small_transformer().train()
    tr.init_weights()
    pts, qf, feats, metas = decoder_inputs(B=2)
    cls_scores, refine_pts = tr(pts, qf, feats, metas)
    assert [tuple(c.shape) for c in cls_scores] == [(2, 5, p, 17) for p in (1, 2, 4)]
    assert [tuple(p.shape) for p in refine_pts] == [(2, 5, p, 3) for p in (1, 2, 4)]
    # a loss on the last layer's points reaches no earlier regression branch: points are detached
    refine_pts[-1].sum().backward()
    layers = tr.decoder.decoder_layers
    assert layers[2].reg_branch[-1].weight.grad.abs().sum() > 0
    for layer in layers[:2]:
        assert layer.reg_branch[-1].weight.grad is None or torch.all(layer.reg_branch[-1].weight.grad == 0)


def test_occ2img_is_lidar2img_times_ego2lidar():
    tr = small_transformer()
    _, _, _, metas = decoder_inputs(B=2)
    occ2img = tr.decoder._occ2img(metas, 'cpu')
    ref = np.stack([np.stack(m['lidar2img']).astype(np.float64) @ m['ego2lidar'] for m in metas])
    # float64 of the same float32 matrices: each element is a 4-term float32 sum, within 4 * 2^-24 (2 eps, to
    # first order; 3 eps) of the sum of its terms' magnitudes
    terms = np.stack([np.abs(np.stack(m['lidar2img']).astype(np.float64)) @ np.abs(m['ego2lidar']) for m in metas])
    assert np.all(np.abs(occ2img.double().numpy() - ref) <= 3 * EPS32 * terms)


def test_feature_layout_channel_groups():
    """[B, T*N, C, H, W] -> [B*T*G, N, H, W, C/G]: batch (b*T + t)*G + g holds channels g*C/G..."""
    tr = small_transformer()
    B, T, N, C, H, W, G = 2, 2, 3, 32, 2, 3, 4
    feat = torch.randn(B, T * N, C, H, W)
    cl, = tr.sampling_layout([feat])
    for b in range(B):
        for t in range(T):
            frame = tr.frame_sampling_layout(feat[b, t * N:(t + 1) * N])     # what the online cache stores
            assert frame.shape == (G, N, H, W, C // G) and frame.is_contiguous()
            for g in range(G):
                assert torch.equal(frame[g], cl[(b * T + t) * G + g])
                for n in range(N):
                    expect = feat[b, t * N + n, g * 8:(g + 1) * 8].permute(1, 2, 0)
                    assert torch.equal(cl[(b * T + t) * G + g, n], expect)
    with pytest.raises(ValueError, match='sampling layout'):
        tr.decoder.run_layers(torch.zeros(B, 5, 1, 3), torch.zeros(B, 5, C), [feat] * tr.decoder.num_levels,
                              torch.zeros(B, T * N, 4, 4), 64, 96)


def test_nan_outputs_are_replaced():
    tr = small_transformer().eval()
    pts, qf, feats, metas = decoder_inputs()
    feats = [torch.full_like(f, float('nan')) for f in feats]
    cls_scores, refine_pts = tr(pts, qf, feats, metas)
    for t in cls_scores + refine_pts:
        assert torch.isfinite(t).all()


def test_decoder_input_errors():
    tr = small_transformer()
    pts, qf, feats, metas = decoder_inputs()
    with pytest.raises(ValueError, match='feature levels'):
        tr(pts, qf, feats[:1], metas)
    bad = [dict(metas[0], lidar2img=metas[0]['lidar2img'][:3])]
    with pytest.raises(ValueError, match=r'expected \(6, 4, 4\)'):
        tr(pts, qf, feats, bad)
    with pytest.raises(ValueError, match='T\\*N=6'):
        tr(pts, qf, [f[:, :4] for f in feats], metas)
    with pytest.raises(ValueError, match='one entry per decoder layer'):
        small_transformer(num_refines=[1, 2])


# ----------------------------------------------------------------------------- decoder layers from the registry
@opt.DECODER_LAYERS.register_module(name='DampedOffsetsLayer', force=True)
class DampedOffsetsLayer(OPSTransformerDecoderLayer):
    """The worked example of docs/architecture.md ("Adding a decoder layer"): V1's layer whose point offsets
    are scaled by a learned factor, starting at `damping`."""

    def __init__(self, damping=1.0, **kwargs):
        super().__init__(**kwargs)
        self.damping = nn.Parameter(torch.tensor(float(damping)))

    def refine_points(self, query_points, offsets):
        return super().refine_points(query_points, offsets * self.damping)


def test_decoder_layers_come_from_the_registry():
    default = small_transformer()
    assert all(type(layer) is OPSTransformerDecoderLayer for layer in default.decoder.decoder_layers)
    named = small_transformer(layer_cfg=dict(type='OPSTransformerDecoderLayer'))
    assert list(named.state_dict()) == list(default.state_dict())   # the published configs' layout, unchanged
    variant = small_transformer(layer_cfg=dict(type='DampedOffsetsLayer', damping=0.5))
    layers = variant.decoder.decoder_layers
    assert all(type(layer) is DampedOffsetsLayer for layer in layers)
    assert [(layer.in_points, layer.out_points, layer.damping.item()) for layer in layers] == \
        [(1, 1, 0.5), (1, 2, 0.5), (2, 4, 0.5)]
    assert set(variant.state_dict()) - set(default.state_dict()) == {f'decoder.decoder_layers.{i}.damping'
                                                                      for i in range(3)}
    # damping 1 is the default layer: the same weights give the same outputs (x * 1.0 is exact)
    torch.manual_seed(3)
    base = small_transformer().eval()
    base.init_weights()
    same = small_transformer(layer_cfg=dict(type='DampedOffsetsLayer')).eval()
    same.load_state_dict(dict(base.state_dict(), **{f'decoder.decoder_layers.{i}.damping': torch.tensor(1.0)
                                                    for i in range(3)}))
    pts, qf, feats, metas = decoder_inputs()
    with torch.no_grad():
        want, got = base(pts, qf, feats, metas), same(pts, qf, feats, metas)
    for a, b in zip(want[0] + want[1], got[0] + got[1]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match='set by the decoder'):
        small_transformer(layer_cfg=dict(type='DampedOffsetsLayer', out_points=3))
    with pytest.raises(KeyError, match='NoSuchLayer'):
        small_transformer(layer_cfg=dict(type='NoSuchLayer'))
