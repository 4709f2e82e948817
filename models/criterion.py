"""Loss criteria of OPS and OPUS-V2, apart from the head and the matcher (docs/method.md, "Losses";
docs/opusv2.md, "Losses").

The head (models/ops_head.py) decodes each decoder layer's points, asks its matcher (models/matcher.py) for
the match of every sample and hands points, logits, ground truth and matches to its criterion, which returns
the layer's terms. Criteria are registered in `CRITERIA` and built from config dicts with
`build_criterion(dict(type=...))`, as SparseOcc's loss_utils / DETR's SetCriterion; they hold the two mmdet
loss modules (focal, smooth L1) and no parameters or buffers, so a head's state dict does not change.

* `ChamferFocalCriterion` (OPS): per sample, the Chamfer point term (smooth L1 in both directions, the
  ground-truth side weighted by `gt_point_weights`) and the focal class term on the predicted points (target:
  the label of the matched ground-truth point; weight: the class weight of the *logit channel* times a
  distance factor, [QUIRK] kept). `point_weighting` picks how the two Chamfer sides weigh and normalise
  their points: 'chamfer' (each point 1, divided by the point counts) or 'density' (the density-normalised
  "DCD" loss of OPUS-V2: 1 / multiplicity of the match, divided by the sum of those weights).
* `VoxelChamferFocalCriterion` (OPUS-V2): the same point term; the class term on the CPD module's voxels
  (`voxel_class_loss`: target the voxel's own label, free = all-negative, no distance factor).

Every term is computed per sample, normalised by that sample's own counts, and a batch's term is the mean over
its samples (point terms: over the samples that have ground truth). This is the original's function at one
sample per GPU (its published 8 GPUs x 1), and the same function for any split of the total batch over GPUs
(docs/method.md, "Losses"; docs/opusv2.md, "Losses").

Symbols: B batch, Ng / Np ground-truth / predicted points of a sample (metres), K classes (17),
U' voxels of a CPD output; a(j) the prediction matched to GT point j, b(i) the GT point matched to prediction i.
"""
import math

import torch
import torch.nn as nn
from mmcv.utils import Registry, build_from_cfg
from mmdet.models.builder import build_loss

from core.benchmarks import OCC3D_NUSCENES

__all__ = ['CRITERIA', 'POINT_WEIGHTINGS', 'ChamferFocalCriterion', 'VoxelChamferFocalCriterion', 'build_criterion',
           'chamfer_weighting', 'density_weighting']

CRITERIA = Registry('criterion')

# xy diagonal of the Occ3D-nuScenes range, sqrt(80^2 + 80^2) m: the distance factor's scale (the head passes its own)
_DIAGONAL = math.hypot(OCC3D_NUSCENES.point_cloud_range[3] - OCC3D_NUSCENES.point_cloud_range[0],
                       OCC3D_NUSCENES.point_cloud_range[4] - OCC3D_NUSCENES.point_cloud_range[1])


def build_criterion(cfg):
    """A criterion from its config dict (`type` names a class registered in `CRITERIA`)."""
    return build_from_cfg(cfg, CRITERIA)


# ---------------------------------------------------------------- weighting strategies of the Chamfer sides
def chamfer_weighting(match, gt_weight, num_pred):
    """The plain Chamfer loss: GT side weighted by `gt_weight` and divided by Ng, prediction side unweighted and
    divided by Np.

    Returns:
        tuple: GT-side weights `[Ng]`, GT-side normaliser, prediction-side weights `[Np]` (None: all 1),
        prediction-side normaliser.
    """
    return gt_weight, gt_weight.shape[0], None, num_pred


