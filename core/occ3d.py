"""The Occ3D-nuScenes protocol: classes, free label, grid, point-cloud range, voxel size, cameras.

Every module that needs one of these numbers imports it from here (docs/method.md, "Symbols and
frames"). The configs restate them as plain values (mmcv configs cannot import project code);
tests/core/test_occ3d.py checks that the published configs agree with this module.

Grid: 200 x 200 x 16 voxels of 0.4 m covering `POINT_CLOUD_RANGE` (metres, ego frame of the key
frame), arrays indexed `[x, y, z]`. Labels: 0..16 the semantic classes in `CLASS_NAMES` order,
17 = free (`FREE_LABEL`); `LABEL_NAMES` = the 18 labels, free last (what the metrics count).
"""
import os.path as osp
import zipfile

import numpy as np

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

LABEL_ARRAYS = ('semantics', 'mask_lidar', 'mask_camera')   # what an Occ3D labels.npz holds, each GRID_SHAPE

__all__ = ['CLASS_NAMES', 'NUM_CLASSES', 'FREE_LABEL', 'LABEL_NAMES', 'NUM_LABELS', 'POINT_CLOUD_RANGE',
           'VOXEL_SIZE', 'GRID_SHAPE', 'CAMERA_NAMES', 'NUM_VIEWS', 'LABEL_ARRAYS', 'LabelFileError', 'read_labels']


class LabelFileError(ValueError):
    """An Occ3D labels.npz that cannot be used (unreadable, arrays missing or of the wrong shape)."""
    user_error = True  # engine/cli.py prints the message without a traceback


def read_labels(path, arrays=LABEL_ARRAYS):
    """The named arrays of an existing Occ3D `labels.npz`, as a dict of `[X, Y, Z]` numpy arrays.

    A truncated or foreign file, a missing array or a grid of another shape raises LabelFileError
    naming the file and the fix (callers check that the file exists, with their own hint).
    """
    fix = 'replace it with the file of the Occ3D-nuScenes download (gts/<scene_name>/<sample_token>/labels.npz)'
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in arrays if k not in data.files]
            if missing:
                raise LabelFileError(f'{path}: lacks the array(s) {missing} (it holds {sorted(data.files)}); an Occ3D '
                                     f'labels.npz holds {list(LABEL_ARRAYS)}; {fix}')
            out = {k: data[k] for k in arrays}
    except LabelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        size = osp.getsize(path) if osp.isfile(path) else 0
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LabelFileError(f'{path}: not a readable labels.npz ({size:,} bytes; {detail}); {fix}') from exc
    for key, value in out.items():
        if value.shape != GRID_SHAPE:
            raise LabelFileError(f'{path}: {key} has shape {value.shape}, expected {GRID_SHAPE} (x, y, z); {fix}')
    return out
