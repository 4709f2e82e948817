"""OPUSV1FusionHead: V1's head (models/ops_head.py) whose initial points come from the LiDAR points
(docs/method.md, "OPUS-Fusion: head and decoder").

`init_pos_lidar` (the authors' argument):
* 'curr' (every published config): the Q initial points are the furthest-point sample of the key sweep's points
  (the points whose last column, the time lag, is 0), with mmdet3d's `furthest_point_sample` semantics
  (`furthest_point_sample` below); no `init_points` embedding and no initial-points loss term;
* 'all': the same over all the stacked sweeps' points;
* None: V1's learned `init_points` embedding and its loss term.

Losses, matching and post-processing are V1's (the authors' Fusion head is a copy of their V1 head with the
initialisation added). The decoder is `OPUSV1FusionTransformer` (models/opus_fusion_transformer.py).

Symbols (docs/method.md, "Symbols and frames"): B batch, Q queries, P points per query, C channels, N_b points of
sample b (D values each: x, y, z metres in the occupancy frame, ..., time lag last).
"""
import torch
from mmdet.models import HEADS

from core.geometry import encode_points

from .ops_head import OPSHead

__all__ = ['OPUSV1FusionHead', 'furthest_point_sample', 'INIT_POS_LIDAR']

INIT_POS_LIDAR = (None, 'all', 'curr')


def furthest_point_sample(points, num_samples):
    """Indices of `num_samples` points chosen one by one, each the farthest from those chosen before.

    mmdet3d's `furthest_point_sample` (CUDA) for one sample, in plain PyTorch: index 0 first; every point keeps
    `dist` = its smallest squared distance to the chosen ones (starting at 1e10), updated with the last chosen
    point as `min(dist, dx*dx + dy*dy + dz*dz)` (float32, summed left to right); the next index is the first
    maximum of `dist`. Once every point is chosen all distances are 0 and index 0 repeats (as the kernel).

    The kernel breaks exact ties by thread (the lower thread of the tree reduction, whose own candidate is its
    first maximum) and nvcc may fuse the squares into FMAs (one rounding less): the two differ from this only
    when two distinct points' distances tie exactly, or within the last bit; coincident points (the padded copies
    of a sweep) tie but give the same coordinates whichever is taken.

    Args:
        points (Tensor): `[N, 3]` float, N >= 1.
        num_samples (int): how many indices.
    Returns:
        Tensor: int64 `[num_samples]` on the points' device.
    """
    if points.dim() != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise ValueError(f'furthest_point_sample needs points [N >= 1, 3], got {tuple(points.shape)}')
    chosen = torch.zeros(num_samples, dtype=torch.long, device=points.device)
    dist = torch.full(points.shape[:1], 1e10, dtype=points.dtype, device=points.device)
    last = chosen[:1]
    for j in range(1, num_samples):
        diff = points - points.index_select(0, last)
        dist = torch.minimum(dist, diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1] + diff[:, 2] * diff[:, 2])
        last = dist.argmax(0, keepdim=True)
        chosen[j:j + 1] = last
    return chosen


