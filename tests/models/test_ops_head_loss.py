"""OPSHead.loss against an independent float64 re-computation of docs/method.md, "Losses"
(hand-built scenes)."""
import math
import traceback
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcv.runner import BaseModule
from mmdet.models.utils.builder import TRANSFORMER
from torch.utils._python_dispatch import TorchDispatchMode

from models.matcher import build_matcher
from models.ops_head import OPSHead

PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
CLS_WEIGHTS = [10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1]
EPS32 = float(np.finfo(np.float32).eps)
# Tolerances of the float32 losses against the float64 reference (GT weights <= 10, <= 12 points per sample):
# * points: a float32 normalised coordinate decoded to metres (n * 80 - 40) and a float32 voxel centre each
#   round by <= 6.2e-6 m (tests/models/test_ops_float32_details.py), so a point-to-GT difference moves by
#   <= 1.3e-5 m per axis and its smooth-L1 term (slope <= 1) as much: a Chamfer loss 0.5 * (sum_j w_j / Ng +
#   sum_i 1 / Np) * 3 axes moves by <= 0.5 * 3 * 1.3e-5 * (10 + 1) ≈ 2.1e-4, absolute;
# * sums: a class loss adds 17 x 12 = 204 focal terms per sample, each within ~10 float32 roundings of its value,
#   all nonnegative: (204 + 10) * 2^-24 ≈ 1.3e-5, relative (the point sums are shorter).
PTS_ABS = 0.5 * 3 * 1.3e-5 * (10 + 1)
SUM_REL = (17 * 12 + 10) * EPS32 / 2


