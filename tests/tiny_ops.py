"""The down-sized OPS used by the end-to-end tests (train.py, val.py) on the tiny synthetic world.

ResNet-18, 2 frames, 12 queries, 2 decoder layers of 32 channels: a CPU step takes seconds. The text is
the head of a config file; `{occ_root!r}` is filled by the tests. TINY_PIPELINES follows it: the
train and test pipelines on the tiny world's 160x90 images (the test pipeline's resize and crop come
from final_dim alone, so `_ida`'s random ranges only affect training).
"""

TINY_MODEL_CONFIG = """
point_cloud_range = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
occ_root = {occ_root!r}
_norm = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='OPS', use_grid_mask=False, stop_prev_grad=0,
    data_aug=dict(img_color_aug=True, img_norm_cfg=_norm, img_pad_cfg=dict(size_divisor=32)),
    img_backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                      norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=True, style='pytorch'),
    img_neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=32, num_outs=4),
    pts_bbox_head=dict(
        type='OPSHead', num_classes=17, in_channels=32, num_query=12, pc_range=point_cloud_range,
        voxel_size=[0.4, 0.4, 0.4],
        transformer=dict(type='OPSTransformer', embed_dims=32, num_frames=2, num_points=2, num_layers=2,
                         num_levels=4, num_classes=17, num_refines=[1, 4], scales=[0.5],
                         pc_range=point_cloud_range, ffn_dims=64, mixing_out_points=8),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5)),
    train_cfg=dict(pts=dict(cls_weights=[1] * 17)),
    test_cfg=dict(pts=dict(score_thr=0.5, padding=True)))
"""

TINY_PIPELINES = '''
_ida = dict(resize_lim=(0.9, 1.1), final_dim=(64, 160), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), H=90, W=160,
            rand_flip=True)
_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp', 'ego2lidar')
_train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=1),
    dict(type='LoadOccFromFile', occ_root=occ_root),
    dict(type='RandomTransformImage', ida_aug_conf=_ida, training=True),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=_keys)]
_test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=1, test_mode=True),
    dict(type='RandomTransformImage', ida_aug_conf=_ida, training=False),
    dict(type='MultiScaleFlipAug3D', transforms=[
        dict(type='DefaultFormatBundle3D'),
        dict(type='Collect3D', keys=['img'], meta_keys=_keys)])]
'''

# val.py / timing.py on the synthetic world's val scene (the `tiny_val_setup` fixture of conftest.py fills it)
TINY_VAL_CONFIG = TINY_MODEL_CONFIG + TINY_PIPELINES + '''
data = dict(workers_per_gpu=0, val=dict(type='NuScenesOccDataset', data_root={root!r}, occ_root=occ_root,
                                        ann_file={ann_file!r}, pipeline=_test_pipeline, test_mode=True))
'''

# The training configs' dataset and optimizer (test_train.py, test_opusv2_cli.py, engine/dist_helpers.py):
# follows the model and pipelines; `write_tiny_config` fills the synthetic world's paths.
TINY_TRAIN_DATA_AND_ADAMW = '''
data = dict(
    workers_per_gpu=0,
    train=dict(type='NuScenesOccDataset', data_root={root!r}, occ_root=occ_root, ann_file={train_ann!r},
               pipeline=_train_pipeline, test_mode=False),
    val=dict(type='NuScenesOccDataset', data_root={root!r}, occ_root=occ_root, ann_file={val_ann!r},
             pipeline=_test_pipeline, test_mode=True))
optimizer = dict(type='AdamW', lr=2e-4, weight_decay=0.01,
                 paramwise_cfg=dict(custom_keys={{'img_backbone': dict(lr_mult=0.1),
                                                  'sampling_offset': dict(lr_mult=0.1)}}))
'''


def write_tiny_config(path, template, synthetic_infos):
    """`template` with the synthetic world's root, occ_root (its gts/), train and val infos, written at
    `path`; returns the path as str."""
    import os.path as osp
    root = synthetic_infos.root
    with open(path, 'w') as f:
        f.write(template.format(root=root, occ_root=osp.join(root, 'gts'), train_ann=synthetic_infos.train,
                                val_ann=synthetic_infos.val))
    return str(path)
