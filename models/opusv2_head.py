"""OPUS-V2 heads: V1's `OPSHead` with classification on voxels (docs/opusv2.md).

`OPUSV2Head` keeps V1's learned initial points, ground-truth set, nearest-neighbour matching and
Chamfer point loss with its weights, and replaces the per-point classification:

* forward: the decoder (models/opusv2_transformer.py) returns 32-channel point features per layer;
  one CPD module per layer (models/densifier.py) turns them and the layer's points into logits on a
  sparse voxel set;
* loss: sigmoid focal loss on those voxels with the Occ3D label of the voxel itself as target (free
  = all-negative), per-logit-channel class weights, each sample normalised by the number of its predicted
  voxels that are occupied in GT and the batch the mean over its samples; 11 terms (the initial points'
  Chamfer term, then cls + pts for 5 layers). The arithmetic is the criterion `VoxelChamferFocalCriterion`
  (models/criterion.py), with V1's matcher;
* get_occ_grids / get_occ: the last layer's voxels whose max class probability exceeds `score_thr`
  (0.25), label = argmax. No point filtering, voxelisation or closing.

`OPUSV2DCDHead` replaces the Chamfer point loss by its density-normalised variant (the criterion's
`point_weighting='density'`).

Coordinates: points normalised to pc_range in the decoder, metres in the occupancy frame in the
losses; voxel indices (b, x, y, z) into the [B, 200, 200, 16] grid.

Symbol legend:
    B  batch size;  Q  queries;  P  points per query of a layer;  K  classes (17)
    U' voxels of a layer's CPD output;  Ng / Np  GT / predicted points of one sample
"""
import warnings

import torch
import torch.nn as nn
from mmdet.models import HEADS

from core.benchmarks import OCC3D_NUSCENES

from .densifier import Densifier
from .ops_head import OPSHead, _merge_cfg, ordered_loss_dict

__all__ = ['OPUSV2Head', 'OPUSV2DCDHead']

# the code default of the official head; every V2 config sets 0.25
TEST_DEFAULTS = dict(score_thr=0.0)


