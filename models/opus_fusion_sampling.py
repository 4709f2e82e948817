"""Sampling of the LiDAR bird's-eye-view map at 3D points (docs/method.md, "OPUS-Fusion: head and decoder").

OPUS-Fusion's decoder reads, for each query, its G*np sampling points twice: in the T x N camera views
(`models/ops_sampling.py`, as V1) and in the LiDAR branch's BEV map (here), one bilinear read per point.

Symbols (docs/method.md, "Symbols and frames"): B batch, Q queries, G channel groups, np sampling points per group
(`P` in the code), C_g = C / G channels per group, (H, W) the BEV map (rows y, columns x over the point-cloud range:
200 x 200 for Occ3D, models/lidar/branch.py).
"""
import torch
import torch.nn.functional as F

from core.geometry import encode_points

__all__ = ['bev_grid_coordinates', 'sample_bev_features']


def bev_grid_coordinates(points, pc_range):
    """grid_sample coordinates of metric points in the BEV map: `[..., 3]` metres -> `[..., 2]` (x, y) in [-1, 1].

    `(p - range_min) / (range_max - range_min) * 2 - 1` per axis, z dropped, in the points' dtype (the authors'
    `encode_points(...)[..., :2] * 2 - 1`). With `align_corners=True`, -1 and +1 are the centres of the first and
    the last column (row): column j is read at x = range_min + j * (range_max - range_min) / (W - 1).
    """
    return encode_points(points, pc_range)[..., :2] * 2 - 1


def sample_bev_features(sample_points, bev_feats, occ2points, pc_range):
    """Bilinear reads of the grouped BEV map at every sampling point.

    Args:
        sample_points (Tensor): `[B, Q, G, P, 3]` metres in the occupancy frame (the queries' frame).
        bev_feats (Tensor): `[B*G, C_g, H, W]` channel-first, batch index b*G + g = channels g*C_g.. of sample b's
            map (the decoder's `bev_sampling_layout`); rows y, columns x over `pc_range` of the points' frame.
        occ2points (Tensor): `[B, 4, 4]` occupancy frame -> the frame of the LiDAR points (= of the map): the
            identity for Occ3D, whose points the pipeline moved into the ego (= occupancy) frame.
        pc_range (sequence[6]): (x, y, z min, x, y, z max) metres, the map's extent.
    Returns:
        Tensor: `[B, Q, G, P, C_g]`; a point outside the map reads zeros (partly outside: the in-map corners only).

    The transform is a broadcast matmul of `[..., 4, 4]` matrices with `[..., 4, 1]` columns, as the original
    writes it (the float32 summation order, docs/method.md "float32 details"); the read is `F.grid_sample`,
    bilinear, zero padding, `align_corners=True` (the authors' `sampling_pts_feats`).
    """
    B, Q, G, P, _ = sample_points.shape
    if bev_feats.dim() != 4 or bev_feats.shape[0] != B * G:
        raise ValueError(f'sample_bev_features: bev_feats has shape {tuple(bev_feats.shape)}, expected '
                         f'[B*G={B * G}, C_g, H, W] (the decoder\'s bev_sampling_layout)')
    if tuple(occ2points.shape) != (B, 4, 4):
        raise ValueError(f'sample_bev_features: occ2points has shape {tuple(occ2points.shape)}, expected [{B}, 4, 4]')
    points = sample_points.permute(0, 2, 1, 3, 4).reshape(B * G, Q, P, 3)
    mats = occ2points[:, None, None, None].expand(B, G, Q, P, 4, 4).reshape(B * G, Q, P, 4, 4)
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)[..., None]         # [B*G, Q, P, 4, 1]
    points = torch.matmul(mats, homo).squeeze(-1)[..., :3]
    grid = bev_grid_coordinates(points, pc_range)                                            # [B*G, Q, P, 2]
    feat = F.grid_sample(bev_feats, grid, mode='bilinear', padding_mode='zeros', align_corners=True)  # [B*G, C_g, Q, P]
    return feat.reshape(B, G, -1, Q, P).permute(0, 3, 1, 4, 2)
