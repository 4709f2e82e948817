"""The OPUS-Fusion detector: OPS's image branch (models/ops.py), the LiDAR branch (models/lidar/) and the fusion
head (models/opus_fusion_head.py) (docs/method.md, "OPUS-Fusion: the LiDAR branch", "OPUS-Fusion: head and
decoder").

Batch format as OPUS-V2 (docs/opusv2.md) plus the points: `img` uint8 `[B, T*N, 3, H, W]`; `points` B float32
tensors `[N_b, 5]` (x, y, z metres in the key frame's occupancy frame, intensity, time lag s; the key sweep and up
to 9 earlier sweeps, loaders/pipelines/points.py); `img_metas` with `ego2img` (T*N `[4, 4]`), `ego2occ` and
`ego2points` (`[4, 4]`); `voxel_semantics` / `mask_camera` `[B, X, Y, Z]`. At test time every value comes wrapped
in a one-element list (one augmentation).

Test modes as OPS: online (one process: the key frame's N images, the history features from the per-frame cache)
or offline (all T*N images). The LiDAR map and the initial points are computed for every sample from its own
points in both modes (nothing of the LiDAR branch is cached).

Symbols (docs/method.md, "Symbols and frames"): B batch, T frames, N views, L FPN levels, C channels, G groups,
Q queries, (H_b, W_b) the BEV map (200 x 200).
"""
import torch
from mmdet.models import DETECTORS

from .gpu_image_decode import decode_and_transform
from .lidar import LidarBranchMixin
from .ops import OPS
from .opus_fusion_head import OPUSV1FusionHead
from .opus_fusion_transformer import OPUSV1FusionTransformer

__all__ = ['OPUSV1Fusion', 'OPUSV1FusionHead', 'OPUSV1FusionTransformer']