@HEADS.register_module()
class OPUSV2Head(OPSHead):
    """Occupancy head of OPUS-V2.

    Args as `OPSHead` (num_classes, in_channels, num_query, pc_range, voxel_size, transformer,
    loss_cls, loss_pts, empty_label, train_cfg, matcher, criterion), plus:
        pfn_channels (sequence[int]): VFE widths of the CPD modules ([64, 64]).
        test_cfg (dict): the `pts` part of the model test_cfg: `score_thr` (default 0.0; configs 0.25).

    The transformer (type 'OPUSV2Transformer') gives the number of layers (one CPD module each) and
    the point-feature width (`num_pt_channels`). The criterion is a `VoxelChamferFocalCriterion`
    (models/criterion.py).
    """
    DEFAULT_CRITERION = 'VoxelChamferFocalCriterion'

    def __init__(self,
                 num_classes=OCC3D_NUSCENES.num_classes,
                 in_channels=256,
                 num_query=600,
                 pc_range=OCC3D_NUSCENES.point_cloud_range,
                 voxel_size=OCC3D_NUSCENES.voxel_size,
                 transformer=None,
                 loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
                 loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5),
                 empty_label=OCC3D_NUSCENES.free_label,
                 pfn_channels=(64, 64),
                 train_cfg=None,
                 test_cfg=None,
                 matcher=None,
                 criterion=None,
                 init_cfg=None):
        # V1's test_cfg keys (padding, ctr_dist_thr) do not exist in V2: checked against V2's defaults below
        super().__init__(num_classes=num_classes, in_channels=in_channels, num_query=num_query, pc_range=pc_range,
                         voxel_size=voxel_size, transformer=transformer, loss_cls=loss_cls, loss_pts=loss_pts,
                         empty_label=empty_label, train_cfg=train_cfg, test_cfg=None, matcher=matcher,
                         criterion=criterion, init_cfg=init_cfg)
        self.test_cfg = _merge_cfg('test_cfg', test_cfg, TEST_DEFAULTS)
        num_pt_channels = getattr(self.transformer, 'num_pt_channels', None)
        num_layers = getattr(self.transformer, 'num_layers', None)
        if num_pt_channels is None or num_layers is None:
            raise ValueError(f'{type(self).__name__}: the transformer must say its num_pt_channels and num_layers '
                             f"(type='OPUSV2Transformer'), got {type(self.transformer).__name__}")
        self.densifiers = nn.ModuleList([
            Densifier(num_pt_channels, pfn_channels, self.num_classes, self.pc_range, self.voxel_num)
            for _ in range(num_layers)])

    def criterion_config(self, loss_cls, loss_pts):
        """V1's criterion config and the free label of the voxel targets."""
        return dict(super().criterion_config(loss_cls, loss_pts), empty_label=self.empty_label)

    def init_weights(self):
        """V1's (decoder inits, initial points U(0, 1)), then each CPD module's prior bias."""
        super().init_weights()
        for densifier in self.densifiers:
            densifier.init_weights()

    # ------------------------------------------------------------------ forward
    def after_decoder(self, outs):
        """The CPD module of every layer that produced point features (`classify_voxels`), on a copy of the decoder's
        outputs `outs` (`forward_decoder`'s; a training step's come from a CUDA graph). Not CUDA-graph capturable:
        the sparse voxel sets have data-dependent sizes.

        Returns:
            dict: ``init_points`` [B, Q, 1, 3] normalised; ``all_refine_pts`` list of [B, Q, P_i, 3]
            normalised; ``all_cls_scores`` list of [U'_i, K] voxel logits or None (eval mode, layers
            before the last); ``all_voxel_coors`` list of int64 [U'_i, 4] (b, x, y, z) or None.
        """
        return self.classify_voxels(dict(outs))

    def layer_point_features(self, outs):
        """Pops the decoder's point features from `outs`: one `[B, Q, P_i, C_p]` or None per layer (CPD module)."""
        pt_feats = outs.pop('all_cls_scores')
        if len(pt_feats) != len(self.densifiers):
            raise RuntimeError(f'{type(self).__name__}: {len(pt_feats)} decoder layers for {len(self.densifiers)} '
                               f'CPD modules')
        return pt_feats

    def classify_voxels(self, outs):
        """The decoder's outputs `outs` with each layer's point features replaced by its CPD module's voxel logits
        and their voxels (`forward_geometry`'s ``all_cls_scores`` and ``all_voxel_coors``)."""
        logits, coors = [], []
        for densifier, feats, points in zip(self.densifiers, self.layer_point_features(outs), outs['all_refine_pts']):
            if feats is None:
                logits.append(None)
                coors.append(None)
                continue
            layer_logits, layer_coors = densifier(feats, points)
            logits.append(layer_logits)
            coors.append(layer_coors)
        outs.update(all_cls_scores=logits, all_voxel_coors=coors)
        return outs

    # ------------------------------------------------------------------ losses
    def point_loss(self, pred_points, gts):
        """Chamfer point loss of one layer (V1's matcher and the criterion's point term, weighted as the
        criterion's `point_weighting` says): [B, Q, P, 3] normalised points -> scalar, the mean over the samples
        with ground truth of their own terms."""
        return self.loss_single(None, pred_points, gts)[1]

    def voxel_cls_loss(self, logits, coors, voxel_semantics):
        """Focal loss of one layer's voxels (`VoxelChamferFocalCriterion.voxel_class_loss`).

        Args:
            logits (Tensor): [U', K] logits.
            coors (Tensor): int64 [U', 4] (b, x, y, z), sorted by b (as the CPD module outputs them).
            voxel_semantics (Tensor): [B, X, Y, Z] labels (``empty_label`` = free), after the BDA flips.
        Returns:
            Tensor: the mean over the B samples of 2.0 * sum_v sum_c w_c FL(s_vc, [c == t_v]) / (N_occ + eps) over
            the sample's voxels, t_v the label of voxel v (no camera mask; free -> all-negative row), w_c the class
            weight of the logit channel, N_occ the number of the sample's voxels with t_v != free ([QUIRK] kept: 0
            divides by eps only).
        """
        return self.criterion.voxel_class_loss(logits, coors, voxel_semantics)

    def loss(self, voxel_semantics, mask_camera, preds_dicts, gts=None):
        """All loss terms (11 for 5 layers).

        Args:
            voxel_semantics (Tensor): uint8 [B, X, Y, Z] labels, ``empty_label`` = free.
            mask_camera (Tensor): bool [B, X, Y, Z] camera visibility (point-loss weights only).
            preds_dicts (dict): output of ``forward`` in training mode (CPD outputs of every layer).
            gts (list | None): as `OPSHead.loss`.
        Returns:
            dict: ``init_loss_pts``, ``loss_cls``/``loss_pts`` (last layer), ``d{i}.loss_cls``/``d{i}.loss_pts``
            (earlier layers), in this order (the runner sums them in it).
        """
        init_points = preds_dicts['init_points']
        all_logits, all_coors = preds_dicts['all_cls_scores'], preds_dicts['all_voxel_coors']
        all_pts = preds_dicts['all_refine_pts']
        if any(x is None for x in all_logits):
            raise ValueError(f'{type(self).__name__}.loss needs the CPD output of every layer: run the head in '
                             f'training mode (eval mode computes only the last layer)')
        device = init_points.device
        if gts is None:
            gts = self.gt_points(voxel_semantics, mask_camera, device)
        empty = [b for b, g in enumerate(gts) if g[0].shape[0] == 0]
        if empty:
            warnings.warn(f'{type(self).__name__}.loss: samples {empty} of the batch have no occupied voxel; '
                          'they contribute no point-loss term')
        sem = torch.as_tensor(voxel_semantics).to(device)

        layer_losses = [(self.voxel_cls_loss(logits, coors, sem), self.point_loss(points, gts))
                        for logits, coors, points in zip(all_logits, all_coors, all_pts)]
        return ordered_loss_dict(self.point_loss(init_points, gts), layer_losses)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def get_occ_grids(self, preds_dicts):
        """Dense occupancy from the last layer's voxels: uint8 `[B, X, Y, Z]` labels, `empty_label` elsewhere.

        A voxel is kept when its max class probability (sigmoid) exceeds `score_thr` (strictly); its label
        is the argmax. `OPSHead.get_occ` turns the grids into the sparse result dicts. The batch size comes
        from the initial points (the original reads it from the last voxel row, right only for batch 1).
        """
        logits = preds_dicts['all_cls_scores'][-1]
        coors = preds_dicts['all_voxel_coors'][-1]
        if logits is None:
            raise ValueError(f'{type(self).__name__}.get_occ_grids: the last layer has no CPD output')
        score, label = logits.float().sigmoid().max(dim=-1)
        keep = score > float(self.test_cfg['score_thr'])
        X, Y, Z = self._voxel_num
        grids = torch.full((preds_dicts['init_points'].shape[0], X, Y, Z), self.empty_label, dtype=torch.uint8,
                           device=logits.device)
        c = coors[keep]
        grids[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = label[keep].to(torch.uint8)
        return grids


@HEADS.register_module()
class OPUSV2DCDHead(OPUSV2Head):
    """OPUS-V2 with the density-normalised Chamfer loss ("DCD"); configs use loss_pts weight 0.25.

    Per sample, with a(j) the nearest prediction of GT point j and b(i) the nearest GT point of
    prediction i: n_j = #{GT points whose nearest prediction is a(j)}, m_i = #{predictions whose
    nearest GT point is b(i)} (no gradient). GT side: weight w_gt[j] / n_j (w_gt as V1), normaliser
    D_g = sum_j 1 / n_j; prediction side: weight 1 / m_i, normaliser D_p = sum_i 1 / m_i; each side divided by
    (D + float32 eps) inside mmdet's SmoothL1Loss; the batch's term is the mean over its samples with ground
    truth. It is the criterion's `point_weighting='density'` (models/criterion.py, `density_weighting`).
    """
    POINT_WEIGHTING = 'density'
