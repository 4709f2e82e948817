"""nuScenes-Occupancy labels of the synthetic world, in the release's layout (core/benchmarks/nuscenes_occupancy.py).

Per key frame: `occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy`, an integer array [N, 4] of
rows (z, y, x, release class id), one per occupied voxel of the 512 x 512 x 40 grid of 0.2 m over
[-51.2, 51.2] x [-51.2, 51.2] x [-5, 3] m in the key frame's LiDAR frame. The voxels are labelled by the same
rule as the Occ3D labels (occupancy.semantics: 2 x 2 x 2 sample points per voxel, the ground layer at global
z = 0), on this grid and in this frame; the tokens are those of the world's nuScenes tables (writer.py), so
gen_sweep_info.py finds the files by its infos' `scene_token` and `lidar_token`.

Release ids: the world's Occ3D ids map by class name (the 16 classes have the same names and, as it happens,
the same ids 1..16); Occ3D's 'others' becomes the release's 'noise' (0). The world places no 'others' shape,
so the synthetic files hold no noise rows.
"""
import os
import os.path as osp

import numpy as np

from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY, RELEASE_CLASS_NAMES, RELEASE_NOISE_ID
from core.occ3d import CLASS_NAMES as OCC3D_CLASS_NAMES

from . import occupancy, writer
from .world import FREE

__all__ = ['OCC3D_TO_RELEASE', 'release_rows', 'label_file', 'write_frame_labels', 'write_world_labels']

# Occ3D id (0..16) -> release id (0 noise, 1..16)
OCC3D_TO_RELEASE = np.array([RELEASE_NOISE_ID if name == 'others' else RELEASE_CLASS_NAMES.index(name)
                             for name in OCC3D_CLASS_NAMES], dtype=np.uint16)


def release_rows(semantics):
    """uint16 [N, 4] rows (z, y, x, release id) of the occupied voxels of an Occ3D-id grid [X, Y, Z] (17 = free),
    in x, y, z order."""
    xyz = np.argwhere(semantics != FREE)
    ids = OCC3D_TO_RELEASE[semantics[xyz[:, 0], xyz[:, 1], xyz[:, 2]]]
    return np.column_stack([xyz[:, 2], xyz[:, 1], xyz[:, 0], ids]).astype(np.uint16)


def label_file(root, scene, k):
    """The label file of key frame `k` of `scene` (a writer.SceneConfig) under the world's root."""
    scene_token = writer.token(scene.seed, scene.name, 'scene')
    lidar_token = writer.token(scene.seed, scene.name, 'sd', writer.LIDAR, scene.key_time(k))
    return osp.join(root, NUSCENES_OCCUPANCY.label_root_dir,
                    NUSCENES_OCCUPANCY.label_file.format(scene_token=scene_token, lidar_token=lidar_token))


def write_frame_labels(task):
    """Label and write key frame k: task = (root, SceneConfig, k). Returns the number of rows written."""
    root, scene, k = task
    world = scene.world()
    lidar2global = scene.ego_pose(scene.key_time(k), world) @ writer.sensor2ego(writer.LIDAR)
    rows = release_rows(occupancy.semantics(world, lidar2global, NUSCENES_OCCUPANCY))
    path = label_file(root, scene, k)
    os.makedirs(osp.dirname(path), exist_ok=True)
    np.save(path, rows)
    return len(rows)


def write_world_labels(root, scenes, pool=None):
    """Write the labels of every key frame of `scenes` (in `pool`'s processes when given); returns the rows
    written per frame, in scene and key-frame order."""
    tasks = [(root, s, k) for s in scenes for k in range(s.num_keyframes)]
    return list(pool.map(write_frame_labels, tasks)) if pool is not None else [write_frame_labels(t) for t in tasks]
