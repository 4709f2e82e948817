"""The LiDAR branch of OPUS-Fusion (docs/method.md, "OPUS-Fusion: the LiDAR branch"): hard voxelisation, the mean
voxel encoder, the sparse 3D encoder, the SECOND BEV backbone and its FPN, and the branch as a detector holds them.
Importing this package registers `HardSimpleVFE`, `SparseEncoder`, `SECOND` and `SECONDFPN` in mmdet's model
registry."""
from .branch import LidarBranch, LidarBranchMixin
from .second import SECOND, SECONDFPN
from .sparse_encoder import SparseBasicBlock, SparseEncoder
from .voxel_encoder import HardSimpleVFE
from .voxelize import Voxelization, compact_voxels, hard_voxelize, voxel_grid_size

__all__ = ['HardSimpleVFE', 'LidarBranch', 'LidarBranchMixin', 'SECOND', 'SECONDFPN', 'SparseBasicBlock',
           'SparseEncoder', 'Voxelization', 'compact_voxels', 'hard_voxelize', 'voxel_grid_size']
