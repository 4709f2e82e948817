# A small OPUS-V2 for the CPU on the synthetic world (tools/make_synthetic_nuscenes.py defaults: 3 train
# scenes + 1 held-out val scene in the v1.0-mini layout, 400x225 images), scaled down as
# configs/ops-demo_synthetic.py scales OPS-T: 1 frame instead of 8, 96x256 crops instead of 256x704,
# ResNet-18 from scratch instead of the nuImages ResNet-50, 3 decoder layers (and 3 CPD modules) with
# 400 queries x 64 points instead of 5 layers with 600 x 128, 12 short epochs (288 iterations) with a
# higher lr. The V1 demo's sizes were chosen by a sweep; these were not tuned for V2. The method is
# OPUS-V2-T's: GT flips, voxel classification with the CPD modules, score threshold 0.25.
# It is a smoke-and-learning test of the software, not a recipe for nuScenes.
_base_ = ['./opusv2-t_r50_704x256_8f_50e.py']

dataset_root = 'data/synthetic/'
occ_root = 'data/synthetic/gts/'
num_frames = 1
num_query = 400
num_points = 4
num_layers = 3
num_refines = [8, 32, 64]
total_epochs = 12
batch_size = 1

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
    pts_bbox_head=dict(
        num_query=num_query,
        # no gradient checkpointing: memory is plentiful at this size and recomputation costs time
        transformer=dict(num_frames=num_frames, num_points=num_points, num_layers=num_layers,
                         num_refines=num_refines, with_cp=False)))

ida_aug_conf = {
    'resize_lim': (0.58, 0.72),
    'final_dim': (96, 256),
    'bot_pct_lim': (0.0, 0.0),
    'rot_lim': (0.0, 0.0),
    'H': 225, 'W': 400,
    'rand_flip': True,
}
_meta_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'ego2occ', 'ego2img', 'ego2lidar', 'img_timestamp')
train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=num_frames - 1),
    dict(type='LoadOcc3DFromFile', occ_root=occ_root),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=True),
    dict(type='RandomTransformOcc', bda_aug_conf=dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5)),
    dict(type='ComposeEgo2Img'),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=_meta_keys),
]
test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=num_frames - 1, test_mode=True),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=False),
    dict(type='ComposeEgo2Img'),
    dict(type='MultiScaleFlipAug3D',
         transforms=[dict(type='DefaultFormatBundle3D'), dict(type='Collect3D', keys=['img'], meta_keys=_meta_keys)]),
]
data = dict(
    workers_per_gpu=1,
    train=dict(data_root=dataset_root, occ_root=occ_root, pipeline=train_pipeline,
               ann_file=dataset_root + 'nuscenes_infos_train_mini_sweep.pkl'),
    val=dict(data_root=dataset_root, occ_root=occ_root, pipeline=test_pipeline,
             ann_file=dataset_root + 'nuscenes_infos_val_mini_sweep.pkl'),
    test=dict(data_root=dataset_root, occ_root=occ_root, pipeline=test_pipeline,
              ann_file=dataset_root + 'nuscenes_infos_val_mini_sweep.pkl'))

# the backbone starts from scratch here, so it learns at the full lr
optimizer = dict(lr=2e-3, paramwise_cfg=dict(custom_keys={'img_backbone': dict(lr_mult=1.0)}))
optimizer_config = dict(type='OptimizerHook')  # fp32: the demo runs on the CPU
lr_config = dict(warmup_iters=20)
load_from = None
log_config = dict(interval=8, hooks=[dict(type='TextLoggerHook', interval=8, reset_flag=True)])
eval_config = dict(interval=total_epochs)
