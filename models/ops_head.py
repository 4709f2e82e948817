"""OPSHead: learnable initial points, set-to-set losses and occupancy post-processing.

docs/method.md: "Queries and initial points", "Losses", "Inference" (``get_occ``). The losses are a matcher
(models/matcher.py) and a criterion (models/criterion.py) built from the head's config keys; the head gathers
the ground truth and calls both for every decoder layer.

Symbols (docs/method.md, "Symbols and frames"): B batch, Q queries, P points per query (of one
layer), K classes (17; ``C`` in the code's shapes of logits), Ng / Np ground-truth / predicted
points of a sample, (X, Y, Z) the grid (200, 200, 16).

Coordinates: the decoder keeps points *normalised* to the range box, ``n = (p - range_min) /
scene_size``; every distance, loss and voxelisation here works in *metres* in the ego frame of the
key frame after decoding ``p = n * scene_size + range_min`` (core/geometry.py). Occupancy grids are
indexed ``[x, y, z]``.
"""
import math
import warnings

import torch
import torch.nn as nn
from mmcv.runner import BaseModule
from mmdet.models import HEADS
from mmdet.models.utils import build_transformer

from core.benchmarks import OCC3D_NUSCENES
from core.geometry import decode_points

from .criterion import build_criterion
from .matcher import build_matcher
from .occ_postprocess import close_and_label, dense_occupancy, pack_occupied, unpack_occupied

# Code defaults of the original (docs/method.md, "Losses"); the configs set only cls_weights (None = all 1).
TRAIN_DEFAULTS = dict(cls_weights=None, empty_dist_thr=0.2, empty_weights=5.0,
                      rare_classes=(0, 2, 5, 8), rare_weights=10.0)
TEST_DEFAULTS = dict(score_thr=0.5, padding=True, ctr_dist_thr=3.0)
MAX_POINTS_PER_VOXEL = 10


def voxel_centres(idx, voxel_num, pc_range):
    """Centres in metres of voxels `idx` `[M, 3]` (x, y, z indices) -> float32 `[M, 3]` ego frame.

    Computed per axis as the original does, ``(i + 0.5) / num * (max - min) + min`` in float32,
    not ``(i + 0.5) * voxel_size + min``: the two differ by 1-2 ulp for about a fifth of the
    coordinates, and every loss term depends on them (docs/method.md, "float32 details").

    Args:
        idx (Tensor): `[M, 3]` integer voxel indices.
        voxel_num (Tensor): `[3]` grid size (200, 200, 16).
        pc_range (Tensor): `[6]` float32 (x_min, y_min, z_min, x_max, y_max, z_max) metres.
    """
    scene_size = pc_range[3:] - pc_range[:3]
    return (idx.float() + 0.5) / voxel_num.to(idx.device) * scene_size + pc_range[:3]


def ordered_loss_dict(init_loss_pts, layer_losses):
    """The loss dict in the original's key order: `init_loss_pts`, the last layer's `loss_cls` and
    `loss_pts`, then `d0.*` .. `d{L-2}.*`. mmdet sums the entries in dict order, and a float32 sum
    depends on it (docs/method.md, "float32 details").

    Args:
        init_loss_pts (Tensor): the initial points' Chamfer term.
        layer_losses (list[tuple]): per decoder layer, (loss_cls, loss_pts).
    """
    losses = dict(init_loss_pts=init_loss_pts)
    losses['loss_cls'], losses['loss_pts'] = layer_losses[-1]
    for i, (loss_cls, loss_pts) in enumerate(layer_losses[:-1]):
        losses[f'd{i}.loss_cls'] = loss_cls
        losses[f'd{i}.loss_pts'] = loss_pts
    return losses


def _merge_cfg(name, cfg, defaults):
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        hint = (" (pass the 'pts' sub-dict of the model's train_cfg/test_cfg)"
                if 'pts' in unknown else '')
        raise ValueError(f'OPSHead: unknown {name} keys {unknown}{hint}; known keys are '
                       f'{sorted(defaults)}')
    out = dict(defaults)
    out.update(cfg)
    return out


