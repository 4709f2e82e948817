# Everything shared by OPUS-Fusion-T/S/M/L (docs/method.md, "OPUS-Fusion: the LiDAR branch", "OPUS-Fusion: head and
# decoder"): the V1 base (ops_r50_704x256_8f.py: geometry, image backbone, FPN, losses, optimiser, schedule) with
# the authors' LiDAR branch (the last 10 LiDAR sweeps -> a 200 x 200 BEV map of 256 channels), the fusion head
# (initial points by furthest-point sampling of the key sweep) and decoder (layers that also read the map), and
# the pipelines that load the points. The variant files set num_query, num_points and num_refines; this file alone
# is OPUS-Fusion-T (100 epochs, the authors' only schedule). Values computed in the V1 base are restated here.
_base_ = ['./ops_r50_704x256_8f.py']

# the benchmark protocol (core/benchmarks/); the V1 base's occ_names, point_cloud_range and voxel_size are its values
benchmark = 'occ3d-nuscenes'

# OPUS-Fusion-T (overridden by the S/M/L files)
num_query = 600
num_points = 4
num_refines = [1, 4, 16, 32, 64, 128]

# The LiDAR branch (the same in T/S/M/L): 0.05 x 0.05 x 0.16 m voxels over the point-cloud range (1600 x 1600 x 40),
# at most 10 points per voxel and 90,000 (training) / 120,000 (test) voxels; helper variables start with '_'
_pc_voxel_size = [0.05, 0.05, 0.16]
_point_cloud_range = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]

model = dict(
    type='OPUSV1Fusion',
    pts_voxel_layer=dict(max_num_points=10, voxel_size=_pc_voxel_size, deterministic=False,
                         max_voxels=(90000, 120000), point_cloud_range=_point_cloud_range),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=5),
    pts_middle_encoder=dict(
        type='SparseEncoder',
        in_channels=5,
        sparse_shape=[41, 1600, 1600],
        output_channels=128,
        order=('conv', 'norm', 'act'),
        encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
        block_type='basicblock'),
    pts_backbone=dict(
        type='SECOND',
        in_channels=256,
        out_channels=[128, 256],
        layer_nums=[5, 5],
        layer_strides=[1, 2],
        norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01),
        conv_cfg=dict(type='Conv2d', bias=False)),
    pts_neck=dict(
        type='SECONDFPN',
        in_channels=[128, 256],
        out_channels=[256, 256],
        upsample_strides=[1, 2],
        norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01),
        upsample_cfg=dict(type='deconv', bias=False),
        use_conv_for_no_stride=True),
    pts_bbox_head=dict(
        type='OPUSV1FusionHead',
        num_query=num_query,
        # the Q initial points: furthest-point sample of the key sweep's points (time lag 0)
        init_pos_lidar='curr',
        transformer=dict(type='OPUSV1FusionTransformer', num_points=num_points, num_refines=num_refines)),
)

# sweeps_num = num_frames - 1 = 7 below (a base variable cannot take part in arithmetic here). The points: the key
# sweep and the 9 sweeps before it (loaders/pipelines/points.py), moved into the occupancy (= ego) frame.
_meta_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'ego2occ', 'ego2img', 'ego2points', 'img_timestamp')
_load_points = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=9, use_dim=[0, 1, 2, 3, 4], pad_empty_sweeps=True,
         remove_close=True),
    dict(type='LiDARToOccSpace'),
]
train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7),
    *_load_points,
    dict(type='LoadOccFromFile', occ_root={{_base_.occ_root}}, benchmark=benchmark),
    dict(type='RandomTransformImage', ida_aug_conf={{_base_.ida_aug_conf}}, training=True),
    dict(type='PointsRangeFilter', point_cloud_range=_point_cloud_range),
    dict(type='ComposeEgo2Img'),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'points', 'voxel_semantics', 'mask_camera'], meta_keys=_meta_keys),
]
test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7, test_mode=True),
    *_load_points,
    dict(type='RandomTransformImage', ida_aug_conf={{_base_.ida_aug_conf}}, training=False),
    dict(type='PointsRangeFilter', point_cloud_range=_point_cloud_range),
    dict(type='ComposeEgo2Img'),
    # one test-time "augmentation": the sample is wrapped in one-element lists (mmdet3d's test format)
    dict(type='MultiScaleFlipAug3D',
         transforms=[
             dict(type='DefaultFormatBundle3D'),
                      dict(type='Collect3D', keys=['img', 'points'], meta_keys=_meta_keys)]),
]
# the datasets also hand the pipeline each key frame's LiDAR file and sweeps
data = dict(
    train=dict(use_lidar=True, pipeline=train_pipeline),
    val=dict(use_lidar=True, pipeline=test_pipeline),
    test=dict(use_lidar=True, pipeline=test_pipeline),
)

# the authors' pretraining: the LiDAR branch of a DAL-Tiny detector (pts_middle_encoder, pts_backbone, pts_neck)
# and the nuImages ResNet-50 (img_backbone), merged into one file by their scripts/gen_fusion_pretrain_model.py
# (pretrain/README.md); its keys already carry the model's names
load_from = 'pretrain/fusion_pretrain_model.pth'
revise_keys = []

total_epochs = 100
eval_config = dict(interval=total_epochs)