@TRANSFORMER.register_module(name='B1LossFakeTransformer', force=True)
class FakeTransformer(BaseModule):
    """Never run here: loss tests feed hand-made predictions."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)


def make_head(**kw):
    return OPSHead(num_query=4, pc_range=PC_RANGE, voxel_size=[0.4] * 3,
                   transformer=dict(type='B1LossFakeTransformer'),
                   train_cfg=dict(cls_weights=CLS_WEIGHTS), **kw)


# ---------------------------------------------------------------- float64 reference ("Losses")
def ref_gt(sem, vis):
    pts, labels, visible = [], [], []
    for x, y, z in np.argwhere(sem != 17):
        pts.append([(x + 0.5) * 0.4 - 40, (y + 0.5) * 0.4 - 40, (z + 0.5) * 0.4 - 1])
        labels.append(int(sem[x, y, z]))
        visible.append(bool(vis[x, y, z]))
    return np.array(pts, dtype=np.float64).reshape(-1, 3), labels, visible


def ref_decode(norm):
    lo = np.array(PC_RANGE[:3])
    return np.asarray(norm, dtype=np.float64) * (np.array(PC_RANGE[3:]) - lo) + lo


def nearest(src, dst):
    return [min(range(len(dst)), key=lambda j: (float(((s - dst[j]) ** 2).sum()), j))
            for s in src]


def smooth_l1(d, beta=0.2):
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def focal(s, t):
    p = 1 / (1 + math.exp(-s))
    return -0.25 * (1 - p) ** 2 * math.log(p) if t else -0.75 * p ** 2 * math.log(1 - p)


def ref_layer(logits, points, gts, weight_rule='channel'):
    """Returns (loss_cls or None, loss_pts, list of GT weights) for one layer: each sample normalised by
    its own counts, then the mean over the samples that have ground truth."""
    cls_losses, pts_losses = [], []
    all_w = []
    for b, (gt, labels, visible) in enumerate(gts):
        if len(gt) == 0:
            continue
        cls_sum = pts_gt_sum = pts_pred_sum = 0.0
        pred = ref_decode(points[b]).reshape(-1, 3)
        a = nearest(gt, pred)
        bi = nearest(pred, gt)
        for j in range(len(gt)):
            w = 1.0
            if visible[j] and np.linalg.norm(gt[j] - pred[a[j]]) > 0.2:
                w = 5.0
            if visible[j] and labels[j] in (0, 2, 5, 8):
                w = max(w, 10.0)
            all_w.append(w)
            pts_gt_sum += w * sum(smooth_l1(d) for d in pred[a[j]] - gt[j])
        for i in range(len(pred)):
            pts_pred_sum += sum(smooth_l1(d) for d in pred[i] - gt[bi[i]])
        if logits is not None:
            lg = np.asarray(logits[b], dtype=np.float64).reshape(len(pred), -1)
            for i in range(len(pred)):
                g = gt[bi[i]]
                factor = 1 + math.hypot(g[0], g[1]) / math.hypot(80, 80)
                target = labels[bi[i]]
                for c in range(lg.shape[1]):
                    wc = CLS_WEIGHTS[c] if weight_rule == 'channel' else CLS_WEIGHTS[target]
                    cls_sum += wc * factor * focal(lg[i, c], c == target)
        pts_losses.append(0.5 * pts_gt_sum / (len(gt) + EPS32) + 0.5 * pts_pred_sum / (len(pred) + EPS32))
        cls_losses.append(2.0 * cls_sum / (len(pred) + EPS32))
    loss_pts = sum(pts_losses) / len(pts_losses)
    loss_cls = None if logits is None else sum(cls_losses) / len(cls_losses)
    return loss_cls, loss_pts, all_w


def make_scene(seed, num_layers=3, refines=(1, 2, 3)):
    """Two samples: sparse GT (near and far from the ego), predictions near some GT voxels."""
    g = np.random.default_rng(seed)
    sem = np.full((2, 200, 200, 16), 17, dtype=np.uint8)
    vis = np.zeros((2, 200, 200, 16), dtype=bool)
    # sample 0: (x, y, z, label, visible)
    for x, y, z, c, v in [(100, 100, 2, 4, True), (101, 100, 2, 4, True), (100, 102, 3, 2, True),
                          (180, 30, 5, 11, True), (181, 30, 5, 0, False), (20, 190, 1, 15, False),
                          (99, 97, 8, 8, True), (140, 60, 4, 16, True)]:
        sem[0, x, y, z], vis[0, x, y, z] = c, v
    for x, y, z, c, v in [(50, 50, 1, 3, True), (52, 50, 1, 5, True), (150, 150, 6, 7, False),
                          (10, 100, 0, 13, True), (160, 20, 9, 1, True)]:
        sem[1, x, y, z], vis[1, x, y, z] = c, v
    gts = [ref_gt(sem[b], vis[b]) for b in range(2)]

    def near(b, count):
        """Normalised points: some within 0.1 m of a GT centre, others anywhere."""
        gt = gts[b][0]
        pts = g.uniform(-35, 35, size=(count, 3)) * np.array([1, 1, 0.08]) + [0, 0, 2.2]
        pick = g.choice(len(gt), size=count // 2, replace=True)
        pts[: count // 2] = gt[pick] + g.uniform(-0.1, 0.1, size=(count // 2, 3))
        lo, hi = np.array(PC_RANGE[:3]), np.array(PC_RANGE[3:])
        return (pts - lo) / (hi - lo)

    q = 4
    init = np.stack([near(b, q) for b in range(2)])[:, :, None, :]
    layers = []
    for p in refines[:num_layers]:
        pts = np.stack([near(b, q * p) for b in range(2)]).reshape(2, q, p, 3)
        logits = g.normal(0, 2, size=(2, q, p, 17))
        layers.append((logits, pts))
    return sem, vis, gts, init, layers


def to_preds(init, layers, dtype=torch.float32):
    return dict(init_points=torch.tensor(init, dtype=dtype),
                all_cls_scores=[torch.tensor(l, dtype=dtype) for l, _ in layers],
                all_refine_pts=[torch.tensor(p, dtype=dtype) for _, p in layers])


# ---------------------------------------------------------------- tests
def test_losses_match_float64_reference():
    sem, vis, gts, init, layers = make_scene(0)
    head = make_head()
    losses = head.loss(torch.from_numpy(sem), torch.from_numpy(vis), to_preds(init, layers))
    # the original's key order (init, last layer, d0, d1): the total loss is their float32 sum in it
    assert list(losses) == ['init_loss_pts', 'loss_cls', 'loss_pts', 'd0.loss_cls', 'd0.loss_pts',
                            'd1.loss_cls', 'd1.loss_pts']
    _, ref_init, w_init = ref_layer(None, init, gts)
    assert losses['init_loss_pts'].item() == pytest.approx(ref_init, abs=PTS_ABS + SUM_REL * ref_init)
    names = ['d0.', 'd1.', '']
    seen_weights = set(w_init)
    for (logits, pts), prefix in zip(layers, names):
        ref_cls, ref_pts, w = ref_layer(logits, pts, gts)
        seen_weights |= set(w)
        assert losses[prefix + 'loss_cls'].item() == pytest.approx(ref_cls, rel=SUM_REL)
        assert losses[prefix + 'loss_pts'].item() == pytest.approx(ref_pts, abs=PTS_ABS + SUM_REL * ref_pts)
        # The per-channel weighting (quirk 4.3) is what is checked, not the per-target one: the two rules must
        # differ by more than twice the class loss's tolerance, or a loss within it of one could match both.
        natural, _, _ = ref_layer(logits, pts, gts, weight_rule='target')
        assert abs(natural - ref_cls) > 2 * SUM_REL * ref_cls
    # The scene exercises all GT weights: 1 (hidden / matched), 5 (visible, unmatched), 10 (rare).
    assert seen_weights == {1.0, 5.0, 10.0}


def test_hand_computed_single_voxel():
    """One GT voxel, two predictions, numbers written out by hand."""
    head = make_head()
    sem = torch.full((1, 200, 200, 16), 17, dtype=torch.uint8)
    vis = torch.zeros((1, 200, 200, 16), dtype=torch.bool)
    sem[0, 150, 100, 2] = 4            # car, centre (20.2, 0.2, 0.0) m, visible
    vis[0, 150, 100, 2] = True
    lo, size = torch.tensor(PC_RANGE[:3]), torch.tensor([80.0, 80.0, 6.4])
    metres = torch.tensor([[20.2, 0.2, 0.3], [0.0, 0.1, 0.0]])   # 0.3 m above; far away
    pts = ((metres - lo) / size).view(1, 1, 2, 3)
    logits = torch.zeros(1, 1, 2, 17)
    logits[0, 0, 0, 4] = 2.0
    preds = dict(init_points=pts[:, :, :1], all_cls_scores=[logits], all_refine_pts=[pts])
    losses = head.loss(sem, vis, preds)
    # GT -> nearest prediction (point 0): gap 0.3 > 0.2 and visible -> weight 5;
    # smooth-L1 of dz = 0.3: 0.3 - 0.1 = 0.2. Predictions -> GT: point 0: 0.2; point 1:
    # dx = 20.2 -> 20.1, dy = 0.1 -> 0.5*0.01/0.2 = 0.025, dz = 0 -> 20.125.
    expect_pts = 0.5 * 5 * 0.2 / (1 + EPS32) + 0.5 * (0.2 + 20.125) / (2 + EPS32)
    # float32 positions: the z round trip (z + 1) / 6.4 * 6.4 - 1 and the z centre are within ~3e-7 m (slope 1
    # at dz = 0.3); the far point's x, y and the centre's are within 1.3e-5 m (slopes 1 and 0.5, weight 1/4):
    # <= 3 * 3e-7 + 0.25 * 1.5 * 1.3e-5 ≈ 6e-6 of 5.6, ~1e-6 relative, plus a few 2^-24 of sums: 1e-5
    assert losses['loss_pts'].item() == pytest.approx(expect_pts, rel=1e-5)
    # init: single point 0 both ways: 0.5*5*0.2 + 0.5*0.2. Only dz (slope 1) carries rounding: 3 * 3e-7 of 0.6.
    assert losses['init_loss_pts'].item() == pytest.approx(0.5 + 0.1, rel=1e-5)
    # Both predictions get target car; distance factor 1 + |(20.2, 0.2)| / 113.137.
    factor = 1 + math.hypot(20.2, 0.2) / math.hypot(80, 80)
    fl_pos = -0.25 * (1 - 1 / (1 + math.exp(-2))) ** 2 * math.log(1 / (1 + math.exp(-2)))
    fl_pos0 = -0.25 * 0.25 * math.log(0.5)         # logit 0, target 1
    fl_neg0 = -0.75 * 0.25 * math.log(0.5)         # logit 0, target 0
    neg = sum(CLS_WEIGHTS) - CLS_WEIGHTS[4]
    total = CLS_WEIGHTS[4] * (fl_pos + fl_pos0) + 2 * neg * fl_neg0
    # 34 focal terms, each within ~10 float32 roundings, summed: (34 + 10) * 2^-24 ≈ 2.6e-6; the distance
    # factor's float32 norm adds a few 2^-24: 1e-5 leaves 3x
    assert losses['loss_cls'].item() == pytest.approx(2.0 * factor * total / (2 + EPS32),
                                                      rel=1e-5)


def test_six_layers_give_the_thirteen_keys():
    sem, vis, gts, init, layers = make_scene(1, num_layers=3)
    layers = layers * 2
    losses = make_head().loss(torch.from_numpy(sem), torch.from_numpy(vis),
                              to_preds(init, layers))
    expect = ['init_loss_pts', 'loss_cls', 'loss_pts'] + [f'd{i}.loss_{k}' for i in range(5) for k in ('cls', 'pts')]
    assert list(losses) == expect and len(losses) == 13
    assert torch.equal(losses['d0.loss_cls'], losses['d3.loss_cls'])


def test_empty_sample_is_left_out_and_all_empty_gives_finite_zero():
    sem, vis, gts, init, layers = make_scene(2)
    head = make_head()
    sem_one_empty = sem.copy()
    sem_one_empty[1] = 17
    with pytest.warns(UserWarning, match=r'samples \[1\]'):
        both = head.loss(torch.from_numpy(sem_one_empty), torch.from_numpy(vis),
                         to_preds(init, layers))
    first = head.loss(torch.from_numpy(sem[:1]), torch.from_numpy(vis[:1]),
                      to_preds(init[:1], [(l[:1], p[:1]) for l, p in layers]))
    for k in first:
        # sample 1 is left out of every sum: the same float32 operations on sample 0's tensors in both calls,
        # and the mean over one sample is its value: bitwise equal
        assert both[k].item() == first[k].item()

    preds = to_preds(init, layers)
    for t in [preds['init_points']] + preds['all_cls_scores'] + preds['all_refine_pts']:
        t.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        zero = head.loss(torch.full_like(torch.from_numpy(sem), 17), torch.from_numpy(vis), preds)
    total = sum(zero.values())
    assert len(zero) == 7 and total.item() == 0.0
    total.backward()
    assert preds['all_cls_scores'][0].grad is not None


def test_bad_ground_truth_raises_clear_errors():
    head = make_head()
    sem, vis, gts, init, layers = make_scene(3)
    with pytest.raises(ValueError, match='200, 200, 16'):
        head.loss(torch.from_numpy(sem[:, :100]), torch.from_numpy(vis[:, :100]),
                  to_preds(init, layers))
    bad = sem.copy()
    bad[0, 0, 0, 0] = 40
    with pytest.raises(ValueError, match=r'labels \[40\]'):
        head.loss(torch.from_numpy(bad), torch.from_numpy(vis), to_preds(init, layers))


def test_gradcheck_float64():
    sem, vis, gts, init, layers = make_scene(4, num_layers=2, refines=(2, 2))
    head = make_head()
    gt_list = head.gt_points(torch.from_numpy(sem), torch.from_numpy(vis), 'cpu')
    logits = torch.tensor(layers[1][0][:1, :3], dtype=torch.float64, requires_grad=True)
    points = torch.tensor(layers[1][1][:1, :3], dtype=torch.float64, requires_grad=True)

    def fn(lg, pt):
        loss_cls, loss_pts = head.loss_single(lg, pt, gt_list[:1])
        return loss_cls + loss_pts

    # Matching and weights stay fixed under the finite-difference steps (no near-ties here). Central
    # differences in float64: each evaluation of f (|f| ≈ 133, sums of ~150 nonnegative terms) is within
    # 150 * 2^-53 * 133 ≈ 2.2e-12 of exact, so (f(x + h) - f(x - h)) / 2h errs by <= 4.4e-12 / 2e-7 ≈ 2.2e-5,
    # absolute; truncation (h^2 / 6 times the third derivative) is ~1e-14 (smooth L1 is piecewise quadratic).
    assert torch.autograd.gradcheck(fn, (logits, points), eps=1e-7, atol=2.5e-5, rtol=0)
    loss = fn(logits, points)
    gl, gp = torch.autograd.grad(loss, (logits, points))
    assert gl.abs().sum() > 0 and gp.abs().sum() > 0


def test_a_batch_is_the_mean_of_its_samples():
    """Any split of a total batch over GPUs trains the same function: each term of a batch of two is
    the mean of the two samples' own terms (and a batch of one is that sample's term, as the original)."""
    sem, vis, gts, init, layers = make_scene(0)
    head = make_head()
    both = head.loss(torch.from_numpy(sem), torch.from_numpy(vis), to_preds(init, layers))
    single = []
    for b in range(2):
        part = [(lg[b:b + 1], pt[b:b + 1]) for lg, pt in layers]
        single.append(head.loss(torch.from_numpy(sem[b:b + 1]), torch.from_numpy(vis[b:b + 1]),
                                to_preds(init[b:b + 1], part)))
    for key in both:
        # the per-sample terms are the same float32 operations in both calls (bitwise equal); the batch mean
        # adds one float32 rounding of their sum (halving is exact): within 2^-24 of the exact mean
        assert both[key].item() == pytest.approx((single[0][key].item() + single[1][key].item()) / 2, rel=EPS32 / 2)
    # distinct samples, or the check above could not tell the per-sample normalisation from a pooled one: far
    # apart compared with the 2^-24 it resolves (1e-3 asks for a clear difference)
    assert single[0]['loss_pts'].item() != pytest.approx(single[1]['loss_pts'].item(), rel=1e-3)


class HostReads(TorchDispatchMode):
    """Records, at the dispatcher, each host read of a device value (`.item()`, a boolean index, `nonzero`) whose
    innermost caller outside torch and this test is in one of `own_files` (mmdet's CPU focal loss reads the host
    itself; on CUDA it runs mmcv's kernel): `reads` = (position among the dispatched operators, name, caller); and
    `first_convolution`, the position of the first convolution."""

    def __init__(self, own_files):
        super().__init__()
        self.own_files = own_files
        self.reads, self.ops, self.first_convolution = [], 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.ops += 1
        if self.first_convolution is None and name in ('aten::convolution', 'aten::_convolution', 'aten::conv2d'):
            self.first_convolution = self.ops
        bool_index = name in ('aten::index.Tensor', 'aten::index_put_', 'aten::index_put') and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if name in ('aten::_local_scalar_dense', 'aten::nonzero', 'aten::masked_select') or bool_index:
            caller = next(f for f in reversed(traceback.extract_stack())
                          if '/torch/' not in f.filename and f.filename != __file__)
            if caller.filename.endswith(self.own_files):
                self.reads.append((self.ops, name, f'{caller.filename}:{caller.lineno}'))
        return func(*args, **(kwargs or {}))

    def names(self):
        return sorted(name for _, name, _ in self.reads)


def test_the_loss_reads_the_device_once_per_batch_and_once_per_sample():
    """Each host read of a device value stalls the host until the GPU has caught up, so the fast training step
    runs ahead of the GPU only between them. The head's own code reads the label check once per batch and each
    sample's ground-truth count (nonzero); nothing per layer, neither in the matcher nor in the criterion. Counted
    on the CPU at the dispatcher, for the operators inside models/ops_head.py, models/matcher.py and
    models/criterion.py."""
    # the CPU's KD-tree matching reads the host itself; the CUDA kernel and the tiled PyTorch path do not
    sem, vis, gts, init, layers = make_scene(0)
    head = make_head(matcher=dict(type='NearestPointMatcher', backend='torch'))
    preds = to_preds(init, layers)
    with HostReads(('models/ops_head.py', 'models/matcher.py', 'models/criterion.py')) as spy:
        head.loss(torch.from_numpy(sem), torch.from_numpy(vis), preds)
    batch = sem.shape[0]
    assert len(layers) >= 2 and batch == 2
    assert spy.names() == ['aten::_local_scalar_dense'] + ['aten::nonzero'] * batch, spy.reads


def test_a_training_step_reads_the_device_before_its_first_convolution():
    """The detector takes the ground truth (and its 1 + B host reads) before it queues the backbone, so that the
    reads wait for the batch's copy only, not for the forward pass, and the loss's kernels are queued while the
    GPU still runs it. The head's loss then reads nothing more (the test above); here the whole step's reads by
    the detector's, head's, matcher's and criterion's own code, counted on the CPU with the tiled PyTorch matching
    (the CPU's KD-tree reads the host itself)."""
    from tiny_detector import build, gt, images, metas_for

    model = build().train()
    model.pts_bbox_head.matcher = build_matcher(dict(type='NearestPointMatcher', backend='torch'))
    batch = 2
    sem, mask = gt(batch)
    img = torch.stack([torch.cat([images(1, seed=b), images(0, seed=b)]) for b in range(batch)])
    own = ('models/ops.py', 'models/ops_head.py', 'models/matcher.py', 'models/criterion.py')
    with HostReads(own) as spy:
        losses = model(img=img, img_metas=[metas_for([1, 0])] * batch, voxel_semantics=sem, mask_camera=mask)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert spy.names() == ['aten::_local_scalar_dense'] + ['aten::nonzero'] * batch, spy.reads
    assert spy.first_convolution is not None
    assert all(at < spy.first_convolution for at, _, _ in spy.reads), (spy.first_convolution, spy.reads)