@HEADS.register_module()
class OPSHead(BaseModule):
    """Occupancy head of OPS (OPUS): predicts a set of semantic points per scene.

    Args:
        num_classes (int): semantic classes (17); logits have this many channels.
        in_channels (int): query feature width (256).
        num_query (int): Q, number of queries (600/1200/2400/4800 for T/S/M/L).
        pc_range (sequence[6]): (x_min, y_min, z_min, x_max, y_max, z_max), metres.
        voxel_size (sequence[3]): metres (0.4).
        transformer (dict): config of the decoder, built with mmdet's ``build_transformer``;
            the head calls its ``image_geometry(img_metas, device)`` and ``sampling_layout(mlvl_feats)``
            (``forward``), then ``run(init_points, query_feat, feats, occ2img, image_h, image_w)``
            (``forward_geometry``), which returns ``(cls_scores, refine_pts)``, lists over layers of
            ``[B, Q, P_i, C]`` logits and ``[B, Q, P_i, 3]`` normalised points.
        loss_cls (dict): mmdet FocalLoss config (sigmoid, gamma 2, alpha 0.25, weight 2).
        loss_pts (dict): mmdet SmoothL1Loss config (beta 0.2, weight 0.5).
        empty_label (int): label of free voxels in ``voxel_semantics`` (17).
        train_cfg (dict): the ``pts`` part of the model train_cfg: ``cls_weights`` (C numbers,
            default all 1), ``empty_dist_thr`` (0.2 m), ``empty_weights`` (5), ``rare_classes``
            ((0, 2, 5, 8)), ``rare_weights`` (10).
        test_cfg (dict): the ``pts`` part of the model test_cfg: ``score_thr`` (0.5),
            ``padding`` (True), ``ctr_dist_thr`` (3.0 m).
        matcher (dict | None): config of the point matcher (models/matcher.py); None:
            ``dict(type='NearestPointMatcher')``.
        criterion (dict | None): entries that replace or extend the criterion's config, which the head builds
            from ``loss_cls``, ``loss_pts`` and ``train_cfg`` (``criterion_config``; type
            ``DEFAULT_CRITERION``), e.g. ``dict(point_weighting='density')``. None: that config as it is.

    The criterion and the matcher hold no parameters and no persistent buffers: the state dict is the official one.
    """
    DEFAULT_CRITERION = 'ChamferFocalCriterion'   # subclasses (OPUS-V2) swap the criterion type here
    POINT_WEIGHTING = 'chamfer'                    # the criterion's Chamfer weighting (OPUS-V2's DCD: 'density')
    # the 3x3x3 closing and labelling of the score grid (`dense_occupancy`); a kernel computing the same may
    # replace it (accel/kernels.py)
    closing = staticmethod(close_and_label)

    def __init__(self,
                 num_classes=OCC3D_NUSCENES.num_classes,
                 in_channels=256,
                 num_query=600,
                 pc_range=OCC3D_NUSCENES.point_cloud_range,
                 voxel_size=OCC3D_NUSCENES.voxel_size,
                 transformer=None,
                 loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                               loss_weight=2.0),
                 loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5),
                 empty_label=OCC3D_NUSCENES.free_label,
                 train_cfg=None,
                 test_cfg=None,
                 matcher=None,
                 criterion=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if transformer is None:
            raise ValueError("OPSHead: `transformer` config is required, e.g. "
                             "dict(type='OPSTransformer', ...)")
        if len(pc_range) != 6 or len(voxel_size) != 3:
            raise ValueError(f'OPSHead: pc_range needs 6 numbers and voxel_size 3, got '
                             f'{list(pc_range)} and {list(voxel_size)}')
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.num_query = int(num_query)
        self.empty_label = int(empty_label)
        self.train_cfg = _merge_cfg('train_cfg', train_cfg, TRAIN_DEFAULTS)
        self.test_cfg = _merge_cfg('test_cfg', test_cfg, TEST_DEFAULTS)

        cls_weights = self.train_cfg['cls_weights']
        if cls_weights is None:
            cls_weights = [1.0] * self.num_classes
        if len(cls_weights) != self.num_classes:
            raise ValueError(f'OPSHead: train_cfg.cls_weights needs one weight per class '
                             f'({self.num_classes}), got {len(cls_weights)}')
        self.cls_weights = [float(w) for w in cls_weights]
        self.rare_classes = [int(c) for c in self.train_cfg['rare_classes']]

        pc_range = torch.tensor([float(v) for v in pc_range], dtype=torch.float32)
        scene_size = pc_range[3:] - pc_range[:3]
        voxel_size = torch.tensor([float(v) for v in voxel_size], dtype=torch.float32)
        if (scene_size <= 0).any() or (voxel_size <= 0).any():
            raise ValueError(f'OPSHead: need pc_range max > min and positive voxel_size, got '
                             f'{pc_range.tolist()} and {voxel_size.tolist()}')
        self.register_buffer('pc_range', pc_range)
        self.register_buffer('scene_size', scene_size)
        self.register_buffer('voxel_size', voxel_size)
        self.register_buffer('voxel_num', torch.round(scene_size / voxel_size).long())
        # Plain-Python copies: used for shape checks and the voxeliser without device syncs.
        self._pc_range = [float(v) for v in pc_range.tolist()]
        self._voxel_size = [float(v) for v in voxel_size.tolist()]
        self._voxel_num = [int(v) for v in self.voxel_num.tolist()]

        self.init_points = nn.Embedding(self.num_query, 3)
        self.transformer = build_transformer(transformer)
        self.matcher = build_matcher(dict(type='NearestPointMatcher') if matcher is None else matcher)
        cfg = self.criterion_config(loss_cls, loss_pts)
        cfg.update(criterion or {})
        self.criterion = build_criterion(cfg)

    def criterion_config(self, loss_cls, loss_pts):
        """The criterion's config from the head's keys: ``loss_cls``, ``loss_pts``, the ``train_cfg`` weights,
        and the distance factor's scale, the xy diagonal of the range (sqrt(80^2 + 80^2) m: docs/method.md,
        "Losses")."""
        cfg = self.train_cfg
        return dict(type=self.DEFAULT_CRITERION, num_classes=self.num_classes, loss_cls=loss_cls, loss_pts=loss_pts,
                    cls_weights=self.cls_weights, empty_dist_thr=cfg['empty_dist_thr'],
                    empty_weights=cfg['empty_weights'], rare_classes=self.rare_classes,
                    rare_weights=cfg['rare_weights'],
                    dist_norm=math.hypot(float(self.scene_size[0]), float(self.scene_size[1])),
                    point_weighting=self.POINT_WEIGHTING)

    def init_weights(self):
        """Initial points U(0, 1) in normalised coordinates: uniform over the whole range box."""
        self.transformer.init_weights()
        nn.init.uniform_(self.init_points.weight, 0.0, 1.0)

    # ------------------------------------------------------------------ coordinates
    def decode_points(self, points):
        """Normalised [..., 3] -> metres [..., 3] (ego frame)."""
        return decode_points(points, self._pc_range)

    # ------------------------------------------------------------------ forward
    def forward(self, mlvl_feats, img_metas):
        """Run the decoder from the learned initial points.

        Args:
            mlvl_feats (list[Tensor]): FPN levels, ``[B, T*N, C, H_l, W_l]``.
            img_metas (list[dict]): B meta dicts (the camera geometry).

        Returns:
            dict: ``init_points`` [B, Q, 1, 3] normalised; ``all_cls_scores`` list over layers of
            [B, Q, P_i, C] logits; ``all_refine_pts`` list of [B, Q, P_i, 3] normalised points.
        """
        occ2img, (image_h, image_w) = self.transformer.image_geometry(img_metas, mlvl_feats[0].device)
        occ2img = occ2img.to(mlvl_feats[0].dtype)    # float32 (float64 when the model is, in the float64 tests)
        return self.forward_geometry(self.transformer.sampling_layout(mlvl_feats), occ2img, image_h, image_w)

    def forward_geometry(self, feats, occ2img, image_h, image_w):
        """`forward` with the camera geometry as device tensors: the decoder (`forward_decoder`), then what the
        head computes from its outputs (`after_decoder`)."""
        return self.after_decoder(self.forward_decoder(feats, occ2img, image_h, image_w))

    def after_decoder(self, outs):
        """The head's outputs from the decoder's: V1's decoder already gives per-point logits, so `outs` as they are
        (OPUS-V2's head runs its CPD modules here)."""
        return outs

    def forward_decoder(self, feats, occ2img, image_h, image_w):
        """The decoder with the camera geometry as device tensors (no host work, static shapes: graph-capturable).

        Args:
            feats (list[Tensor]): FPN levels in the sampling layout ``[B*T*G, N, H_l, W_l, C/G]``
                (``transformer.sampling_layout`` of ``[B, T*N, C, H_l, W_l]``).
            occ2img (Tensor): ``[B, T*N, 4, 4]`` ego (key frame) -> pixels of the augmented images.
            image_h, image_w (int): augmented image size in pixels.
        Returns:
            dict: ``init_points`` [B, Q, 1, 3] normalised; ``all_cls_scores`` list over layers of [B, Q, P_i, C]
            (V1: logits; OPUS-V2: point features); ``all_refine_pts`` list of [B, Q, P_i, 3] normalised points.
        """
        batch = occ2img.shape[0]
        init_points = self.init_points.weight[None, :, None, :].repeat(batch, 1, 1, 1)
        query_feat = init_points.new_zeros(batch, self.num_query, self.in_channels)
        cls_scores, refine_pts = self.transformer.run(init_points, query_feat, feats, occ2img, image_h, image_w)
        if len(cls_scores) != len(refine_pts) or len(cls_scores) == 0:
            raise RuntimeError(f'OPSHead: the transformer must return equally long non-empty '
                               f'lists of logits and points, got {len(cls_scores)} and '
                               f'{len(refine_pts)}')
        return dict(init_points=init_points, all_cls_scores=list(cls_scores),
                    all_refine_pts=list(refine_pts))

    # ------------------------------------------------------------------ losses
    def gt_points(self, voxel_semantics, mask_camera, device):
        """Per sample: centres of all non-free voxels (metres), labels, camera visibility.

        Reads the device 1 + B times (the batch's label check, each sample's voxel count): the detectors call it
        before queueing a training step's kernels (`OPS.training_ground_truth`), where a read waits for little.

        Returns:
            list of (points [Ng, 3] float32 metres, labels [Ng] long, visible [Ng] bool).
        """
        sem = torch.as_tensor(voxel_semantics).to(device)
        vis = torch.as_tensor(mask_camera).to(device)
        grid = tuple(self._voxel_num)
        if sem.dim() != 4 or tuple(sem.shape[1:]) != grid:
            raise ValueError(f'OPSHead.loss: voxel_semantics must be [B, {grid[0]}, {grid[1]}, '
                             f'{grid[2]}] (indexed x, y, z), got {tuple(sem.shape)}')
        if vis.shape != sem.shape:
            raise ValueError(f'OPSHead.loss: mask_camera shape {tuple(vis.shape)} differs from '
                             f'voxel_semantics shape {tuple(sem.shape)}')
        vis = vis.bool()
        occupied = sem != self.empty_label
        invalid = occupied & ((sem < 0) | (sem >= self.num_classes))
        # one host read for the whole batch (each read waits for the GPU's queue to drain)
        if bool(invalid.any()):
            b = int(invalid.flatten(1).any(1).nonzero()[0, 0])
            bad = sorted(set(sem[b][occupied[b]].unique().tolist()) - set(range(self.num_classes)))
            raise ValueError(f'OPSHead.loss: voxel_semantics of sample {b} holds labels {bad};'
                             f' occupied voxels need 0..{self.num_classes - 1} and free '
                             f'voxels {self.empty_label}')
        out = []
        for b in range(sem.shape[0]):
            idx = torch.nonzero(occupied[b], as_tuple=False)                       # [Ng, 3] x,y,z
            labels = sem[b][idx[:, 0], idx[:, 1], idx[:, 2]].long()
            points = voxel_centres(idx, self.voxel_num, self.pc_range)
            out.append((points, labels, vis[b][idx[:, 0], idx[:, 1], idx[:, 2]]))
        return out

    def match(self, points, gts):
        """The matcher's match of every sample (no gradient).

        Args:
            points (Tensor): `[B, Np, 3]` predicted points, metres.
            gts (list): output of ``gt_points``.
        Returns:
            list: B `PointMatch` (models/matcher.py), None for a sample without ground truth.
        """
        return [self.matcher(gt_xyz, points[b]) if gt_xyz.shape[0] else None
                for b, (gt_xyz, _, _) in enumerate(gts)]

    def loss_single(self, cls_scores, pred_points, gts):
        """Focal + Chamfer terms of one layer (docs/method.md, "Losses"): matcher, then criterion.

        Args:
            cls_scores (Tensor | None): [B, Q, P, C] logits; None for the initial points, whose
                classification term the original computes on zero logits and discards.
            pred_points (Tensor): [B, Q, P, 3] normalised points.
            gts (list): output of ``gt_points``.

        Returns:
            tuple(Tensor | None, Tensor): loss_cls (None when cls_scores is None), loss_pts; each the mean over
            the samples with ground truth of their own terms (models/criterion.py).
        """
        batch = pred_points.shape[0]
        if len(gts) != batch:
            raise ValueError(f'OPSHead.loss: {len(gts)} ground-truth samples for a prediction '
                             f'batch of {batch}')
        points = self.decode_points(pred_points).reshape(batch, -1, 3)
        logits = None
        if cls_scores is not None:
            logits = cls_scores.reshape(batch, -1, cls_scores.shape[-1])
            if logits.shape[1] != points.shape[1]:
                raise ValueError(f'OPSHead.loss: {logits.shape[1]} logit rows for '
                                 f'{points.shape[1]} points per sample')
        return self.criterion(points, logits, gts, self.match(points, gts))

    def loss(self, voxel_semantics, mask_camera, preds_dicts, gts=None):
        """All loss terms (docs/method.md, "Losses").

        Args:
            voxel_semantics (Tensor): uint8 [B, X, Y, Z] labels, ``empty_label`` = free.
            mask_camera (Tensor): bool [B, X, Y, Z] camera visibility.
            preds_dicts (dict): output of ``forward``.
            gts (list | None): ``gt_points(voxel_semantics, mask_camera, device)`` when the caller has it already;
                None: computed here.

        Returns:
            dict: ``init_loss_pts``, ``loss_cls``/``loss_pts`` (last layer) and
            ``d{i}.loss_cls``/``d{i}.loss_pts`` for the earlier layers; 13 entries for 6 layers.

        A sample without any occupied voxel (the original crashes in kNN) contributes no term:
        its predictions are left out of the sums and of the normalisers, with a warning. If no
        sample of the batch has one, every loss is an exact zero attached to the graph.
        """
        init_points = preds_dicts['init_points']
        all_cls = preds_dicts['all_cls_scores']
        all_pts = preds_dicts['all_refine_pts']
        if gts is None:
            gts = self.gt_points(voxel_semantics, mask_camera, init_points.device)
        empty = [b for b, g in enumerate(gts) if g[0].shape[0] == 0]
        if empty:
            warnings.warn(f'OPSHead.loss: samples {empty} of the batch have no occupied voxel; '
                          'they contribute no loss term')

        layer_losses = [self.loss_single(cls_scores, points, gts) for cls_scores, points in zip(all_cls, all_pts)]
        return ordered_loss_dict(self.loss_single(None, init_points, gts)[1], layer_losses)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def get_occ_grids(self, preds_dicts):
        """Dense occupancy from the last layer: uint8 `[B, X, Y, Z]` labels (free = `empty_label`), on the
        device, with static shapes and no host synchronisation (models/occ_postprocess.py)."""
        cls_scores = preds_dicts['all_cls_scores'][-1]               # [B, Q, P, C] logits
        points = self.decode_points(preds_dicts['all_refine_pts'][-1]).float()
        cfg = self.test_cfg
        return torch.stack([
            dense_occupancy(cls_scores[b].float().sigmoid(), points[b], self._pc_range, self._voxel_size,
                            self._voxel_num, float(cfg['score_thr']), float(cfg['ctr_dist_thr']),
                            bool(cfg['padding']), MAX_POINTS_PER_VOXEL, self.empty_label, closing=self.closing)
            for b in range(cls_scores.shape[0])])

    @torch.no_grad()
    def get_occ(self, preds_dicts, img_metas=None, rescale=False):
        """Sparse semantic occupancy from the last layer, any batch size.

        Returns:
            list (one per sample) of dict(sem_pred=np.int64 [M] class ids,
            occ_loc=np.int64 [M, 3] voxel indices (x, y, z), x-major order), on the CPU.
        """
        return self.unpack_occ(*pack_occupied(self.get_occ_grids(preds_dicts), self.empty_label))

    def unpack_occ(self, counts, codes):
        """`pack_occupied`'s device output -> `get_occ`'s result dicts on the CPU."""
        return unpack_occupied(counts, codes, self._voxel_num)
