"""The LiDAR branch of OPUS-Fusion (docs/method.md, "OPUS-Fusion: the LiDAR branch"): hard voxelisation, the mean
voxel encoder, the sparse 3D encoder, the SECOND BEV backbone and its FPN. Importing this package registers
`HardSimpleVFE`, `SparseEncoder`, `SECOND` and `SECONDFPN` in mmdet's model registry."""
from .voxelize import Voxelization, compact_voxels, hard_voxelize, voxel_grid_size

__all__ = ['Voxelization', 'compact_voxels', 'hard_voxelize', 'voxel_grid_size']
