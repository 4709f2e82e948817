# A tiny OPUS-V2 for the CPU on the synthetic world in the nuScenes-Occupancy layout:
#   python tools/make_synthetic_nuscenes.py --out data/synthetic-nusc-occupancy --benchmark nuscenes-occupancy
#   python gen_sweep_info.py --data-root data/synthetic-nusc-occupancy --version v1.0-mini \
#       --benchmark nuscenes-occupancy
# Scaled down from OPUS-V2-T on nuScenes-Occupancy as configs/opusv2-demo_synthetic.py scales the Occ3D one
# (1 frame, 96x256 crops, ResNet-18 from scratch, 3 decoder layers, fp32, higher lr), with fewer queries and
# points: the benchmark's grid cannot shrink (512 x 512 x 40 voxels of 0.2 m; 8.4e5 to 9.4e5 occupied voxels
# in a frame of the tests' world), and every ground-truth voxel is matched to its nearest predicted point in
# each layer, so the matching costs grow with the predicted points. Not tuned; a smoke test of the software,
# not a recipe.
_base_ = ['./opusv2-t_r50_704x256_8f_nusc-occupancy_50e.py']

dataset_root = 'data/synthetic-nusc-occupancy/'
occ_root = 'data/synthetic-nusc-occupancy/occupancy/'
num_frames = 1
num_query = 100
num_points = 4
num_layers = 3
num_refines = [4, 8, 16]
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
    dict(type='LoadOccFromFile', occ_root=occ_root, benchmark='nuscenes-occupancy', arrays=['semantics']),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=True),
    dict(type='RandomTransformOcc', bda_aug_conf=dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5)),
    dict(type='ComposeEgo2Img'),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics'], meta_keys=_meta_keys),
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
