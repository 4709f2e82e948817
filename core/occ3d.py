"""The Occ3D-nuScenes protocol under its historical names: classes, free label, grid, range, voxel size, cameras.

The protocol itself is the description `core.benchmarks.OCC3D_NUSCENES` (docs/architecture.md, "Adding a
benchmark"); the names below are aliases of its fields, kept for the modules and tools that import them
(docs/method.md, "Symbols and frames"). Code that serves several benchmarks takes a `Benchmark` instead.
The configs restate the values as plain values (mmcv configs cannot import project code) and select the
benchmark with `benchmark = 'occ3d-nuscenes'`; engine/config.py refuses a config whose values disagree.

Grid: 200 x 200 x 16 voxels of 0.4 m covering `POINT_CLOUD_RANGE` (metres, ego frame of the key
frame), arrays indexed `[x, y, z]`. Labels: 0..16 the semantic classes in `CLASS_NAMES` order,
17 = free (`FREE_LABEL`); `LABEL_NAMES` = the 18 labels, free last (what the metrics count).
"""
from .benchmarks import OCC3D_NUSCENES, LabelFileError

BENCHMARK = OCC3D_NUSCENES

# Semantic classes, ids 0..16 (Occ3D-nuScenes label order).
CLASS_NAMES = OCC3D_NUSCENES.class_names
NUM_CLASSES = OCC3D_NUSCENES.num_classes            # 17
FREE_LABEL = OCC3D_NUSCENES.free_label              # 17: an empty voxel
LABEL_NAMES = OCC3D_NUSCENES.label_names            # all 18 labels of a grid, free last
NUM_LABELS = OCC3D_NUSCENES.num_labels              # 18

# (x_min, y_min, z_min, x_max, y_max, z_max), metres, ego frame of the key frame.
POINT_CLOUD_RANGE = OCC3D_NUSCENES.point_cloud_range
VOXEL_SIZE = OCC3D_NUSCENES.voxel_size              # metres per voxel along x, y, z
GRID_SHAPE = OCC3D_NUSCENES.grid_shape              # voxels along x, y, z

# The six cameras of one frame, in the order of the info pickles, the image lists and the
# `lidar2img` matrices (mmdet3d's order). View choice in the decoder prefers the earlier ones.
CAMERA_NAMES = OCC3D_NUSCENES.camera_names
NUM_VIEWS = OCC3D_NUSCENES.num_views                # 6

LABEL_ARRAYS = OCC3D_NUSCENES.label_array_names     # what an Occ3D labels.npz holds, each GRID_SHAPE

__all__ = ['BENCHMARK', 'CLASS_NAMES', 'NUM_CLASSES', 'FREE_LABEL', 'LABEL_NAMES', 'NUM_LABELS', 'POINT_CLOUD_RANGE',
           'VOXEL_SIZE', 'GRID_SHAPE', 'CAMERA_NAMES', 'NUM_VIEWS', 'LABEL_ARRAYS', 'LabelFileError', 'read_labels']


def read_labels(path, arrays=LABEL_ARRAYS):
    """The named arrays of an existing Occ3D `labels.npz`, as a dict of `[X, Y, Z]` numpy arrays
    (`OCC3D_NUSCENES.read_labels`: a bad file raises LabelFileError naming the file and the fix)."""
    return OCC3D_NUSCENES.read_labels(path, arrays)
