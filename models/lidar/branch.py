"""The LiDAR branch of OPUS-Fusion as its detector holds it (docs/method.md, "OPUS-Fusion: the LiDAR branch").

The authors' detector (`OPUSV1Fusion`, an mmdet3d `MVXTwoStageDetector`) owns the branch's modules as its own
attributes, so their state-dict keys start with `pts_voxel_encoder.`, `pts_middle_encoder.`, `pts_backbone.`,
`pts_neck.` and `final_conv.` (tests/data/checkpoint-keys/opusv1-fusion-lidar-*.txt). `LidarBranchMixin` gives a
detector those attributes (`init_lidar_branch`) and the forward pass; `LidarBranch` is the branch on its own.

Forward: points of B samples, each `[N_b, 5]` (x, y, z in metres in the key frame's ego frame, intensity, time
lag in s; loaders/pipelines/points.py) -> voxels (`models/lidar/voxelize.py`) -> mean voxel features `[V, 5]` ->
sparse encoder -> `[B, 256, 200, 200]` -> SECOND -> SECONDFPN -> `[B, 512, 200, 200]` -> `final_conv` (3x3 conv
with bias, ReLU) -> `[B, 256, 200, 200]`: rows y, columns x of the BEV grid over the point-cloud range (0.4 m
cells), the map the fusion head samples.
"""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.builder import MODELS

from .voxelize import Voxelization, compact_voxels

__all__ = ['LidarBranchMixin', 'LidarBranch']


class LidarBranchMixin:
    """The LiDAR branch's modules and forward pass for a detector (an `nn.Module`) that mixes it in."""

    def init_lidar_branch(self, pts_voxel_layer, pts_voxel_encoder, pts_middle_encoder, pts_backbone, pts_neck,
                          second_out_dim=512, pts_feat_dim=256):
        """Build the branch from the config dicts of the authors' detector (the same keys and values).

        Args:
            pts_voxel_layer (dict): `Voxelization` arguments (no `type`).
            pts_voxel_encoder, pts_middle_encoder, pts_backbone, pts_neck (dict): mmdet registry configs
                (`HardSimpleVFE`, `SparseEncoder`, `SECOND`, `SECONDFPN`).
            second_out_dim (int), pts_feat_dim (int): channels into / out of `final_conv` (512, 256: the authors'
                detector defaults, which their configs keep).
        """
        self.pts_voxel_layer = Voxelization(**pts_voxel_layer)
        self.pts_voxel_encoder = MODELS.build(pts_voxel_encoder)
        self.pts_middle_encoder = MODELS.build(pts_middle_encoder)
        self.pts_backbone = MODELS.build(pts_backbone)
        self.pts_neck = MODELS.build(pts_neck)
        self.final_conv = ConvModule(second_out_dim, pts_feat_dim, kernel_size=3, stride=1, padding=1, bias=True,
                                     conv_cfg=dict(type='Conv2d'))
        self.pts_feat_dim = int(pts_feat_dim)

    @torch.no_grad()
    def voxelize(self, points):
        """Voxelise each sample and stack the voxels (mmdet3d's `MVXTwoStageDetector.voxelize`).

        Args:
            points (list[Tensor]): B tensors `[N_b, D]` float32.
        Returns:
            tuple: voxels `[V, P, D]`, num_points int32 `[V]`, coords int32 `[V, 4]` (b, z, y, x), samples in order.
        """
        voxels, num_points, coords = [], [], []
        for b, pts in enumerate(points):
            if pts.dim() != 2 or pts.shape[1] < self.pts_voxel_encoder.num_features:
                raise ValueError(f'LiDAR branch: points of sample {b} must be [N, >= '
                                 f'{self.pts_voxel_encoder.num_features}] (x, y, z, intensity, time lag), got '
                                 f'{tuple(pts.shape)}')
            v, c, n = compact_voxels(*self.pts_voxel_layer(pts.float()))
            voxels.append(v)
            num_points.append(n)
            coords.append(torch.cat([c.new_full((c.shape[0], 1), b), c], dim=1))
        return torch.cat(voxels), torch.cat(num_points), torch.cat(coords)

    def extract_pts_feat(self, points):
        """Points of B samples -> the neck's maps, `[[B, 512, 200, 200]]` (the authors' `extract_pts_feat`).

        The batch size is the number of samples (the authors' code reads it from the last voxel's sample index,
        which is one short when the last sample has no voxel).
        """
        voxels, num_points, coords = self.voxelize(points)
        features = self.pts_voxel_encoder(voxels, num_points, coords)
        x = self.pts_middle_encoder(features, coords, len(points))
        return self.pts_neck(self.pts_backbone(x))

    def lidar_bev_features(self, points):
        """Points of B samples -> the BEV map the fusion head samples: `[B, 256, 200, 200]` (`final_conv` of the
        neck's first map; channel-first, rows y, columns x)."""
        return self.final_conv(self.extract_pts_feat(points)[0])


class LidarBranch(LidarBranchMixin, nn.Module):
    """The LiDAR branch alone, with the detector's key names. Arguments: those of `init_lidar_branch`."""

    def __init__(self, **cfg):
        super().__init__()
        self.init_lidar_branch(**cfg)

    def forward(self, points):
        return self.lidar_bev_features(points)
