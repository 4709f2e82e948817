# A small OPUS-Fusion for the CPU demo on the synthetic world (tools/make_synthetic_nuscenes.py defaults; add
# --lidar-sweeps 9 for nuScenes' 20 Hz sweeps between key frames, else the key frames' own scans stand in).
# The image side and the decoder are those of configs/ops-demo_synthetic.py (1 frame, 96x256 crops, ResNet-18 from
# scratch, 3 layers of 400 queries x 64 points, 16 epochs, the class term weighted 4x); the LiDAR branch keeps the
# authors' structure (hard voxels, mean VFE, sparse encoder with its strides and paddings, SECOND, SECONDFPN, final
# conv) at a quarter of the widths and 0.2 m voxels, which gives a 50 x 50 map over the range instead of 200 x 200.
# It is a smoke test of the software, not a recipe for nuScenes.
_base_ = ['./opus-fusion-t_r50_704x256_8f_100e.py']

dataset_root = 'data/synthetic/'
occ_root = 'data/synthetic/gts/'
num_frames = 1
num_query = 400
num_points = 4
num_layers = 3
num_refines = [1, 8, 64]
total_epochs = 16
batch_size = 1

_point_cloud_range = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
model = dict(
    img_backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN2d', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        with_cp=False),
    img_neck=dict(in_channels=[64, 128, 256, 512]),
    # 0.2 x 0.2 x 0.16 m voxels: a 400 x 400 x 40 grid, 50 x 50 after the encoder's three stride-2 steps
    pts_voxel_layer=dict(voxel_size=[0.2, 0.2, 0.16], max_voxels=(30000, 40000)),
    pts_middle_encoder=dict(
        sparse_shape=[41, 400, 400],
        output_channels=32,
        base_channels=4,
        encoder_channels=((4, 4, 8), (8, 8, 16), (16, 16, 32), (32, 32))),
    pts_backbone=dict(in_channels=64, out_channels=[32, 64]),
    pts_neck=dict(in_channels=[32, 64], out_channels=[64, 64]),
    second_out_dim=128,
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_frames=num_frames, num_points=num_points, num_layers=num_layers,
                         num_refines=num_refines, with_cp=False),
        # as configs/ops-demo_synthetic.py (docs/demo.md, "The class-score plateau")
        loss_cls=dict(loss_weight=8.0)),
    test_cfg=dict(pts=dict(score_thr=0.3)))

ida_aug_conf = {
    'resize_lim': (0.58, 0.72),
    'final_dim': (96, 256),
    'bot_pct_lim': (0.0, 0.0),
    'rot_lim': (0.0, 0.0),
    'H': 225, 'W': 400,
    'rand_flip': True,
}
_meta_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'ego2occ', 'ego2img', 'ego2points', 'img_timestamp')
_load_points = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=9, use_dim=[0, 1, 2, 3, 4], pad_empty_sweeps=True,
         remove_close=True),
    dict(type='LiDARToOccSpace'),
]
train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=num_frames - 1),
    *_load_points,
    dict(type='LoadOccFromFile', occ_root=occ_root),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=True),
    dict(type='PointsRangeFilter', point_cloud_range=_point_cloud_range),
    dict(type='ComposeEgo2Img'),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'points', 'voxel_semantics', 'mask_camera'], meta_keys=_meta_keys),
]
test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=num_frames - 1, test_mode=True),
    *_load_points,
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=False),
    dict(type='PointsRangeFilter', point_cloud_range=_point_cloud_range),
    dict(type='ComposeEgo2Img'),
    dict(type='MultiScaleFlipAug3D',
         transforms=[dict(type='DefaultFormatBundle3D'),
                     dict(type='Collect3D', keys=['img', 'points'], meta_keys=_meta_keys)]),
]
data = dict(
    workers_per_gpu=1,
    train=dict(data_root=dataset_root, occ_root=occ_root, pipeline=train_pipeline,
               ann_file=dataset_root + 'nuscenes_infos_train_mini_sweep.pkl'),
    val=dict(data_root=dataset_root, occ_root=occ_root, pipeline=test_pipeline,
             ann_file=dataset_root + 'nuscenes_infos_val_mini_sweep.pkl'),
    test=dict(data_root=dataset_root, occ_root=occ_root, pipeline=test_pipeline,
              ann_file=dataset_root + 'nuscenes_infos_val_mini_sweep.pkl'))

# the backbones start from scratch here, so they learn at the full lr
optimizer = dict(lr=2e-3, paramwise_cfg=dict(custom_keys={'img_backbone': dict(lr_mult=1.0)}))
optimizer_config = dict(type='OptimizerHook')  # fp32: the demo runs on the CPU
lr_config = dict(warmup_iters=20)
load_from = None
log_config = dict(interval=8, hooks=[dict(type='TextLoggerHook', interval=8, reset_flag=True)])
eval_config = dict(interval=total_epochs)