def density_weighting(match, gt_weight, num_pred):
    """The density-normalised Chamfer loss ("DCD", docs/opusv2.md): n_j = #{GT points matched to a(j)},
    m_i = #{predictions matched to b(i)}; GT side weighted by gt_weight[j] / n_j and divided by sum_j 1 / n_j
    (not weighted by gt_weight), prediction side weighted by 1 / m_i and divided by sum_i 1 / m_i."""
    dtype = gt_weight.dtype
    with torch.no_grad():
        n = torch.bincount(match.pred_for_gt, minlength=num_pred)[match.pred_for_gt].to(dtype)         # [Ng]
        m = torch.bincount(match.gt_for_pred, minlength=gt_weight.shape[0])[match.gt_for_pred].to(dtype)  # [Np]
        return gt_weight / n, (1.0 / n).sum(), 1.0 / m, (1.0 / m).sum()


POINT_WEIGHTINGS = dict(chamfer=chamfer_weighting, density=density_weighting)


@CRITERIA.register_module()
class ChamferFocalCriterion(nn.Module):
    """Chamfer point loss + focal class loss on the matched points (OPS; docs/method.md, "Losses").

    Args:
        num_classes (int): K, logit channels.
        loss_cls (dict): mmdet FocalLoss config (sigmoid, gamma 2, alpha 0.25, weight 2).
        loss_pts (dict): mmdet SmoothL1Loss config (beta 0.2, weight 0.5; 0.25 in the DCD config).
        cls_weights (sequence[float] | None): K class weights, taken per logit channel (None: all 1).
        empty_dist_thr (float): metres; a visible GT point whose matched prediction is farther weighs
            `empty_weights`.
        empty_weights (float): 5.
        rare_classes (sequence[int]): a visible GT point of these classes weighs at least `rare_weights`.
        rare_weights (float): 10.
        dist_norm (float): metres; the focal weights' distance factor is 1 + |xy(matched GT)| / dist_norm
            (the head passes the xy diagonal of its range, sqrt(80^2 + 80^2)).
        point_weighting (str): 'chamfer' or 'density' (`POINT_WEIGHTINGS`).
    """

    def __init__(self, num_classes=OCC3D_NUSCENES.num_classes,
                 loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
                 loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5),
                 cls_weights=None, empty_dist_thr=0.2, empty_weights=5.0, rare_classes=(0, 2, 5, 8),
                 rare_weights=10.0, dist_norm=_DIAGONAL, point_weighting='chamfer'):
        super().__init__()
        self.num_classes = int(num_classes)
        if cls_weights is None:
            cls_weights = [1.0] * self.num_classes
        if len(cls_weights) != self.num_classes:
            raise ValueError(f'{type(self).__name__}: cls_weights needs one weight per class ({self.num_classes}), '
                             f'got {len(cls_weights)}')
        if point_weighting not in POINT_WEIGHTINGS:
            raise ValueError(f'{type(self).__name__}: point_weighting must be one of {sorted(POINT_WEIGHTINGS)}, '
                             f'got {point_weighting!r}')
        self.cls_weights = [float(w) for w in cls_weights]
        self.rare_classes = [int(c) for c in rare_classes]
        # made once and moved with the model; non-persistent, so the official state dicts stay as they are.
        # float64: casting to a loss's dtype rounds each weight once, as building it in that dtype would.
        self.register_buffer('cls_weight_table', torch.tensor(self.cls_weights, dtype=torch.float64),
                             persistent=False)
        self.register_buffer('rare_class_ids', torch.tensor(self.rare_classes, dtype=torch.long), persistent=False)
        self.empty_dist_thr, self.empty_weights = float(empty_dist_thr), float(empty_weights)
        self.rare_weights, self.dist_norm = float(rare_weights), float(dist_norm)
        self.point_weighting = point_weighting
        self.side_weights = POINT_WEIGHTINGS[point_weighting]
        self.loss_cls = build_loss(loss_cls)
        self.loss_pts = build_loss(loss_pts)

    def extra_repr(self):
        return f'num_classes={self.num_classes}, point_weighting={self.point_weighting!r}'

    # ------------------------------------------------------------------ weights
    def gt_point_weights(self, gt_xyz, pts_for_gt, gt_labels, gt_vis):
        """Weight of each ground-truth point in the GT -> prediction Chamfer term, `[Ng]`.

        1; `empty_weights` (5) for a camera-visible point whose matched prediction `pts_for_gt` is farther than
        `empty_dist_thr` (0.2 m); at least `rare_weights` (10) for a visible point of a rare class.
        """
        rare = self.rare_class_ids.to(gt_labels.device)
        gap = (gt_xyz - pts_for_gt).norm(dim=-1)
        # torch.where, not `weight[mask] = w`: a boolean index reads the mask's count on the host
        weight = torch.where(gt_vis & (gap > self.empty_dist_thr), self.empty_weights, 1.0).to(gap.dtype)
        is_rare = gt_vis & (gt_labels[:, None] == rare[None, :]).any(dim=1)
        return torch.where(is_rare, weight.clamp(min=self.rare_weights), weight)

    def point_class_weights(self, matched_gt):
        """Focal weights `[Np, K]` of the predictions: cls_weights[c] * (1 + |xy(matched GT)| / dist_norm).

        [QUIRK, docs/method.md "Losses"] the class weight is taken per logit channel, not per target class.
        """
        dist_factor = 1 + matched_gt[:, :2].norm(dim=-1) / self.dist_norm
        return self.cls_weight_table.to(matched_gt)[None, :] * dist_factor[:, None]

    # ------------------------------------------------------------------ one sample
    def sample_losses(self, points, logits, gt, match):
        """The terms of one sample.

        Args:
            points (Tensor): `[Np, 3]` predicted points, metres.
            logits (Tensor | None): `[Np, K]` (None: no class term, e.g. the initial points).
            gt (tuple): (points `[Ng, 3]` metres, labels int64 `[Ng]`, camera-visible bool `[Ng]`), Ng >= 1.
            match (PointMatch): a(j) `[Ng]`, b(i) `[Np]`.
        Returns:
            tuple(Tensor | None, Tensor): loss_cls (None without logits), loss_pts.
        """
        gt_xyz, gt_labels, gt_vis = gt
        gt_xyz = gt_xyz.to(points.dtype)
        matched_gt = gt_xyz[match.gt_for_pred]                                 # [Np, 3]
        pts_for_gt = points[match.pred_for_gt]                                 # [Ng, 3]
        num_pred = points.shape[0]
        with torch.no_grad():
            weight_gt = self.gt_point_weights(gt_xyz, pts_for_gt, gt_labels, gt_vis)
            w_g, d_g, w_p, d_p = self.side_weights(match, weight_gt, num_pred)
        loss_pts = (self.loss_pts(pts_for_gt, gt_xyz, weight=w_g[:, None].expand_as(gt_xyz), avg_factor=d_g)
                    + self.loss_pts(points, matched_gt, weight=None if w_p is None else w_p[:, None].expand_as(points),
                                    avg_factor=d_p))
        if logits is None:
            return None, loss_pts
        with torch.no_grad():
            weight_cls = self.point_class_weights(matched_gt)
        loss_cls = self.loss_cls(logits, gt_labels[match.gt_for_pred], weight=weight_cls, avg_factor=num_pred)
        return loss_cls, loss_pts

    # ------------------------------------------------------------------ a batch
    def forward(self, points, logits, gts, matches):
        """The terms of one layer for a batch.

        Args:
            points (Tensor): `[B, Np, 3]` predicted points, metres.
            logits (Tensor | None): `[B, Np, K]`, or None (no class term).
            gts (list): B ground-truth tuples (see `sample_losses`); a sample may have Ng = 0.
            matches (list): B `PointMatch`, None for a sample without ground truth.
        Returns:
            tuple(Tensor | None, Tensor): loss_cls, loss_pts: each the mean over the samples with ground truth of
            their own terms. Without any ground truth in the batch: exact zeros attached to the graph, so
            distributed training still sees every parameter (multiplied before summing: a sum of float-max values
            would overflow to inf).
        """
        if not (len(gts) == len(matches) == points.shape[0]):
            raise ValueError(f'{type(self).__name__}: {points.shape[0]} predicted samples, {len(gts)} ground-truth '
                             f'samples and {len(matches)} matches')
        per_cls, per_pts = [], []
        for b, (gt, match) in enumerate(zip(gts, matches)):
            if match is None:
                continue
            loss_cls, loss_pts = self.sample_losses(points[b], None if logits is None else logits[b], gt, match)
            per_cls.append(loss_cls)
            per_pts.append(loss_pts)
        if not per_pts:
            return None if logits is None else (logits * 0).sum(), (points * 0).sum()
        loss_cls = None if logits is None else torch.stack(per_cls).mean()
        return loss_cls, torch.stack(per_pts).mean()


