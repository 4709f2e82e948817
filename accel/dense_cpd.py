"""OPUS-V2's CPD module at test time on the dense grid: the same logits at the same voxels, with static shapes.

Symbols: B batch, N = B*Q*P points, (X, Y, Z) the grid, V = X*Y*Z cells per sample, C_v VFE channels (64),
K classes; U the voxels holding a point, U' those within one voxel of them (models/densifier.py).

The faithful CPD module (models/densifier.py) lists the U occupied voxels (`torch.unique`), grows them by one
voxel (U' sites) and convolves sparsely: U and U' depend on the points, so OPUS-V2's test step cannot be
captured in a CUDA graph and launches its several thousand kernels one by one (docs/performance.md, "Known
limits"). Here every tensor has a size fixed by the grid:

* the VFE layers pool by voxel into all B*V cells (`scatter_max` gives 0 to a cell without points, and a
  voxel's maximum is the same number wherever its row is);
* the voxel features fill a `[B, C_v, X, Y, Z]` grid, zero elsewhere, and the two sparse convolutions become
  `F.conv3d` with padding 1: a regular sparse conv is the dense convolution of the zero-filled grid read at
  the U' sites (models/sparse_conv.py), and the submanifold conv on U' is the dense convolution of the
  regular conv's ReLU output with every cell outside U' set to zero;
* U' is the max-pooled occupancy (`dilated_cells`, which the sparse conv's `dilate_sites` lists).

The sums of the convolutions run in another order (cuDNN's), in float32 unless the precision scope allows
TF32 (accel/precision.py; cuDNN's own default is TF32). The dense grids cost V cells per sample whatever the
number of points: 640,000 for Occ3D's and Waymo's grids, 10.5 M for nuScenes-Occupancy's, which keeps the
sparse module (`DENSE_CPD_MAX_CELLS`).
"""
import math

import torch
import torch.nn.functional as F

from models.sparse_conv import dilated_cells

from .precision import cudnn_tf32

__all__ = ['DENSE_CPD_MAX_CELLS', 'fits_dense_cpd', 'dense_cpd', 'dense_occ_grids']

# grids of at most this many cells per sample (Occ3D's and Waymo's 200 x 200 x 16 = 640,000) take the dense
# module: its [B, 64, X, Y, Z] float32 grids are 164 MB per sample there, and the whole graphed V2 test step is
# faster than the eager sparse one (docs/performance.md, "Current figures"); nuScenes-Occupancy's 10.5 M cells
# would need 16 times the memory and convolution work per sample
DENSE_CPD_MAX_CELLS = 1 << 20


def dense_cpd(densifier, pt_feats, points):
    """`Densifier.forward` (eval mode) on the dense grid.

    Args:
        densifier (models.densifier.Densifier): in eval mode (its batch norms use the running statistics).
        pt_feats (Tensor): `[B, Q, P, C_p]` point features.
        points (Tensor): `[B, Q, P, 3]` normalised points.
    Returns:
        tuple: logits `[B, K, X, Y, Z]` float32, valid at the U' sites; bool `[B, X, Y, Z]`, the U' sites.
    """
    if densifier.training:
        raise ValueError('dense_cpd: the CPD module is in training mode (its batch norms would use per-sample '
                         'statistics of the points); the dense form is for eval')
    B = points.shape[0]
    X, Y, Z = densifier._voxel_num
    x, uid = densifier.point_inputs(pt_feats, points)                              # [N, 6 + C_p], [N]
    cells = B * X * Y * Z
    for pfn in densifier.pfn_layers:
        x = pfn(x, uid, cells, B)                                                  # ends as [B*V, C_v]
    with torch.no_grad():
        active = dilated_cells(uid, B, (X, Y, Z))                                  # the regular conv's sites
    grid = x.view(B, X, Y, Z, -1).permute(0, 4, 1, 2, 3)                            # [B, C_v, X, Y, Z]
    conv, relu, subm = densifier.cls_branch
    # the sparse convs' weights are [C_out, kx, ky, kz, C_in] cross-correlation kernels (models/sparse_conv.py)
    with cudnn_tf32(torch.get_float32_matmul_precision() != 'highest'):
        y = F.conv3d(grid, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)
        y = relu(y) * active[:, None]
        logits = F.conv3d(y, subm.weight.permute(0, 4, 1, 2, 3), subm.bias, padding=1)
    return logits, active


def dense_occ_grids(logits, active, score_thr, empty_label):
    """`OPUSV2Head.get_occ_grids` on the dense CPD output: uint8 `[B, X, Y, Z]`, the argmax class where a U' site's
    max class probability (sigmoid) exceeds `score_thr` (strictly), `empty_label` elsewhere."""
    score, label = logits.float().sigmoid().max(dim=1)                             # [B, X, Y, Z] each
    keep = active & (score > float(score_thr))
    return torch.where(keep, label.to(torch.uint8), torch.full_like(label, empty_label, dtype=torch.uint8))


def fits_dense_cpd(voxel_num):
    """Whether a grid of `voxel_num` (X, Y, Z) cells takes the dense CPD module (`DENSE_CPD_MAX_CELLS`)."""
    return math.prod(int(v) for v in voxel_num) <= DENSE_CPD_MAX_CELLS
