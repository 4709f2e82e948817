"""A down-sized OPS detector and its inputs for the model tests (tests/models/test_ops.py,
test_ops_cuda_graph.py, tests/engine/test_train_step.py): ResNet-18, T = 2 frames of N = 6 views of
H x W = 64 x 160, 12 queries; a pinhole rig whose car moves 0.5 m per frame; a small occupied scene."""
import logging

import numpy as np
import torch
from mmdet.models import build_detector

import models  # noqa: F401  (registers OPS)
from camera_rig import pinhole_rig

logging.getLogger('mmcv').setLevel(logging.WARNING)   # init_weights logs one line per parameter

T, N, H, W = 2, 6, 64, 160
PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def tiny_cfg(**kw):
    embed = 32
    cfg = dict(
        type='OPS', use_grid_mask=False, stop_prev_grad=0,
        data_aug=dict(img_color_aug=True, img_norm_cfg=NORM, img_pad_cfg=dict(size_divisor=32)),
        img_backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                          norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=True, style='pytorch',
                          with_cp=True),
        img_neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=embed, num_outs=4),
        pts_bbox_head=dict(
            type='OPSHead', num_classes=17, in_channels=embed, num_query=12, pc_range=PC_RANGE,
            voxel_size=[0.4, 0.4, 0.4],
            transformer=dict(type='OPSTransformer', embed_dims=embed, num_frames=T, num_points=2, num_layers=3,
                             num_levels=4, num_classes=17, num_refines=[1, 2, 4], scales=[0.5], pc_range=PC_RANGE,
                             ffn_dims=64, mixing_out_points=8),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
            loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5)),
        train_cfg=dict(pts=dict(cls_weights=[10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1])),
        test_cfg=dict(pts=dict(score_thr=0.5, padding=True)))
    cfg.update(kw)
    return cfg


def build(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_detector(tiny_cfg(**kw))
    model.init_weights()
    return model


def no_checkpointing(model):
    """`model` without gradient checkpointing (same function, more memory), returned: as train.py trains
    the decoder by default (accel/accelerate.py)."""
    for module in model.modules():
        if hasattr(module, 'with_cp'):
            module.with_cp = False
    return model


def rig(frames):
    """lidar2img of six cameras around the car, one set per frame (the car moved 0.5 m per frame)."""
    return list(pinhole_rig(frames, [0, -55, 55, 180, 110, -110], H, W, W / 2, 0.5).astype(np.float32))


def metas_for(frames):
    """frames: frame ids of the T frames (key frame first)."""
    return dict(filename=[f'samples/CAM_{n}/frame{t}.jpg' for t in frames for n in range(N)],
                lidar2img=rig(frames), ego2lidar=np.eye(4, dtype=np.float32),
                img_timestamp=[0.5 * t for t in frames for _ in range(N)])


def images(frame, seed=0):
    return torch.from_numpy(np.random.RandomState(1000 * seed + frame).randint(0, 256, (N, 3, H, W))).to(torch.uint8)


def gt(B):
    sem = np.full((B, 200, 200, 16), 17, np.uint8)
    sem[:, 105:110, 98:103, 2:4] = 4          # a car ahead
    sem[:, 80:120, 80:120, 1] = 11            # road
    sem[:, 95:100, 110:112, 3:6] = 7          # a pedestrian
    mask = np.zeros((B, 200, 200, 16), bool)
    mask[:, 90:130] = True
    return torch.from_numpy(sem), torch.from_numpy(mask)
