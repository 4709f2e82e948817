# Everything shared by OPS-T/S/M/L on Occ3D-Waymo: the Occ3D-nuScenes base (ops_r50_704x256_8f.py: backbone,
# FPN, decoder, losses, optimiser, schedule shape, nuImages pre-training) with the Occ3D-Waymo data. The variant
# files set num_query, num_points, num_refines and total_epochs; this file alone is OPS-T. Every value that
# differs from the base is chosen below, with the reason beside it (docs/data.md and docs/evaluation.md,
# "Occ3D-Waymo"). Values the base computed from its own variables (its pipelines, data, the head's class counts)
# are restated here: mmcv does not re-evaluate them.
_base_ = ['./ops_r50_704x256_8f.py']

# The benchmark protocol (core/benchmarks/occ3d_waymo.py): 15 classes + free, the same 200 x 200 x 16 grid of
# 0.4 m over [-40, 40] x [-40, 40] x [-1, 5.4] m, five cameras, mIoU on mask_camera, RayIoU.
benchmark = 'occ3d-waymo'

dataset_type = 'WaymoOccDataset'
dataset_root = 'data/waymo/kitti_format/'   # mmdetection3d's Waymo export: training/image_0..4/ (train and val)
occ_root = 'data/waymo/occ3d_waymo/'        # the Occ3D-Waymo download: infos, pose files, training/, validation/

occ_names = ['GENERALOBJECT', 'VEHICLE', 'PEDESTRIAN', 'SIGN', 'CYCLIST', 'TRAFFIC_LIGHT', 'POLE', 'CONSTRUCTION_CONE',
             'BICYCLE', 'MOTORCYCLE', 'BUILDING', 'VEGETATION', 'TREE_TRUNK', 'ROAD', 'WALKABLE']
num_classes = len(occ_names)
point_cloud_range = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]   # the base's numbers: the same grid
voxel_size = [0.4, 0.4, 0.4]
# free is 15 in the grids the models see (the files' 23 is remapped when read)
_free_label = 15
# FRONT, FRONT_LEFT, FRONT_RIGHT, SIDE_LEFT, SIDE_RIGHT: the transformer samples 5 views per frame
_num_views = 5

model = dict(
    cache_size=36,   # the online cache: 7 history frames 5 frames apart + the current one (see the pipelines)
    pts_bbox_head=dict(
        num_classes=num_classes,
        empty_label=_free_label,
        transformer=dict(num_views=_num_views, num_classes=num_classes)),
    train_cfg=dict(pts=dict(
        # Per class 0..14, by the rule of the base's Occ3D-nuScenes weights (10 for rare objects, 5 for frequent
        # objects, 2 for buildings, 1 for vegetation and ground), ranked by Waymo's class frequencies as CVT-Occ's
        # frequency-derived loss weights rank them: >= 12 (GENERALOBJECT, SIGN, CYCLIST, TRAFFIC_LIGHT,
        # CONSTRUCTION_CONE, BICYCLE, MOTORCYCLE) -> 10; 7..12 (VEHICLE, PEDESTRIAN, POLE, TREE_TRUNK) -> 5;
        # BUILDING -> 2 (as manmade); VEGETATION, ROAD, WALKABLE -> 1 (as vegetation, driveable_surface, sidewalk).
        cls_weights=[10, 5, 5, 10, 10, 10, 5, 10, 10, 10, 2, 1, 5, 1, 1],
        # the four rarest by the same ranking (CVT-Occ: GENERALOBJECT and MOTORCYCLE 22.0, CYCLIST and BICYCLE
        # 15.1), as the base names Occ3D-nuScenes' four rarest (others, bicycle, construction_vehicle, cone)
        rare_classes=[0, 4, 8, 9])),
)

# Cameras: FRONT, FRONT_LEFT, FRONT_RIGHT are 1920x1280, SIDE_LEFT, SIDE_RIGHT 1920x886. PadViewsToSize puts every
# image on a 1920x1280 canvas without resampling, the side images at its bottom (align='bottom'), so that one
# resize/crop draw serves all views and keeps the side images whole: the crop keeps the lowest rows.
_canvas = (1280, 1920)
# 704 wide as the base (the same feature-map width); 320 rows = the bottom of the test resize 704/1920 = 0.367
# (704x469): the front cameras keep their view from about 6 degrees above the horizon down, as the base's
# 256 of 396 rows do for nuScenes, and the side cameras (886 * 0.367 = 325 rows) stay whole but for 5 rows.
# 5 x 704 x 320 = 1.13 M pixels per frame (the base: 6 x 704 x 256 = 1.08 M).
# resize_lim: the base's training range relative to its test resize (0.38 / 0.44 .. 0.55 / 0.44) times 0.367.
ida_aug_conf = {
    'resize_lim': (0.32, 0.46),
    'final_dim': (320, 704),
    'bot_pct_lim': (0.0, 0.0),
    'rot_lim': (0.0, 0.0),
    'H': 1280, 'W': 1920,
    'rand_flip': True,
}

# History: every Occ3D-Waymo frame is labelled (10 Hz) and the dataset lists the previous frames, one entry per
# frame (history_per_sample=1). test_interval 5 = 0.5 s between history frames, as the base's key frames (6 sweeps at
# 12 Hz); the training draw (3, 7) = 0.3..0.7 s covers the base's (4, 8) sweeps = 0.33..0.67 s. Online evaluation
# (one process, batch 1) reads the history features from the model's cache, which must hold the 7 x 5 + 1 = 36
# frames this history spans (model.cache_size below).
_meta_keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp', 'ego2lidar')
train_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7, train_interval=(3, 7)),
    # the arrays the training reads (the files' LiDAR mask is not decompressed)
    dict(type='LoadOccFromFile', occ_root=occ_root, benchmark=benchmark, arrays=['semantics', 'mask_camera']),
    dict(type='PadViewsToSize', size=_canvas, align='bottom'),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=True),
    dict(type='DefaultFormatBundle3D'),
    dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=_meta_keys),
]
test_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7, test_mode=True, test_interval=5, history_per_sample=1),
    dict(type='PadViewsToSize', size=_canvas, align='bottom'),
    dict(type='RandomTransformImage', ida_aug_conf=ida_aug_conf, training=False),
    # one test-time "augmentation": the sample is wrapped in one-element lists (mmdet3d's test format)
    dict(type='MultiScaleFlipAug3D',
         transforms=[dict(type='DefaultFormatBundle3D'), dict(type='Collect3D', keys=['img'], meta_keys=_meta_keys)]),
]

# Training takes every 5th frame (load_interval 5: 2 Hz, about 32,000 samples per epoch from 798 sequences, as many
# as Occ3D-nuScenes' 28,130, so the base's schedules keep their length); the history still uses every frame.
# Validation evaluates every frame of the 202 sequences (about 40,000), as the reference evaluation does. The
# test labels are not released: test = val.
_dataset = dict(type=dataset_type, data_root=dataset_root, occ_root=occ_root, benchmark=benchmark)
_val = dict(_dataset, ann_file=occ_root + 'waymo_infos_val.pkl', pose_file=occ_root + 'cam_infos_vali.pkl',
            pipeline=test_pipeline, test_mode=True)
data = dict(
    train=dict(_dataset, _delete_=True, ann_file=occ_root + 'waymo_infos_train.pkl',
               pose_file=occ_root + 'cam_infos.pkl', load_interval=5, pipeline=train_pipeline, test_mode=False),
    val=dict(_val, _delete_=True),
    test=dict(_val, _delete_=True),
)