@CRITERIA.register_module()
class VoxelChamferFocalCriterion(ChamferFocalCriterion):
    """OPUS-V2: the Chamfer point term of `ChamferFocalCriterion` and a focal class term on CPD voxels
    (docs/opusv2.md, "Losses").

    Args as `ChamferFocalCriterion`, plus:
        empty_label (int): the free label of `voxel_semantics` (17).
    """

    def __init__(self, *args, empty_label=OCC3D_NUSCENES.free_label, **kwargs):
        super().__init__(*args, **kwargs)
        self.empty_label = int(empty_label)

    def sample_voxel_class_loss(self, logits, coors, voxel_semantics):
        """Focal loss of one sample's voxels.

        Args:
            logits (Tensor): [U', K] logits.
            coors (Tensor): int64 [U', 4] (b, x, y, z).
            voxel_semantics (Tensor): [B, X, Y, Z] labels (``empty_label`` = free), after the BDA flips.
        Returns:
            Tensor: 2.0 * sum_v sum_c w_c FL(s_vc, [c == t_v]) / (N_occ + eps), t_v the label of voxel v
            (no camera mask; free -> all-negative row), w_c the class weight of the logit channel,
            N_occ the number of voxels with t_v != free ([QUIRK] kept: 0 divides by eps only).
        """
        target = voxel_semantics[coors[:, 0], coors[:, 1], coors[:, 2], coors[:, 3]].long()
        free = target == self.empty_label
        # mmdet's FocalLoss treats label == num_classes as background (an all-zero one-hot row)
        target = torch.where(free, torch.full_like(target, self.num_classes), target)
        weight = self.cls_weight_table.to(logits)[None, :].expand(logits.shape[0], -1).contiguous()
        num_occ = (~free).sum().to(logits.dtype)
        return self.loss_cls(logits, target, weight=weight, avg_factor=num_occ)

    def voxel_class_loss(self, logits, coors, voxel_semantics):
        """The class term of one layer: each sample's voxels normalised by that sample's N_occ
        (`sample_voxel_class_loss`), then the mean over the B samples of `voxel_semantics`.

        Every sample counts, also one without occupied voxels (its voxels are all-negative targets divided by
        eps, the [QUIRK] above); a sample without any CPD voxel contributes an exact zero. The voxels are grouped
        by their batch index (the CPD output is sorted by (b, x, y, z); one host read of the counts per layer).
        """
        batch = voxel_semantics.shape[0]
        if coors.shape[0] != logits.shape[0]:
            raise ValueError(f'{type(self).__name__}: {logits.shape[0]} voxel logits for {coors.shape[0]} voxels')
        # one host read: the voxel count of each sample and the number of places where the batch index decreases
        *counts, unsorted = torch.cat([torch.bincount(coors[:, 0], minlength=batch),
                                       (coors[1:, 0] < coors[:-1, 0]).sum().view(1)]).tolist()
        if len(counts) != batch:
            raise ValueError(f'{type(self).__name__}: voxels of sample {len(counts) - 1} for a batch of {batch}')
        if unsorted:
            raise ValueError(f'{type(self).__name__}: the voxels must be sorted by their batch index')
        per = [self.sample_voxel_class_loss(lg, co, voxel_semantics) if lg.shape[0] else (lg * 0).sum()
               for lg, co in zip(logits.split(counts), coors.split(counts))]
        return torch.stack(per).mean()
