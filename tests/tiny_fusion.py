"""A down-sized OPUS-Fusion for the model tests (tests/models/test_opus_fusion*.py): the tiny OPS of
tiny_detector.py (ResNet-18, T = 2 frames of N = 6 views of 64 x 160, 32 channels, 12 queries, 3 layers) with the
Fusion head and decoder, and a LiDAR branch of the authors' structure at small widths: 1.25 x 1.25 x 0.16 m voxels
over the Occ3D range (64 x 64 x 40), the sparse encoder's strides and paddings (8 x 8 map), SECOND + FPN, 32
channels out. Its inputs: tiny_detector's rig as `ego2img` (ego = LiDAR = occupancy frame), random points."""
import numpy as np
import torch
from mmdet.models import build_detector

import models  # noqa: F401  (registers the Fusion modules)
from tiny_detector import PC_RANGE, N, T, images, metas_for, rig, tiny_cfg  # noqa: F401  (re-exported)

EMBED = 32
TINY_LIDAR = dict(
    pts_voxel_layer=dict(max_num_points=4, voxel_size=[1.25, 1.25, 0.16], max_voxels=(2000, 2500),
                         point_cloud_range=PC_RANGE),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=5),
    pts_middle_encoder=dict(type='SparseEncoder', in_channels=5, sparse_shape=[41, 64, 64], output_channels=4,
                            base_channels=4, encoder_channels=((4, 4, 4), (4, 4, 4), (4, 4, 4), (4, 4)),
                            encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
                            block_type='basicblock'),
    pts_backbone=dict(type='SECOND', in_channels=8, out_channels=[8, 8], layer_nums=[1, 1], layer_strides=[1, 2]),
    pts_neck=dict(type='SECONDFPN', in_channels=[8, 8], out_channels=[8, 8], upsample_strides=[1, 2],
                  use_conv_for_no_stride=True),
    second_out_dim=16, pts_feat_dim=EMBED)
BEV_HW = (8, 8)


def fusion_cfg(init_pos_lidar='curr', **kw):
    cfg = tiny_cfg(type='OPUSV1Fusion', **TINY_LIDAR)
    head = cfg['pts_bbox_head']
    head.update(type='OPUSV1FusionHead', init_pos_lidar=init_pos_lidar)
    head['transformer'].update(type='OPUSV1FusionTransformer')
    del head['transformer']['mixing_out_points']
    cfg.update(kw)
    return cfg


def build(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_detector(fusion_cfg(**kw))
    model.init_weights()
    return model


def fusion_metas(frames):
    """The metas of one sample for the Fusion model: `ego2img` = tiny_detector's rig (ego = LiDAR frame there),
    `ego2occ` = `ego2points` = identity (Occ3D)."""
    meta = metas_for(frames)
    meta['ego2img'] = rig(frames)
    del meta['lidar2img']
    meta.update(ego2occ=np.eye(4), ego2points=np.eye(4))
    return meta


def random_points(seed, n=3000, current=0.5):
    """`[n, 5]` float32 points in the range: x, y, z, intensity, time lag (0 for the first `current` share, else
    0.05 s) -- a key sweep and an earlier one."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(PC_RANGE[:3]), np.asarray(PC_RANGE[3:])
    xyz = lo + (hi - lo) * rng.random((n, 3))
    lag = np.where(np.arange(n) < int(current * n), 0.0, 0.05)
    return torch.from_numpy(np.concatenate([xyz, rng.random((n, 1)) * 100, lag[:, None]], 1).astype(np.float32))
