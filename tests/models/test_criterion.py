"""models/matcher.py and models/criterion.py in isolation: hand-made point sets in metres whose matches and loss
values are written out by hand (or computed in float64 beside them), and the heads' construction of both from
their config keys."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcv.runner import BaseModule
from mmdet.models.utils.builder import TRANSFORMER

from models.criterion import (
    CRITERIA,
    ChamferFocalCriterion,
    VoxelChamferFocalCriterion,
    build_criterion,
    chamfer_weighting,
    density_weighting,
)
from models.matcher import MATCHERS, NearestPointMatcher, PointMatch, build_matcher
from models.ops_head import OPSHead
from models.opusv2_head import OPUSV2DCDHead, OPUSV2Head

EPS32 = float(np.finfo(np.float32).eps)   # mmdet adds it to every avg_factor
U64 = 2.0 ** -53                          # unit roundoff of float64
DIAG = math.hypot(80, 80)
PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]

# ---------------------------------------------------------------- the scene (metres), matches by hand
# GT: g0 (0, 0, 0) label 1 visible, g1 (1, 0, 0) label 0 (rare) visible, g2 (10, 0, 0) label 2 hidden.
# Predictions: p0 (0.3, 0, 0), p1 (0.7, 0, 0), p2 (0.9, 0.1, 0), p3 (6, 0, 0).
# GT -> nearest prediction: g0: p0 (0.3; p1 0.7); g1: p2 (0.141; p1 0.3); g2: p3 (4).     a = [0, 2, 3]
# prediction -> nearest GT: p0: g0 (0.3; g1 0.7); p1: g1 (0.3; g0 0.7); p2: g1; p3: g2 (4; g1 5).   b = [0, 1, 1, 2]
GT = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([1, 0, 2])
VISIBLE = torch.tensor([True, True, False])
PRED = torch.tensor([[0.3, 0.0, 0.0], [0.7, 0.0, 0.0], [0.9, 0.1, 0.0], [6.0, 0.0, 0.0]], dtype=torch.float64)
A, B = [0, 2, 3], [0, 1, 1, 2]
CLS_WEIGHTS = [2.0, 3.0, 5.0]

# GT weights: g0 visible and 0.3 m > 0.2 m from p0 -> 5; g1 visible, rare (class 0), 0.141 m from p2 -> max(1, 10)
# = 10; g2 hidden -> 1 (4 m away). Smooth L1 (beta 0.2) per axis: |d| < 0.2 -> 2.5 d^2, else |d| - 0.1:
# g0 - p0: d = (0.3, 0, 0) -> 0.2;  g1 - p2: (0.1, 0.1, 0) -> 0.025 + 0.025 = 0.05;  g2 - p3: (4, 0, 0) -> 3.9
# p1 - g1: (0.3, 0, 0) -> 0.2.
W_GT = [5.0, 10.0, 1.0]
GT_SIDE = [0.2, 0.05, 3.9]          # f(p_a(j) - g_j), j = 0..2
PRED_SIDE = [0.2, 0.2, 0.05, 3.9]   # f(p_i - g_b(i)), i = 0..3
# Tolerance of the point terms: the decimal coordinates round to float64 within u |x| <= 1.1e-15 (|x| <= 10), a
# difference within 2.2e-15 per axis; smooth L1 has slope <= 1, the weights are <= 10 and a side sums <= 4 points
# of 3 axes: 0.5 * 10 * 12 * 2.2e-15 ≈ 1.3e-13 absolute, plus a few u of the sums: 1e-12.
PTS_ABS = 1e-12


def criterion(**kw):
    cfg = dict(type='ChamferFocalCriterion', num_classes=3, cls_weights=CLS_WEIGHTS,
               loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5))
    cfg.update(kw)
    return build_criterion(cfg)


def gt_tuple():
    return GT.float(), LABELS, VISIBLE   # the head hands float32 voxel centres; the criterion casts them


def focal(s, t):
    p = 1 / (1 + math.exp(-s))
    return -0.25 * (1 - p) ** 2 * math.log(p) if t else -0.75 * p ** 2 * math.log(1 - p)


# ---------------------------------------------------------------- matcher
def test_nearest_point_matcher_on_the_hand_made_scene():
    matcher = build_matcher(dict(type='NearestPointMatcher'))
    assert MATCHERS.get('NearestPointMatcher') is NearestPointMatcher
    pred = PRED.clone().requires_grad_(True)
    for backend in ('auto', 'torch'):
        match = NearestPointMatcher(backend=backend)(GT, pred)
        assert isinstance(match, PointMatch)
        assert match.pred_for_gt.tolist() == A and match.gt_for_pred.tolist() == B
        assert match.pred_for_gt.dtype == torch.long and not match.gt_for_pred.requires_grad
    assert [m.tolist() for m in matcher(GT, PRED)] == [A, B]


def test_matcher_ties_go_to_the_lowest_index_in_float32():
    # exact ties (representable coordinates): GT 0 is 1 m from both predictions, prediction 1 (0.5 m) from both GT
    gt = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pred = torch.tensor([[-1.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    match = NearestPointMatcher(backend='torch')(gt, pred)
    assert match.pred_for_gt.tolist() == [1, 1] and match.gt_for_pred.tolist() == [0, 0]
    # 1e-9 m apart in float64, the same float32 number: a tie in float32, lowest index
    pred64 = torch.tensor([[10.0, 0.0, 0.0], [10.0 - 1e-9, 0.0, 0.0]], dtype=torch.float64)
    assert NearestPointMatcher()(torch.zeros(1, 3, dtype=torch.float64), pred64).pred_for_gt.tolist() == [0]
    with pytest.raises(ValueError, match='backend'):
        NearestPointMatcher(backend='cuda')


# ---------------------------------------------------------------- weighting strategies
def test_chamfer_and_density_weightings_by_hand():
    match = PointMatch(torch.tensor([0, 0, 1]), torch.tensor([2, 2, 2, 0]))   # 3 GT points, 4 predictions
    w = torch.tensor([1.0, 10.0, 5.0], dtype=torch.float64)
    w_g, d_g, w_p, d_p = chamfer_weighting(match, w, 4)
    assert w_g is w and d_g == 3 and w_p is None and d_p == 4
    w_g, d_g, w_p, d_p = density_weighting(match, w, 4)
    # n: GT 0 and 1 share prediction 0 (2), GT 2 alone (1); m: predictions 0..2 share GT 2 (3), prediction 3 alone
    # halving and thirds of small integers: one rounding each (exact for the halves), compared to 2 u
    assert w_g.tolist() == [0.5, 5.0, 5.0] and d_g.item() == 2.0
    assert torch.allclose(w_p, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=torch.float64), rtol=2 * U64, atol=0)
    assert d_p.item() == pytest.approx(2.0, rel=4 * U64)   # three rounded thirds and 1, summed: <= 4 u


# ---------------------------------------------------------------- Chamfer + focal criterion
def test_gt_point_weights_1_5_10():
    crit = criterion()
    got = crit.gt_point_weights(GT, PRED[A], LABELS, VISIBLE)
    assert got.tolist() == W_GT
    # a hidden rare point keeps 1; a visible far point of a common class 5
    assert crit.gt_point_weights(GT[:1], PRED[3:], torch.tensor([0]), torch.tensor([False])).tolist() == [1.0]
    assert crit.gt_point_weights(GT[:1], PRED[3:], torch.tensor([1]), torch.tensor([True])).tolist() == [5.0]


def test_chamfer_point_loss_by_hand():
    crit = criterion()
    match = NearestPointMatcher()(GT, PRED)
    loss_cls, loss_pts = crit.sample_losses(PRED, None, gt_tuple(), match)
    assert loss_cls is None and loss_pts.dtype == torch.float64
    # 0.5 * (5 * 0.2 + 10 * 0.05 + 1 * 3.9) / 3 + 0.5 * (0.2 + 0.2 + 0.05 + 3.9) / 4 = 0.9 + 0.54375
    want = 0.5 * sum(w * f for w, f in zip(W_GT, GT_SIDE)) / (3 + EPS32) + 0.5 * sum(PRED_SIDE) / (4 + EPS32)
    assert want == pytest.approx(0.9 + 0.54375, rel=1e-6)   # the float32 eps in the normalisers: ~1e-7
    assert loss_pts.item() == pytest.approx(want, abs=PTS_ABS)


def test_density_point_loss_by_hand():
    crit = criterion(point_weighting='density')
    match = NearestPointMatcher()(GT, PRED)
    _, loss_pts = crit.sample_losses(PRED, None, gt_tuple(), match)
    # n = [1, 1, 1] (a has no repeats), m = [1, 2, 2, 1] (p1 and p2 share g1): GT side as Chamfer over
    # sum 1/n = 3; prediction side (0.2 + 0.2 / 2 + 0.05 / 2 + 3.9) / (1 + 1/2 + 1/2 + 1) = 4.225 / 3
    want = 0.5 * sum(w * f for w, f in zip(W_GT, GT_SIDE)) / (3 + EPS32) + 0.5 * 4.225 / (3 + EPS32)
    assert loss_pts.item() == pytest.approx(want, abs=PTS_ABS)


def test_focal_term_weighs_by_logit_channel_and_distance():
    crit = criterion()
    match = NearestPointMatcher()(GT, PRED)
    logits = torch.zeros(4, 3, dtype=torch.float64)
    logits[0, 1], logits[1, 2], logits[3, 0] = 2.0, -1.0, 0.5
    loss_cls, _ = crit.sample_losses(PRED, logits, gt_tuple(), match)
    # targets: the labels of g_b(i) = [1, 0, 0, 2]; distance factor 1 + |xy(g_b(i))| / sqrt(80^2 + 80^2)
    targets = [int(LABELS[j]) for j in B]
    factors = [1 + math.hypot(*GT[j, :2].tolist()) / DIAG for j in B]
    total = sum(CLS_WEIGHTS[c] * factors[i] * focal(float(logits[i, c]), c == targets[i])
                for i in range(4) for c in range(3))
    want = 2.0 * total / (4 + EPS32)
    # float64 on both sides: 12 nonnegative terms of ~10 roundings each, summed: (12 + 10) u relative; 100 u
    assert loss_cls.item() == pytest.approx(want, rel=100 * U64)
    # [QUIRK] the class weight of the logit channel, not of the target class: the two differ far beyond 100 u
    natural = 2.0 * sum(CLS_WEIGHTS[targets[i]] * factors[i] * focal(float(logits[i, c]), c == targets[i])
                        for i in range(4) for c in range(3)) / (4 + EPS32)
    assert abs(natural - want) > 1e-3 * want


def test_a_batch_is_the_mean_over_its_samples_with_ground_truth():
    crit = criterion()
    points = torch.stack([PRED, PRED[[3, 2, 1, 0]] + 0.05]).requires_grad_(True)   # [2, 4, 3]
    logits = torch.linspace(-2, 2, 24, dtype=torch.float64).view(2, 4, 3).requires_grad_(True)
    gts = [gt_tuple(), gt_tuple()]
    matches = [NearestPointMatcher()(GT, p) for p in points.detach()]
    both = crit(points, logits, gts, matches)
    single = [crit.sample_losses(points[b], logits[b], gts[b], matches[b]) for b in range(2)]
    for k in range(2):
        # the per-sample terms are the same float64 operations; the mean adds one rounding of the sum: 1 u
        assert both[k].item() == pytest.approx((single[0][k].item() + single[1][k].item()) / 2, rel=U64)
    assert abs(single[0][1].item() - single[1][1].item()) > 1e-3   # two distinct samples
    # a sample without ground truth (match None) is left out: the mean over one sample is its term, bit for bit
    empty = (GT[:0].float(), LABELS[:0], VISIBLE[:0])
    one = crit(points, logits, [gts[0], empty], [matches[0], None])
    assert one[0].item() == single[0][0].item() and one[1].item() == single[0][1].item()
    # none at all: exact zeros attached to the graph
    zero_cls, zero_pts = crit(points, logits, [empty, empty], [None, None])
    assert zero_cls.item() == 0.0 and zero_pts.item() == 0.0
    (zero_cls + zero_pts).backward()
    assert logits.grad is not None and points.grad is not None
    assert crit(points, None, [empty, empty], [None, None])[0] is None
    with pytest.raises(ValueError, match='matches'):
        crit(points, logits, gts, matches[:1])


def test_criterion_config_errors_and_registry():
    assert CRITERIA.get('ChamferFocalCriterion') is ChamferFocalCriterion
    assert CRITERIA.get('VoxelChamferFocalCriterion') is VoxelChamferFocalCriterion
    with pytest.raises(ValueError, match='point_weighting'):
        criterion(point_weighting='uniform')
    with pytest.raises(ValueError, match='one weight per class'):
        criterion(cls_weights=[1.0, 2.0])
    assert list(criterion().state_dict()) == [] and list(criterion().parameters()) == []


# ---------------------------------------------------------------- voxel class term (OPUS-V2)
def test_voxel_class_loss_per_sample_by_hand():
    crit = build_criterion(dict(type='VoxelChamferFocalCriterion', num_classes=3, cls_weights=CLS_WEIGHTS,
                                empty_label=3))
    sem = torch.full((3, 4, 4, 4), 3, dtype=torch.uint8)
    sem[0, 1, 1, 1], sem[1, 2, 2, 2], sem[1, 0, 0, 0] = 2, 0, 1
    coors = torch.tensor([[0, 1, 1, 1], [0, 3, 3, 3], [1, 0, 0, 0], [1, 2, 2, 2]])   # sample 2: no voxel
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0], [1.0, -2.0, 0.0], [3.0, 0.0, -1.0]],
                          dtype=torch.float64)
    targets = [2, None, 1, 0]   # voxel 1 is free: all three targets 0
    per = [0.0, 0.0, 0.0]
    for v, t in enumerate(targets):
        per[int(coors[v, 0])] += sum(CLS_WEIGHTS[c] * focal(float(logits[v, c]), c == t) for c in range(3))
    # sample 0: 1 occupied voxel, sample 1: 2, sample 2: no voxel (an exact zero); the mean over the 3 samples
    want = (2.0 * per[0] / (1 + EPS32) + 2.0 * per[1] / (2 + EPS32) + 0.0) / 3
    # float64: 12 terms of ~10 roundings, the means a few more: 100 u
    assert crit.voxel_class_loss(logits, coors, sem).item() == pytest.approx(want, rel=100 * U64)
    with pytest.raises(ValueError, match='batch of 1'):
        crit.voxel_class_loss(logits, coors, sem[:1])


# ---------------------------------------------------------------- heads build both from their config keys
@TRANSFORMER.register_module(name='CriterionFakeTransformer', force=True)
class FakeTransformer(BaseModule):
    """Never run: the heads are only built."""

    def __init__(self, num_layers=2, num_pt_channels=4):
        super().__init__()
        self.num_layers, self.num_pt_channels = num_layers, num_pt_channels
        self.lin = nn.Linear(3, 3)


@pytest.mark.parametrize('head_cls, criterion_cls, weighting', [
    (OPSHead, ChamferFocalCriterion, 'chamfer'), (OPUSV2Head, VoxelChamferFocalCriterion, 'chamfer'),
    (OPUSV2DCDHead, VoxelChamferFocalCriterion, 'density')])
def test_heads_build_matcher_and_criterion_from_their_keys(head_cls, criterion_cls, weighting):
    kw = dict(pfn_channels=[8, 8]) if head_cls is not OPSHead else {}
    weights = [10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1]
    head = head_cls(num_query=4, pc_range=PC_RANGE, voxel_size=[0.4] * 3,
                    transformer=dict(type='CriterionFakeTransformer'),
                    loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.25),
                    train_cfg=dict(cls_weights=weights, empty_weights=4.0), **kw)
    crit = head.criterion
    assert type(crit) is criterion_cls and crit.point_weighting == weighting
    assert crit.cls_weights == [float(w) for w in weights] and crit.empty_weights == 4.0
    assert crit.rare_classes == [0, 2, 5, 8] and crit.rare_weights == 10.0 and crit.empty_dist_thr == 0.2
    assert crit.dist_norm == DIAG and crit.loss_pts.loss_weight == 0.25 and crit.loss_cls.loss_weight == 2.0
    assert isinstance(head.matcher, NearestPointMatcher)
    if criterion_cls is VoxelChamferFocalCriterion:
        assert crit.empty_label == 17
    # nothing of the matcher or the criterion enters the state dict (the official checkpoints load strictly)
    assert not any('criterion' in k or 'matcher' in k or 'loss_' in k for k in head.state_dict())
    # a variant is one config entry
    other = head_cls(num_query=4, pc_range=PC_RANGE, voxel_size=[0.4] * 3,
                     transformer=dict(type='CriterionFakeTransformer'), criterion=dict(point_weighting='density'),
                     matcher=dict(type='NearestPointMatcher', backend='torch'), **kw)
    assert other.criterion.point_weighting == 'density' and other.matcher.backend == 'torch'
