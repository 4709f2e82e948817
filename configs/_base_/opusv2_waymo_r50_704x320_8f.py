# Everything shared by OPUS-V2-T/S/M/L on Occ3D-Waymo: the OPS Occ3D-Waymo base (ops_waymo_r50_704x320_8f.py:
# data, cameras, classes, class weights, image sizes, history) with the V2 detector, head, decoder and GT flips of
# opusv2_r50_704x256_8f.py (docs/opusv2.md), restated here because a config has one line of bases. The variant
# files set num_query, num_points, num_refines and total_epochs; this file alone is OPUS-V2-T (100 epochs).
_base_ = ['./ops_waymo_r50_704x320_8f.py']

benchmark = 'occ3d-waymo'

num_layers = 5
# point features per predicted point, classified on voxels by the CPD modules
_num_pt_channels = 32

# OPUS-V2-T (overridden by the S/M/L files)
num_query = 600
num_points = 4
num_refines = [8, 16, 32, 64, 128]

model = dict(
    type='OPUSV2',
    pts_bbox_head=dict(
        type='OPUSV2Head',
        num_query=num_query,
        pfn_channels=[64, 64],
        transformer=dict(
            _delete_=True,  # V1's transformer dict has num_classes, which V2's decoder replaces by num_pt_channels
            type='OPUSV2Transformer',
            embed_dims={{_base_.embed_dims}},
            num_frames={{_base_.num_frames}},
            num_views={{_base_._num_views}},
            num_points=num_points,
            num_layers=num_layers,
            num_levels={{_base_.num_levels}},
            num_pt_channels=_num_pt_channels,
            num_refines=num_refines,
            scales=[0.5],
            pc_range={{_base_.point_cloud_range}})),
    # voxels with max class probability > 0.25; V1's padding and centroid filter are gone
    test_cfg=dict(pts=dict(_delete_=True, score_thr=0.25)),
)

# GT flips along x and y (p = 0.5 each) in the occupancy frame, recorded in ego2occ; images unchanged. The grid's
# range is symmetric in x and y for Occ3D-Waymo too, so a flip maps voxels onto voxels.
_bda_aug_conf = dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5)

# the V1 Waymo pipelines (sweeps_num 7, PadViewsToSize, the same ida_aug_conf) with V2's steps
_meta_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'ego2occ', 'ego2img', 'ego2lidar', 'img_timestamp')
train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7, train_interval=(3, 7)),
    # the arrays the training reads: RandomTransformOcc flips every grid it carries
    dict(type='LoadOcc3DFromFile', occ_root={{_base_.occ_root}}, benchmark=benchmark,
         arrays=['semantics', 'mask_camera']),
    dict(type='PadViewsToSize', size={{_base_._canvas}}, align='bottom'),
    dict(type='RandomTransformImage', ida_aug_conf={{_base_.ida_aug_conf}}, training=True),
    dict(type='RandomTransformOcc', bda_aug_conf=_bda_aug_conf),
    dict(type='ComposeEgo2Img'),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=_meta_keys),
]
test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7, test_mode=True, test_interval=5),
    dict(type='PadViewsToSize', size={{_base_._canvas}}, align='bottom'),
    dict(type='RandomTransformImage', ida_aug_conf={{_base_.ida_aug_conf}}, training=False),
    dict(type='ComposeEgo2Img'),
    # one test-time "augmentation": the sample is wrapped in one-element lists (mmdet3d's test format)
    dict(type='MultiScaleFlipAug3D',
         transforms=[dict(type='DefaultFormatBundle3D'), dict(type='Collect3D', keys=['img'], meta_keys=_meta_keys)]),
]
data = dict(
    train=dict(pipeline=train_pipeline),
    val=dict(pipeline=test_pipeline),
    test=dict(pipeline=test_pipeline),
)

total_epochs = 100
eval_config = dict(interval=total_epochs)
