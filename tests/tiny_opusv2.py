"""The down-sized OPUS-V2 used by the V2 tests (tests/models/test_opusv2_*.py): the tiny OPS of
tiny_ops.py with the V2 detector, head and decoder (2 layers, 12 queries, 8 point-feature channels,
VFE widths 16), and the V2 pipelines (GT flip, ego2img / ego2occ metas) on the tiny world's 160x90
images. `{occ_root!r}` is filled by the tests.
"""

import numpy as np
import torch
from mmcv import Config
from mmdet.models import build_detector

import models  # noqa: F401  (registers the detectors)
from camera_rig import pinhole_rig

TINY_OPUSV2_MODEL_CONFIG = """
point_cloud_range = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
occ_root = {occ_root!r}
_norm = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='OPUSV2', use_grid_mask=False, stop_prev_grad=0,
    data_aug=dict(img_color_aug=True, img_norm_cfg=_norm, img_pad_cfg=dict(size_divisor=32)),
    img_backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                      norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=True, style='pytorch'),
    img_neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=32, num_outs=4),
    pts_bbox_head=dict(
        type='OPUSV2Head', num_classes=17, in_channels=32, num_query=12, pc_range=point_cloud_range,
        voxel_size=[0.4, 0.4, 0.4], pfn_channels=[16, 16],
        transformer=dict(type='OPUSV2Transformer', embed_dims=32, num_frames=2, num_points=2, num_layers=2,
                         num_levels=4, num_pt_channels=8, num_refines=[4, 8], scales=[0.5],
                         pc_range=point_cloud_range, ffn_dims=64, mixing_out_points=8),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5)),
    train_cfg=dict(pts=dict(cls_weights=[1] * 17)),
    test_cfg=dict(pts=dict(score_thr=0.25)))
"""

TINY_OPUSV2_PIPELINES = '''
_ida = dict(resize_lim=(0.9, 1.1), final_dim=(64, 160), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), H=90, W=160,
            rand_flip=True)
_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'ego2occ', 'ego2img', 'ego2lidar', 'img_timestamp')
_train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=1),
    dict(type='LoadOcc3DFromFile', occ_root=occ_root),
    dict(type='RandomTransformImage', ida_aug_conf=_ida, training=True),
    dict(type='RandomTransformOcc', bda_aug_conf=dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5)),
    dict(type='ComposeEgo2Img'),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=_keys)]
_test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=1, test_mode=True),
    dict(type='RandomTransformImage', ida_aug_conf=_ida, training=False),
    dict(type='ComposeEgo2Img'),
    dict(type='MultiScaleFlipAug3D', transforms=[
        dict(type='DefaultFormatBundle3D'),
        dict(type='Collect3D', keys=['img'], meta_keys=_keys)])]
'''


def tiny_detector():
    """The tiny OPUS-V2 detector (TINY_OPUSV2_MODEL_CONFIG), initialised with seed 0."""
    torch.manual_seed(0)
    model = build_detector(Config.fromstring(TINY_OPUSV2_MODEL_CONFIG.format(occ_root='unused'), '.py').model)
    model.init_weights()
    return model


def tiny_batch(flip):
    """A training batch of one sample for `tiny_detector`: images `[1, T*N, 3, 64, 160]`, metas (ego2occ the
    x-flip when `flip`), voxel_semantics and mask_camera `[1, 200, 200, 16]`."""
    T, N, H, W = 2, 6, 64, 160
    rig = pinhole_rig([0, 1], [0, -55, 55, 180, 110, -110], H, W, W / 2, 0.5).astype(np.float32)
    ego2occ = np.diag([-1.0, 1.0, 1.0, 1.0]) if flip else np.eye(4)
    metas = [dict(filename=[f'f{t}_{n}.jpg' for t in range(T) for n in range(N)], ego2img=list(rig),
                  ego2occ=ego2occ, img_timestamp=[0.5 * t for t in range(T) for _ in range(N)])]
    img = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (1, T * N, 3, H, W))).to(torch.uint8)
    sem = torch.full((1, 200, 200, 16), 17, dtype=torch.uint8)
    sem[0, 105:110, 98:103, 2:4] = 4
    sem[0, 80:120, 80:120, 1] = 11
    mask = torch.zeros((1, 200, 200, 16), dtype=torch.bool)
    mask[0, 90:130] = True
    return img, metas, sem, mask