@HEADS.register_module()
class OPUSV1FusionHead(OPSHead):
    """Occupancy head of OPUS-Fusion (config type 'OPUSV1FusionHead', the authors' name).

    Args: `OPSHead`'s, and
        init_pos_lidar (str | None): 'curr', 'all' or None (module docstring).

    State dict: V1's head keys without `init_points.weight` when `init_pos_lidar` is set.
    """
    # picks the initial points from the LiDAR points (a fast subclass swaps in a one-kernel version, accel/)
    point_sampler = staticmethod(furthest_point_sample)

    def __init__(self, *args, init_pos_lidar=None, **kwargs):
        if init_pos_lidar not in INIT_POS_LIDAR:
            raise ValueError(f'OPUSV1FusionHead: init_pos_lidar must be one of {list(INIT_POS_LIDAR)}, got '
                             f'{init_pos_lidar!r}')
        super().__init__(*args, **kwargs)
        self.init_pos_lidar = init_pos_lidar
        if init_pos_lidar:
            del self.init_points         # the initial points come from the LiDAR points, nothing to learn

    def init_weights(self):
        if self.init_pos_lidar:
            self.transformer.init_weights()
        else:
            super().init_weights()

    # ------------------------------------------------------------------ initial points
    @torch.no_grad()
    def initial_points(self, points):
        """The initial points of `init_pos_lidar` 'curr' / 'all' from the LiDAR points (None: None, the embedding).

        Args:
            points (list[Tensor]): B tensors `[N_b, D]`: x, y, z metres in the occupancy frame first, the time lag
                (s, 0 for the key sweep) last.
        Returns:
            Tensor | None: `[B, Q, 1, 3]` normalised to `pc_range`.
        """
        if not self.init_pos_lidar:
            return None
        out = []
        for b, pts in enumerate(points):
            if self.init_pos_lidar == 'curr':
                pts = pts[pts[:, -1] == 0]
            if pts.shape[0] == 0:
                which = 'of the key sweep (time lag 0) ' if self.init_pos_lidar == 'curr' else ''
                raise ValueError(f'OPUSV1FusionHead: sample {b} has no LiDAR points {which}in the point-cloud range; '
                                 f'init_pos_lidar={self.init_pos_lidar!r} draws its {self.num_query} initial points '
                                 f'from them (check the sample\'s LiDAR file)')
            xyz = pts[:, :3].contiguous()
            out.append(xyz[self.point_sampler(xyz, self.num_query)])
        return encode_points(torch.stack(out)[:, :, None], self._pc_range)

    # ------------------------------------------------------------------ forward
    def forward(self, mlvl_feats, bev_feats, points, img_metas):
        """The authors' `forward(mlvl_feats, pts_feats, points, img_metas)`.

        Args:
            mlvl_feats (list[Tensor]): FPN levels `[B, T*N, C, H_l, W_l]`.
            bev_feats (Tensor): the LiDAR map `[B, C, H_b, W_b]` (`LidarBranchMixin.lidar_bev_features`).
            points (list[Tensor]): B tensors `[N_b, D]` (`initial_points`).
            img_metas (list[dict]): B meta dicts (`ego2img`, `ego2occ`, `ego2points`, `img_shape`).
        Returns:
            dict: as `OPSHead.forward`.
        """
        transformer = self.transformer
        device, dtype = mlvl_feats[0].device, mlvl_feats[0].dtype
        occ2img, (image_h, image_w) = transformer.image_geometry(img_metas, device)
        occ2points = transformer.points_geometry(img_metas, device)
        return self.forward_geometry(transformer.sampling_layout(mlvl_feats),
                                     transformer.bev_sampling_layout(bev_feats), self.initial_points(points),
                                     occ2img.to(dtype), occ2points.to(dtype), image_h, image_w)

    def forward_geometry(self, feats, bev_feats, init_points, occ2img, occ2points, image_h, image_w):
        """`forward` on device tensors.

        Args:
            feats (list[Tensor]): FPN levels in the sampling layout `[B*T*G, N, H_l, W_l, C_g]`.
            bev_feats (Tensor): the map in its sampling layout `[B*G, C_g, H_b, W_b]`.
            init_points (Tensor | None): `[B, Q, 1, 3]` normalised (`initial_points`); None: the learned embedding.
            occ2img (Tensor): `[B, T*N, 4, 4]`; occ2points (Tensor): `[B, 4, 4]`.
            image_h, image_w (int): augmented image size in pixels.
        """
        batch = occ2img.shape[0]
        if init_points is None:
            if self.init_pos_lidar:
                raise ValueError(f'OPUSV1FusionHead: init_pos_lidar={self.init_pos_lidar!r} needs the initial points '
                                 f'of initial_points(points)')
            init_points = self.init_points.weight[None, :, None, :].repeat(batch, 1, 1, 1)
        query_feat = init_points.new_zeros(batch, self.num_query, self.in_channels)
        cls_scores, refine_pts = self.transformer.run(init_points, query_feat, feats, bev_feats, occ2img, occ2points,
                                                      image_h, image_w)
        return dict(init_points=init_points, all_cls_scores=cls_scores, all_refine_pts=refine_pts)

    # ------------------------------------------------------------------ losses
    def loss_single(self, cls_scores, pred_points, gts):
        """V1's terms of one layer; for LiDAR initial points (`cls_scores` None, the initial points) no term."""
        if cls_scores is None and self.init_pos_lidar:
            return None, None
        return super().loss_single(cls_scores, pred_points, gts)

    def loss(self, voxel_semantics, mask_camera, preds_dicts, gts=None):
        """V1's loss dict (`OPSHead.loss`); without `init_loss_pts` when the initial points come from the LiDAR
        points (the authors skip it: nothing there is learned)."""
        losses = super().loss(voxel_semantics, mask_camera, preds_dicts, gts=gts)
        if self.init_pos_lidar:
            del losses['init_loss_pts']
        return losses
