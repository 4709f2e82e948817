"""The post-processing as written before the static-shape version (hard voxelisation with data-
dependent shapes): the oracle that models/occ_postprocess.py must reproduce voxel for voxel."""
import numpy as np
import torch
import torch.nn.functional as F

from voxelization_oracle import hard_voxelize


def reference_occ(probs, points, pc_range, voxel_size, grid_size, score_thr, ctr_dist_thr=3.0, padding=True,
                  max_points=10):
    """probs [Q, P, C] in (0, 1), points [Q, P, 3] metres -> dict(sem_pred [M], occ_loc [M, 3])."""
    num_classes = probs.shape[-1]
    centre = points.mean(dim=1, keepdim=True)
    keep = (points - centre).norm(dim=-1) < ctr_dist_thr
    keep &= probs.max(dim=-1).values > score_thr
    feats = torch.cat([points[keep], probs[keep]], dim=-1)            # [n, 3 + C]
    voxels, coords, num = hard_voxelize(feats, voxel_size, pc_range, max_points,
                                        max_voxels=points.shape[0] * points.shape[1])
    coords = coords.flip(-1)                                          # (z,y,x) -> (x,y,z)
    scores = voxels[:, :, 3:].sum(dim=1) / num[:, None].to(voxels.dtype)   # [V, C] mean
    if padding and coords.shape[0] > 0:
        x_n, y_n, z_n = grid_size
        dense = scores.new_zeros(num_classes, x_n, y_n, z_n)
        dense[:, coords[:, 0], coords[:, 1], coords[:, 2]] = scores.t()
        dilated = F.max_pool3d(dense[None], 3, stride=1, padding=1)
        closed = -F.max_pool3d(-dilated, 3, stride=1, padding=1)[0]
        original = (dense > score_thr).any(dim=0)
        closed = torch.where(original[None], dense, closed)
        coords = torch.nonzero((closed > score_thr).any(dim=0), as_tuple=False)
        scores = closed[:, coords[:, 0], coords[:, 1], coords[:, 2]].t()
    labels = scores.argmax(dim=-1) if scores.shape[0] else scores.new_zeros(0).long()
    return dict(sem_pred=labels.cpu().numpy().astype(np.int64),
                occ_loc=coords.cpu().numpy().astype(np.int64).reshape(-1, 3))
