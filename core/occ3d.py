"""The Occ3D-nuScenes protocol: classes, free label, grid, point-cloud range, voxel size, cameras.

Every module that needs one of these numbers imports it from here (docs/method.md, "Symbols and
frames"). The configs restate them as plain values (mmcv configs cannot import project code);
tests/core/test_occ3d.py checks that the published configs agree with this module.

Grid: 200 x 200 x 16 voxels of 0.4 m covering `POINT_CLOUD_RANGE` (metres, ego frame of the key
frame), arrays indexed `[x, y, z]`. Labels: 0..16 the semantic classes in `CLASS_NAMES` order,
17 = free (`FREE_LABEL`); `LABEL_NAMES` = the 18 labels, free last (what the metrics count).
"""

# Semantic classes, ids 0..16 (Occ3D-nuScenes label order).
CLASS_NAMES = ('others', 'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle',
               'pedestrian', 'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat',
               'sidewalk', 'terrain', 'manmade', 'vegetation')
NUM_CLASSES = len(CLASS_NAMES)            # 17
FREE_LABEL = NUM_CLASSES                  # 17: an empty voxel
LABEL_NAMES = CLASS_NAMES + ('free',)     # all 18 labels of a grid, free last
NUM_LABELS = len(LABEL_NAMES)             # 18

# (x_min, y_min, z_min, x_max, y_max, z_max), metres, ego frame of the key frame.
POINT_CLOUD_RANGE = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
VOXEL_SIZE = (0.4, 0.4, 0.4)              # metres per voxel along x, y, z
GRID_SHAPE = (200, 200, 16)               # voxels along x, y, z

# The six cameras of one frame, in the order of the info pickles, the image lists and the
# `lidar2img` matrices (mmdet3d's order). View choice in the decoder prefers the earlier ones.
CAMERA_NAMES = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
NUM_VIEWS = len(CAMERA_NAMES)             # 6

__all__ = ['CLASS_NAMES', 'NUM_CLASSES', 'FREE_LABEL', 'LABEL_NAMES', 'NUM_LABELS', 'POINT_CLOUD_RANGE',
           'VOXEL_SIZE', 'GRID_SHAPE', 'CAMERA_NAMES', 'NUM_VIEWS']
