# Everything shared by OPS-T/S/M/L (docs/method.md, "Configuration"). The variant files set num_query, num_points,
# num_refines and total_epochs; this file alone is OPS-T. Helper variables start with '_'.
# Changing num_frames here also changes the sweep loaders (sweeps_num = num_frames - 1); a config that
# overrides num_frames must restate the pipelines, because values computed here are not re-evaluated.

# The benchmark protocol (core/benchmarks/): classes, grid, cameras, label files, metrics. The values
# restated below (occ_names, point_cloud_range, voxel_size) must be its own: engine/config.py refuses a
# config that mixes benchmarks.
benchmark = 'occ3d-nuscenes'

dataset_type = 'NuScenesOccDataset'
dataset_root = 'data/nuscenes/'
occ_root = 'data/nuscenes/gts/'

# The original's input_modality and 3D-box class list (object_names) are gone with the box steps of
# its pipelines: no box ever reached the model. The Occ3D classes (= the benchmark's class_names):
occ_names = ['others', 'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle',
             'pedestrian', 'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat',
             'sidewalk', 'terrain', 'manmade', 'vegetation']
num_classes = len(occ_names)

point_cloud_range = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
voxel_size = [0.4, 0.4, 0.4]

embed_dims = 256
num_layers = 6
num_frames = 8
num_levels = 4

# OPS-T (overridden by the S/M/L files)
num_query = 600
num_points = 4
num_refines = [1, 4, 16, 32, 64, 128]

img_norm_cfg = dict(mean=[123.675, 116.280, 103.530], std=[58.395, 57.120, 57.375], to_rgb=True)

model = dict(
    type='OPS',
    use_grid_mask=False,
    data_aug=dict(
        img_color_aug=True,  # photometric distortion on the device, training only
        img_norm_cfg=img_norm_cfg,
        img_pad_cfg=dict(size_divisor=32)),
    stop_prev_grad=0,
    img_backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN2d', requires_grad=True),
        norm_eval=True,
        style='pytorch',
        with_cp=True),
    img_neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=embed_dims,
        num_outs=num_levels),
    pts_bbox_head=dict(
        type='OPSHead',
        num_classes=num_classes,
        in_channels=embed_dims,
        num_query=num_query,
        pc_range=point_cloud_range,
        voxel_size=voxel_size,
        transformer=dict(
            type='OPSTransformer',
            embed_dims=embed_dims,
            num_frames=num_frames,
            num_points=num_points,
            num_layers=num_layers,
            num_levels=num_levels,
            num_classes=num_classes,
            num_refines=num_refines,
            scales=[0.5],
            pc_range=point_cloud_range),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5)),
    train_cfg=dict(pts=dict(
        # per class id 0..16, applied per logit channel (docs/method.md, "Losses")
        cls_weights=[10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1],
        # the original's code defaults, written out
        empty_dist_thr=0.2,
        empty_weights=5,
        rare_classes=[0, 2, 5, 8],
        rare_weights=10)),
    test_cfg=dict(pts=dict(
        score_thr=0.5,
        padding=True,
        ctr_dist_thr=3.0)),
)

ida_aug_conf = {
    'resize_lim': (0.38, 0.55),
    'final_dim': (256, 704),
    'bot_pct_lim': (0.0, 0.0),
    'rot_lim': (0.0, 0.0),
    'H': 900, 'W': 1600,
    'rand_flip': True,
}

train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=num_frames - 1),
    dict(type='LoadOccFromFile', occ_root=occ_root, benchmark=benchmark),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=True),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'],
         meta_keys=('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp', 'ego2lidar')),
]

test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=num_frames - 1, test_mode=True),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=False),
    # one test-time "augmentation": the sample is wrapped in one-element lists (mmdet3d's test format)
    dict(type='MultiScaleFlipAug3D',
         transforms=[
             dict(type='DefaultFormatBundle3D'),
             dict(type='Collect3D', keys=['img'],
                  meta_keys=('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp',
                             'ego2lidar'))]),
]

# fields shared by the train/val/test datasets
_dataset = dict(type=dataset_type, data_root=dataset_root, occ_root=occ_root, benchmark=benchmark)
data = dict(
    workers_per_gpu=4,
    train=dict(_dataset, ann_file=dataset_root + 'nuscenes_infos_train_sweep.pkl', pipeline=train_pipeline,
               test_mode=False),
    val=dict(_dataset, ann_file=dataset_root + 'nuscenes_infos_val_sweep.pkl', pipeline=test_pipeline,
             test_mode=True),
    test=dict(_dataset, ann_file=dataset_root + 'nuscenes_infos_test_sweep.pkl', pipeline=test_pipeline,
              test_mode=True),
)

optimizer = dict(
    type='AdamW',
    lr=2e-4,
    paramwise_cfg=dict(custom_keys={
        'img_backbone': dict(lr_mult=0.1),
        'sampling_offset': dict(lr_mult=0.1),
    }),
    weight_decay=0.01)

optimizer_config = dict(
    type='Fp16OptimizerHook',
    loss_scale=512.0,
    grad_clip=dict(max_norm=35, norm_type=2))

# by_epoch=True (mmcv default): the cosine value changes once per epoch; warmup counts iterations
lr_config = dict(
    policy='CosineAnnealing',
    warmup='linear',
    warmup_iters=500,
    warmup_ratio=1.0 / 3,
    min_lr_ratio=1e-3)

total_epochs = 100
batch_size = 8  # total over all GPUs per optimizer step (engine/scaling.py, docs/distributed.md)
# the lr above belongs to batch_size samples per step (base_batch_size defaults to batch_size, so configs that
# change batch_size keep their lr): scaled linearly when the total batch that runs differs (more than 8 GPUs)
auto_scale_lr = dict(enable=True)

# only the ResNet-50 part of this nuImages detector lands in the model (see pretrain/README.md)
load_from = 'pretrain/cascade_mask_rcnn_r50_fpn_coco-20e_20e_nuim_20201009_124951-40963960.pth'
revise_keys = [('backbone', 'img_backbone')]

checkpoint_config = dict(interval=1, max_keep_ckpts=1)

log_config = dict(
    interval=50,
    hooks=[
        dict(type='TextLoggerHook', interval=50, reset_flag=True),
        dict(type='TensorboardLoggerHook', interval=500, reset_flag=True),
    ])

eval_config = dict(interval=total_epochs)
