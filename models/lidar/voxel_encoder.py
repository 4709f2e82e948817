"""The mean voxel encoder of OPUS-Fusion's LiDAR branch (mmdet3d's `HardSimpleVFE`; docs/method.md, "OPUS-Fusion:
the LiDAR branch").

Symbols: V voxels, P points per voxel (`max_num_points`), D values per point, F = `num_features` <= D.
"""
import torch.nn as nn
from mmdet.models.builder import MODELS

__all__ = ['HardSimpleVFE']


@MODELS.register_module()
class HardSimpleVFE(nn.Module):
    """Mean of the points of each voxel: `[V, P, D]` -> `[V, F]`, the first F values of each point.

    The sum runs over all P slots (the padded ones are zero) and is divided by the voxel's point count, as
    mmdet3d. Padded voxels of the static-shape voxelisation (count 0) give 0 instead of mmdet3d's 0 / 0.
    No parameters.

    Args:
        num_features (int): F (OPUS-Fusion: 5 = x, y, z, intensity, time lag).
    """

    def __init__(self, num_features=4):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features, num_points, coors=None):
        """
        Args:
            features (Tensor): `[V, P, D]` voxels of `models.lidar.voxelize.hard_voxelize`.
            num_points (Tensor): int `[V]` points stored per voxel.
            coors: the voxel coordinates (unused; mmdet3d's signature).
        Returns:
            Tensor: `[V, F]` in the features' dtype.
        """
        if features.dim() != 3 or features.shape[-1] < self.num_features or num_points.shape != features.shape[:1]:
            raise ValueError(f'HardSimpleVFE: expected voxels [V, P, D >= {self.num_features}] and counts [V], got '
                             f'{tuple(features.shape)} and {tuple(num_points.shape)}')
        total = features[:, :, :self.num_features].sum(dim=1)
        return (total / num_points.clamp(min=1).to(features.dtype).view(-1, 1)).contiguous()

    def extra_repr(self):
        return f'num_features={self.num_features}'
