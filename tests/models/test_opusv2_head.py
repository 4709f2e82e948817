"""OPUS-V2 head and decoder: each loss term against a hand computation (float64 where the head allows it),
the inference threshold, the V2 sampling and point-feature branch, the projection from the occupancy
frame, and a tiny OPUS-V2 training step and inference on the CPU."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcv.runner import BaseModule
from mmdet.models.utils.builder import TRANSFORMER

import models  # noqa: F401
from camera_rig import pinhole_rig
from models.opusv2_head import OPUSV2DCDHead, OPUSV2Head
from models.opusv2_transformer import OPUSV2Sampling, OPUSV2Transformer
from tiny_opusv2 import tiny_batch, tiny_detector

PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
CLS_WEIGHTS = [10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1]
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def rounding_abs(loss_weight, gt_weight):
    """Bound on the float32 rounding of a point loss against its float64 hand computation: a normalised float32
    coordinate decoded to metres (n * 80 - 40) and a float32 voxel centre each round by <= 6.2e-6 m
    (tests/models/test_ops_float32_details.py), a difference by <= 1.3e-5 m per axis, and smooth L1 has slope
    <= 1: loss_weight * 3 axes * 1.3e-5 * (normalised GT-side weight + 1), plus ~10 float32 roundings of the
    short sums (10 eps of the loss, added by the caller)."""
    return loss_weight * 3 * 1.3e-5 * (gt_weight + 1)


@TRANSFORMER.register_module(name='V2HeadFakeTransformer', force=True)
class FakeTransformer(BaseModule):
    """Never run: the loss tests feed hand-made predictions."""

    def __init__(self, num_layers=2, num_pt_channels=4):
        super().__init__()
        self.num_layers, self.num_pt_channels = num_layers, num_pt_channels
        self.lin = nn.Linear(3, 3)


def make_head(cls=OPUSV2Head, **kw):
    return cls(num_query=4, pc_range=PC_RANGE, voxel_size=[0.4] * 3, pfn_channels=[8, 8],
               transformer=dict(type='V2HeadFakeTransformer'), train_cfg=dict(cls_weights=CLS_WEIGHTS), **kw)


def centre(i, j, k):
    return np.array([(i + 0.5) * 0.4 - 40, (j + 0.5) * 0.4 - 40, (k + 0.5) * 0.4 - 1])


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- classification on voxels
def test_voxel_focal_loss_against_a_hand_computation():
    head = make_head()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 17, generator=g, dtype=torch.float64) * 2
    coors = torch.tensor([[0, 10, 20, 3], [0, 0, 0, 0], [1, 5, 5, 5], [1, 199, 199, 15]])
    sem = torch.full((2, 200, 200, 16), 17, dtype=torch.uint8)
    sem[0, 10, 20, 3] = 4
    sem[1, 5, 5, 5] = 11
    sem[1, 199, 199, 15] = 0
    sem[0, 1, 1, 1] = 2     # occupied but not predicted: no term
    labels = [4, None, 11, 0]   # voxel 1 is free: all 17 targets are 0
    totals = [0.0, 0.0]         # per sample (voxels 0, 1 are sample 0's, voxels 2, 3 sample 1's)
    for v, label in enumerate(labels):
        for c in range(17):
            p = sigmoid(float(logits[v, c]))
            term = -0.25 * (1 - p) ** 2 * math.log(p) if c == label else -0.75 * p ** 2 * math.log(1 - p)
            totals[int(coors[v, 0])] += CLS_WEIGHTS[c] * term   # the weight of the logit channel, not of the target
    # each sample divided by its own voxels occupied in GT (sample 0: 1, sample 1: 2), then the mean over samples
    want = (2.0 * totals[0] / (1 + EPS32) + 2.0 * totals[1] / (2 + EPS32)) / 2
    got = head.voxel_cls_loss(logits, coors, sem)
    # float64 on both sides: 34 nonnegative focal terms summed per sample (34 eps / 2 each side) and ~10 roundings
    # per term; this hand computation's 1 - p loses e^x ulps at logit x (<= 4.0 here: e^4 ≈ 55 ulps of a small
    # term, a few eps of the total); the mean adds one rounding: (34 + 10 + 1) eps and those few, 100 eps ≈ 2.2e-14
    assert got.item() == pytest.approx(want, rel=100 * EPS64)
    # the per-sample normalisation differs from the pooled one of the official code at batch 2 (1 + 2 voxels):
    # far beyond the tolerance above, so the check tells them apart
    pooled = 2.0 * (totals[0] + totals[1]) / (3 + EPS32)
    assert abs(pooled - want) > 1e-3 * want
    # [QUIRK] kept: no predicted voxel occupied -> the sum is divided by eps only; here sample 0 has one free voxel
    # and sample 1 none (an exact zero), and the batch's term is the mean of the two
    free_only = head.voxel_cls_loss(logits[1:2], coors[1:2], sem)
    want_free = 2.0 * sum(CLS_WEIGHTS[c] * -0.75 * sigmoid(float(logits[1, c])) ** 2 *
                          math.log(1 - sigmoid(float(logits[1, c]))) for c in range(17)) / EPS32 / 2
    assert free_only.item() == pytest.approx(want_free, rel=100 * EPS64)   # 17 terms: the bound above holds
    # the voxels must come grouped by sample, as the CPD module sorts them
    with pytest.raises(ValueError, match='sorted'):
        head.voxel_cls_loss(logits, coors[[2, 0, 1, 3]], sem)


# ---------------------------------------------------------------- point losses
def point_scene():
    """GT: 3 occupied voxels (one visible car, one visible rare 'others', one invisible road);
    predictions: 1 query x 4 points (metres)."""
    sem = torch.full((1, 200, 200, 16), 17, dtype=torch.uint8)
    vis = torch.zeros((1, 200, 200, 16), dtype=torch.bool)
    gt = [((100, 100, 8), 4, True), ((101, 100, 8), 0, True), ((90, 90, 2), 11, False)]
    for (i, j, k), label, visible in gt:
        sem[0, i, j, k] = label
        vis[0, i, j, k] = visible
    pred = np.array([[0.25, 0.2, 2.45], [0.3, 0.1, 2.5], [0.55, 0.3, 2.5], [-3.9, -3.8, 0.0]])
    return sem, vis, gt, pred


def smooth_l1(d, beta=0.2):
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def encode(pred):
    lo = np.array(PC_RANGE[:3])
    return torch.tensor((pred - lo) / (np.array(PC_RANGE[3:]) - lo), dtype=torch.float32).view(1, 1, -1, 3)


def test_chamfer_point_loss_against_a_hand_computation():
    head = make_head()
    sem, vis, gt, pred = point_scene()
    gts = head.gt_points(sem, vis, 'cpu')
    ys = [centre(*ijk) for ijk, _, _ in gt]
    # nearest neighbours by hand (distances in the scene above are well separated)
    a = [int(np.argmin([np.linalg.norm(y - p) for p in pred])) for y in ys]
    b = [int(np.argmin([np.linalg.norm(y - p) for y in ys])) for p in pred]
    assert a == [0, 2, 3] and b == [0, 0, 1, 2]
    w = []
    for (ijk, label, visible), y, j in zip(gt, ys, a):
        weight = 5.0 if visible and np.linalg.norm(y - pred[j]) > 0.2 else 1.0
        if visible and label in (0, 2, 5, 8):
            weight = max(weight, 10.0)
        w.append(weight)
    assert w == [1.0, 10.0, 1.0]   # the invisible GT point keeps weight 1
    gt_side = sum(wj * sum(smooth_l1(d) for d in pred[aj] - y) for wj, aj, y in zip(w, a, ys)) / (3 + EPS32)
    pred_side = sum(sum(smooth_l1(d) for d in p - ys[bi]) for p, bi in zip(pred, b)) / (4 + EPS32)
    want = 0.5 * gt_side + 0.5 * pred_side
    tol = rounding_abs(0.5, sum(w) / 3) + 10 * EPS32 * want
    assert head.point_loss(encode(pred), gts).item() == pytest.approx(want, abs=tol)


def test_dcd_point_loss_against_a_hand_computation():
    head = make_head(OPUSV2DCDHead, loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.25))
    sem, vis, gt, pred = point_scene()
    gts = head.gt_points(sem, vis, 'cpu')
    ys = [centre(*ijk) for ijk, _, _ in gt]
    a, b = [0, 2, 3], [0, 0, 1, 2]          # as in the Chamfer test
    n = [a.count(j) for j in a]             # GT points sharing the nearest prediction: [1, 1, 1]
    m = [b.count(i) for i in b]             # predictions sharing the nearest GT point: [2, 2, 1, 1]
    assert m == [2, 2, 1, 1]
    w = [1.0, 10.0, 1.0]
    d_g, d_p = sum(1 / x for x in n), sum(1 / x for x in m)
    gt_side = sum(wj / nj * sum(smooth_l1(d) for d in pred[aj] - y) for wj, nj, aj, y in zip(w, n, a, ys))
    pred_side = sum(1 / mi * sum(smooth_l1(d) for d in p - ys[bi]) for mi, p, bi in zip(m, pred, b))
    want = 0.25 * gt_side / (d_g + EPS32) + 0.25 * pred_side / (d_p + EPS32)
    tol = rounding_abs(0.25, sum(wj / nj for wj, nj in zip(w, n)) / d_g) + 10 * EPS32 * want
    assert head.point_loss(encode(pred), gts).item() == pytest.approx(want, abs=tol)
    # two GT points with one nearest prediction: n = 2 for both
    pred2 = np.array([[0.25, 0.2, 2.45], [-3.9, -3.8, 0.0]])
    a2, b2 = [0, 0, 1], [0, 2]
    w2 = [1.0, 10.0, 1.0]   # GT 1 (rare, visible) is 0.4 m from its prediction: 5 -> max(5, 10)
    gt_side = sum(wj / 2 ** (j < 2) * sum(smooth_l1(d) for d in pred2[aj] - y)
                  for j, (wj, aj, y) in enumerate(zip(w2, a2, ys)))
    pred_side = sum(sum(smooth_l1(d) for d in p - ys[bi]) for p, bi in zip(pred2, b2))
    want = 0.25 * gt_side / (2 + EPS32) + 0.25 * pred_side / (2 + EPS32)
    tol = rounding_abs(0.25, (1.0 / 2 + 10.0 / 2 + 1.0) / 2) + 10 * EPS32 * want
    assert head.point_loss(encode(pred2), gts).item() == pytest.approx(want, abs=tol)


def test_loss_dict_has_eleven_terms_for_five_layers_in_the_original_order():
    head = OPUSV2Head(
        num_query=4, pc_range=PC_RANGE, voxel_size=[0.4] * 3, pfn_channels=[8, 8],
        transformer=dict(type='V2HeadFakeTransformer', num_layers=5), train_cfg=dict(cls_weights=CLS_WEIGHTS))
    sem, vis, _, pred = point_scene()
    points = encode(pred)
    coors = torch.tensor([[0, 100, 100, 8], [0, 3, 3, 3]])
    logits = [torch.full((2, 17), -float(i)) for i in range(5)]
    preds = dict(init_points=points[:, :, :1], all_refine_pts=[points] * 5, all_cls_scores=logits,
                 all_voxel_coors=[coors] * 5)
    losses = head.loss(sem, vis, preds)
    assert list(losses) == ['init_loss_pts', 'loss_cls', 'loss_pts'] + \
        [f'd{i}.{k}' for i in range(4) for k in ('loss_cls', 'loss_pts')]
    gts = head.gt_points(sem, vis, 'cpu')
    assert losses['loss_cls'] == head.voxel_cls_loss(logits[4], coors, sem)
    assert losses['d1.loss_cls'] == head.voxel_cls_loss(logits[1], coors, sem)
    assert losses['init_loss_pts'] == head.point_loss(points[:, :, :1], gts)
    with pytest.raises(ValueError, match='training mode'):
        head.loss(sem, vis, dict(preds, all_cls_scores=[None] * 4 + logits[-1:]))


# ---------------------------------------------------------------- inference
def test_get_occ_keeps_voxels_above_the_threshold_with_their_argmax():
    head = make_head(test_cfg=dict(score_thr=0.25))
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = torch.full((4, 17), logit(0.1))
    logits[0, 3] = logit(0.3)     # kept, label 3
    logits[1, 5] = logit(0.2)     # below: dropped
    logits[2, 7], logits[2, 9] = logit(0.6), logit(0.9)   # kept, label 9
    logits[3, 16] = logit(0.5)    # sample 1
    coors = torch.tensor([[0, 4, 5, 6], [0, 1, 1, 1], [0, 2, 3, 4], [1, 7, 7, 7]])
    preds = dict(init_points=torch.zeros(2, 4, 1, 3), all_cls_scores=[None, logits],
                 all_voxel_coors=[None, coors])
    res = head.get_occ(preds)
    assert len(res) == 2
    assert res[0]['occ_loc'].tolist() == [[2, 3, 4], [4, 5, 6]] and res[0]['sem_pred'].tolist() == [9, 3]
    assert res[1]['occ_loc'].tolist() == [[7, 7, 7]] and res[1]['sem_pred'].tolist() == [16]
    assert res[0]['sem_pred'].dtype == np.int64 and res[0]['occ_loc'].dtype == np.int64
    with pytest.raises(ValueError, match='unknown test_cfg'):
        make_head(test_cfg=dict(score_thr=0.25, padding=True))


# ---------------------------------------------------------------- decoder
def test_sampling_points_prototype_and_unit_scale_for_single_points():
    torch.manual_seed(0)
    s = OPUSV2Sampling(embed_dims=8, num_frames=2, num_views=6, num_groups=2, num_points=2, num_levels=4,
                       pc_range=PC_RANGE)
    s.init_weights()
    assert torch.equal(s.sampling_offset.weight, torch.zeros(12, 8))
    assert s.sampling_offset.bias.abs().max() <= 0.5 and s.sampling_prototype.weight.shape == (4, 3)
    feat = torch.randn(1, 3, 8)
    lo, size = torch.tensor(PC_RANGE[:3]), torch.tensor(PC_RANGE[3:]) - torch.tensor(PC_RANGE[:3])
    for p_in in (1, 3):
        pts = torch.rand(1, 3, p_in, 3)
        got = s.sampling_points(pts, feat)
        metres = pts * size + lo
        c = metres.mean(2)
        scale = torch.ones_like(c) if p_in == 1 else metres.std(2, unbiased=True)
        offset = (feat @ s.sampling_offset.weight.t() + s.sampling_offset.bias).view(1, 3, 4, 3)
        want = c[:, :, None] + s.sampling_prototype.weight * scale[:, :, None] + offset
        # the same float32 operations in the same order (the offset weight is zero after init_weights, so both
        # offsets are exactly the bias; float32(5.4) + 1 is float32(6.4), the decode's scale): bitwise equal
        assert torch.equal(got, want)


def tiny_transformer():
    torch.manual_seed(0)
    tr = OPUSV2Transformer(embed_dims=32, num_frames=1, num_points=2, num_layers=2, num_levels=1,
                           num_pt_channels=8, num_refines=[4, 8], pc_range=PC_RANGE, ffn_dims=64,
                           mixing_out_points=8, with_cp=False)
    tr.init_weights()
    return tr


def test_point_feature_branch_runs_in_training_or_for_the_last_layer():
    tr = tiny_transformer()
    layers = tr.decoder.decoder_layers
    assert [layer.last_layer for layer in layers] == [False, True]
    assert layers[1].cls_branch[-1].weight.shape == (8 * 8, 32)
    # no prior-probability bias: PyTorch's default Linear init (|b| <= 1/sqrt(32))
    assert layers[1].cls_branch[-1].bias.abs().max() <= 1 / math.sqrt(32)
    feats = [torch.randn(1, 6, 32, 4, 8)]
    occ2img = torch.from_numpy(pinhole_rig([0], [0, -55, 55, 180, 110, -110], 64, 160, 80, 0.5)).float()[None]
    init = torch.rand(1, 5, 1, 3)
    query = torch.zeros(1, 5, 32)
    tr.train()
    pt, pts = tr.run(init, query, tr.sampling_layout(feats), occ2img, 64, 160)
    assert [tuple(p.shape) for p in pt] == [(1, 5, 4, 8), (1, 5, 8, 8)]
    assert [tuple(p.shape) for p in pts] == [(1, 5, 4, 3), (1, 5, 8, 3)]
    tr.eval()
    with torch.no_grad():
        pt_eval, _ = tr.run(init, query, tr.sampling_layout(feats), occ2img, 64, 160)
    assert pt_eval[0] is None and pt_eval[1].shape == (1, 5, 8, 8)


def test_occ2img_is_ego2img_times_inverse_ego2occ():
    tr = tiny_transformer()
    ego2img = pinhole_rig([0], [0, -55, 55, 180, 110, -110], 64, 160, 80, 0.5).astype(np.float32)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0]) @ np.diag([1.0, -1.0, 1.0, 1.0])
    metas = [dict(ego2img=list(ego2img), ego2occ=flip, img_shape=[(64, 160, 3)] * 6),
             dict(ego2img=list(ego2img), ego2occ=np.eye(4), img_shape=[(64, 160, 3)] * 6)]
    occ2img, hw = tr.image_geometry(metas, 'cpu')
    assert hw == (64, 160)
    want = np.stack([ego2img.astype(np.float64) @ np.linalg.inv(flip), ego2img])
    # inverting a diagonal of +-1 and multiplying by it only flips signs (every other product is by 0): exact
    np.testing.assert_array_equal(occ2img.numpy(), want)
    with pytest.raises(KeyError, match='ego2occ'):
        tr.image_geometry([dict(ego2img=list(ego2img), img_shape=[(64, 160, 3)] * 6)], 'cpu')


# ---------------------------------------------------------------- tiny detector on the CPU
def test_tiny_training_step_and_inference_on_the_cpu():
    model = tiny_detector()
    model.train()
    img, metas, sem, mask = tiny_batch(flip=True)
    losses = model(img=img, img_metas=metas, voxel_semantics=sem, mask_camera=mask)
    assert len(losses) == 5 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    named = dict(model.named_parameters())
    prefix = 'pts_bbox_head.'
    for name in ('densifiers.0.cls_branch.0.weight', 'densifiers.1.cls_branch.2.bias',
                 'densifiers.1.pfn_layers.0.linear.weight',
                 'transformer.decoder.decoder_layers.0.sampling.sampling_prototype.weight',
                 'transformer.decoder.decoder_layers.0.sampling.sampling_offset.weight',
                 'transformer.decoder.decoder_layers.0.cls_branch.6.weight',
                 'transformer.decoder.decoder_layers.1.reg_branch.4.weight', 'init_points.weight'):
        grad = named[prefix + name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the class loss reaches the regression branch of the same layer through p - voxel/query centre
    model.zero_grad()
    losses = model(img=img, img_metas=tiny_batch(flip=True)[1], voxel_semantics=sem, mask_camera=mask)
    losses['loss_cls'].backward()
    assert named[prefix + 'transformer.decoder.decoder_layers.1.reg_branch.4.weight'].grad.abs().sum() > 0
    # without mask_camera every voxel counts as visible
    assert len(model(img=img, img_metas=tiny_batch(flip=False)[1], voxel_semantics=sem)) == 5

    model.eval()
    with torch.no_grad():   # untrained the prior bias (p = 0.01) keeps nothing; raise it to p ~ 0.95
        model.pts_bbox_head.densifiers[-1].cls_branch[2].bias.add_(7.6)
    img, metas, _, _ = tiny_batch(flip=False)
    model.online = False
    out = model(img=[img], img_metas=[metas], return_loss=False, rescale=True)
    assert len(out) == 1 and out[0]['occ_loc'].shape[1] == 3 and len(out[0]['sem_pred']) > 0
    assert out[0]['sem_pred'].shape[0] == out[0]['occ_loc'].shape[0]
    # the test step's sparse voxel sets have data-dependent sizes; the training decoder before them does not
    assert model.GRAPH_CAPTURABLE == {'train_decoder'}