@DETECTORS.register_module()
class OPUSV1Fusion(LidarBranchMixin, OPS):
    """Camera + LiDAR occupancy as a sparse point set (config type 'OPUSV1Fusion', the authors' name).

    Args:
        img_backbone, img_neck, pts_bbox_head, data_aug, stop_prev_grad, use_grid_mask, online, train_cfg,
            test_cfg: as `OPS` (`pts_bbox_head`: an `OPUSV1FusionHead`).
        pts_voxel_layer, pts_voxel_encoder, pts_middle_encoder, pts_backbone, pts_neck, second_out_dim,
            pts_feat_dim: the LiDAR branch (`LidarBranchMixin.init_lidar_branch`; `pts_feat_dim` = the head's
            channels).

    State dict: OPS's keys (with the Fusion head's) and the branch's `pts_middle_encoder.`, `pts_backbone.`,
    `pts_neck.`, `final_conv.` (tests/data/checkpoint-keys/opusv1-fusion-{t,l}.txt).

    The device entry points (`online_step`, `offline_step`, `train_decoder`) take the points and are not
    graph-capturable: the initial points are selected from the key sweep's points (a data-dependent count) by a
    furthest-point loop, and the number of points per sample varies. They always run eagerly (an execution
    policy's CUDA graphs do not apply, accel/accelerate.py).
    """
    PROJECTION_KEY = 'ego2img'
    GRAPH_CAPTURABLE = frozenset()

    def __init__(self, img_backbone, img_neck, pts_bbox_head, pts_voxel_layer, pts_voxel_encoder, pts_middle_encoder,
                 pts_backbone, pts_neck, second_out_dim=512, pts_feat_dim=256, **kwargs):
        super().__init__(img_backbone, img_neck, pts_bbox_head, **kwargs)
        self.init_lidar_branch(pts_voxel_layer, pts_voxel_encoder, pts_middle_encoder, pts_backbone, pts_neck,
                               second_out_dim=second_out_dim, pts_feat_dim=pts_feat_dim)
        head_channels = self.pts_bbox_head.transformer.embed_dims
        if self.pts_feat_dim != head_channels:
            raise ValueError(f'OPUSV1Fusion: pts_feat_dim={self.pts_feat_dim} (the LiDAR map\'s channels) must equal '
                             f'the decoder\'s embed_dims={head_channels}')

    # ------------------------------------------------------------------ LiDAR inputs
    def lidar_inputs(self, points, amp_dtype=None):
        """The LiDAR part of a step: B samples' points -> (the map in its sampling layout `[B*G, C_g, H_b, W_b]`,
        the initial points `[B, Q, 1, 3]` normalised, or None for the learned ones).

        The sparse encoder, SECOND and its FPN run under CUDA autocast with `amp_dtype` (the original's
        `auto_fp16` on `extract_pts_feat` in fp16 training; None: float32), `final_conv` in the model's dtype.
        """
        if not isinstance(points, (list, tuple)) or not points:
            raise ValueError(f'OPUSV1Fusion: points must be a list of per-sample [N, 5] tensors, got '
                             f'{type(points).__name__}; collect them (Collect3D keys [..., "points"])')
        use_amp = amp_dtype is not None and points[0].is_cuda
        with torch.autocast(points[0].device.type, dtype=amp_dtype if use_amp else None, enabled=use_amp,
                            cache_enabled=False):
            neck = self.extract_pts_feat(points)[0]
        bev = self.final_conv(neck.to(self.img_mean.dtype))                 # [B, C, H_b, W_b]
        head = self.pts_bbox_head
        return head.transformer.bev_sampling_layout(bev), head.initial_points(points)

    def lidar_geometry(self, img_metas, device):
        """occ2points `[B, 4, 4]` float32 from the metas (host work, before the device entry points)."""
        return self.pts_bbox_head.transformer.points_geometry(img_metas, device)

    # ------------------------------------------------------------------ test steps
    def step_inputs(self, img_metas, device, points):
        """The test step's LiDAR inputs: the samples' points (B `[N_b, 5]` tensors) and occ2points `[B, 4, 4]`."""
        return points, self.lidar_geometry(img_metas, device)

    def decode_outputs(self, feats, occ2img, points, occ2points, *, image_h, image_w):
        """The head's outputs of a test step: the LiDAR map and initial points from the samples' points, then the
        decoder on both (`OPS.decode` packs the occupancy)."""
        bev, init_points = self.lidar_inputs(points)
        return self.pts_bbox_head.forward_geometry(feats, bev, init_points, occ2img, occ2points, image_h, image_w)

    # ------------------------------------------------------------------ train / test
    def forward_train(self, img, img_metas, points=None, voxel_semantics=None, mask_camera=None, img_jpeg=None,
                      **kwargs):
        """As `OPS.forward_train`, with `points` (B float32 `[N_b, 5]` tensors); without `mask_camera` every voxel
        counts as camera-visible (as the original)."""
        if voxel_semantics is None or points is None:
            raise ValueError('OPUSV1Fusion.forward_train needs points and voxel_semantics (collect them in the train '
                             'pipeline, as configs/_base_/opus-fusion_r50_704x256_8f.py does)')
        voxel_semantics, mask_camera, gts = self.training_ground_truth(voxel_semantics, mask_camera)
        if img is None and img_jpeg is not None:
            img = decode_and_transform(img_jpeg, device=self.img_mean.device)
        feats = self.extract_feat(img, img_metas)
        bev, init_points = self.lidar_inputs(points, self.train_amp_dtype())
        head = self.pts_bbox_head
        occ2img, (image_h, image_w) = head.transformer.image_geometry(img_metas, img.device)
        occ2points = self.lidar_geometry(img_metas, img.device)
        with torch.autocast(img.device.type, enabled=False):
            outs = self.train_decoder(*feats, bev, init_points, occ2points, occ2img, image_h=int(image_h),
                                      image_w=int(image_w))
            return head.loss(voxel_semantics, mask_camera, outs, gts=gts)

    def train_decoder(self, *tensors, image_h, image_w):
        """The training decoder: the L FPN levels `[B, T*N, C, H_l, W_l]`, the map `[B*G, C_g, H_b, W_b]`, the
        initial points `[B, Q, 1, 3]` (or None), occ2points `[B, 4, 4]` and occ2img `[B, T*N, 4, 4]` -> the head's
        outputs."""
        *feats, bev, init_points, occ2points, occ2img = tensors
        head = self.pts_bbox_head
        dtype = feats[0].dtype
        return head.forward_geometry(head.transformer.sampling_layout(feats), bev, init_points, occ2img.to(dtype),
                                     occ2points.to(dtype), image_h, image_w)

    def forward_test(self, img, img_metas, points=None, rescale=True, img_jpeg=None, **kwargs):
        """Test samples come wrapped in one-element lists (one augmentation): `img=[tensor]`, `img_metas=[list]`,
        `points=[list of B tensors]`."""
        if img is None and img_jpeg is not None:
            img = [decode_and_transform(img_jpeg[0], device=self.img_mean.device)]
        if not (isinstance(img, (list, tuple)) and isinstance(points, (list, tuple)) and len(img) == len(points) == 1
                and isinstance(img_metas, (list, tuple)) and len(img_metas) == 1):
            raise ValueError('OPUSV1Fusion test: expected one-element lists img=[tensor], img_metas=[list of dicts], '
                             'points=[list of tensors] (one augmentation; the test pipeline collects "points")')
        return self.simple_test(img[0], img_metas[0], points[0], rescale=rescale)

    def simple_test(self, img, img_metas, points, rescale=False):
        """`[B, V, 3, H, W]` images and B samples' points -> list of B `dict(sem_pred, occ_loc)` (numpy, CPU)."""
        if img.dim() != 5 or img.shape[2] != 3:
            raise ValueError(f'OPUSV1Fusion: img must be [B, views, 3, H, W] (BGR), got {tuple(img.shape)}')
        if len(points) != img.shape[0]:
            raise ValueError(f'OPUSV1Fusion: {len(points)} point clouds for {img.shape[0]} samples')
        return super().simple_test(img, img_metas, points, rescale=rescale)
