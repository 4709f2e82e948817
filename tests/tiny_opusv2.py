"""The down-sized OPUS-V2 used by the V2 tests (tests/models/test_opusv2_*.py): the tiny OPS of
tiny_ops.py with the V2 detector, head and decoder (2 layers, 12 queries, 8 point-feature channels,
VFE widths 16), and the V2 pipelines (GT flip, ego2img / ego2occ metas) on the tiny world's 160x90
images. `{occ_root!r}` is filled by the tests.
"""

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
