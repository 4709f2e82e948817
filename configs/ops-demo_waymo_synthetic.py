# The CPU demo of ops-demo_synthetic.py (1 frame, ResNet-18 from scratch, 3 decoder layers of 400 queries x 64
# points, 16 epochs, class term 4x) on the synthetic world in the Occ3D-Waymo layout (tools/make_synthetic_waymo.py
# defaults: 2 training + 1 validation sequences of 20 frames at 10 Hz; front cameras 240x160, side cameras 240x111).
# Only what Occ3D-Waymo changes is restated: the benchmark, dataset and paths, the 15 classes, five cameras, the
# image canvas and crop. How well it learns in the demo's CPU time has not been measured (the nuScenes demo's
# settings were chosen by sweeps on the nuScenes-layout world, docs/demo.md). A test of the software, not a recipe.
_base_ = ['./ops-demo_synthetic.py']

benchmark = 'occ3d-waymo'
dataset_type = 'WaymoOccDataset'
dataset_root = 'data/synthetic_waymo/kitti_format/'
occ_root = 'data/synthetic_waymo/occ3d_waymo/'

# the benchmark's classes and free label (configs/_base_/ops_waymo_r50_704x320_8f.py has the reasons for the weights)
occ_names = ['GENERALOBJECT', 'VEHICLE', 'PEDESTRIAN', 'SIGN', 'CYCLIST', 'TRAFFIC_LIGHT', 'POLE', 'CONSTRUCTION_CONE',
             'BICYCLE', 'MOTORCYCLE', 'BUILDING', 'VEGETATION', 'TREE_TRUNK', 'ROAD', 'WALKABLE']
num_classes = len(occ_names)

model = dict(
    pts_bbox_head=dict(
        num_classes=num_classes,
        empty_label=15,
        transformer=dict(num_views=5, num_classes=num_classes)),
    train_cfg=dict(pts=dict(cls_weights=[10, 5, 5, 10, 10, 10, 5, 10, 10, 10, 2, 1, 5, 1, 1],
                            rare_classes=[0, 4, 8, 9])))

# The 240x160 front and 240x111 side images on one 240x160 canvas, sides at the bottom (PadViewsToSize); 224 wide
# (a multiple of 32 below 240), 96 rows as the nuScenes demo: the test resize 224 / 240 = 0.933 keeps the lowest 96
# of 149 rows (the front cameras from about 5 degrees above the horizon down, the side cameras whole but for 8
# rows). resize_lim: the nuScenes demo's training range relative to its test resize (0.58 / 0.64 .. 0.72 / 0.64)
# times 0.933.
_canvas = (160, 240)
ida_aug_conf = {
    'resize_lim': (0.85, 1.05),
    'final_dim': (96, 224),
    'bot_pct_lim': (0.0, 0.0),
    'rot_lim': (0.0, 0.0),
    'H': 160, 'W': 240,
    'rand_flip': True,
}
_meta_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp', 'ego2lidar')
# LoadOccFromFile without occ_root: the label path the dataset stored from its occ_root (one place to point at
# another copy of the world)
train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=0),
    dict(type='LoadOccFromFile', benchmark=benchmark, arrays=['semantics', 'mask_camera']),
    dict(type='PadViewsToSize', size=_canvas, align='bottom'),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=True),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=_meta_keys),
]
test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=0, test_mode=True),
    dict(type='PadViewsToSize', size=_canvas, align='bottom'),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=False),
    dict(type='MultiScaleFlipAug3D',
         transforms=[dict(type='DefaultFormatBundle3D'), dict(type='Collect3D', keys=['img'], meta_keys=_meta_keys)]),
]
# every 2nd frame for training (0.2 s apart: 20 samples per epoch from 40 frames, 320 iterations in 16 epochs);
# every validation frame is evaluated
_dataset = dict(type=dataset_type, data_root=dataset_root, occ_root=occ_root, benchmark=benchmark)
_val = dict(_dataset, ann_file=occ_root + 'waymo_infos_val.pkl', pose_file=occ_root + 'cam_infos_vali.pkl',
            pipeline=test_pipeline, test_mode=True)
data = dict(
    train=dict(_dataset, _delete_=True, ann_file=occ_root + 'waymo_infos_train.pkl',
               pose_file=occ_root + 'cam_infos.pkl', load_interval=2, pipeline=train_pipeline, test_mode=False),
    val=dict(_val, _delete_=True),
    test=dict(_val, _delete_=True),
)
