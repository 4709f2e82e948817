"""Ray origins for RayIoU: the LiDAR positions of a scene's key frames seen from one sample.

The rule: docs/evaluation.md, "RayIoU" (Origins).

For sample i, every key frame j of the same scene (past and future, dataset order) contributes the
position of its LiDAR expressed in sample i's ego frame (metres); origins outside |x| < 39, |y| < 39
are dropped, and at most 8 are kept, evenly spread over the list.
"""
from collections import OrderedDict

import numpy as np

from core.geometry import rigid_inverse, rigid_transform

__all__ = ['RayOrigins']


def _required(info, key):
    if key not in info:
        raise KeyError(f'data info of sample {info.get("token", "?")} has no "{key}"; RayIoU origins need '
                       f'lidar2ego_* and ego2global_* poses and scene_name (regenerate the info pickles '
                       f'with gen_sweep_info.py)')
    return info[key]


class RayOrigins:
    """Ray origins of every sample of a dataset (the original's `EgoPoseDataset`).

    Args:
        data_infos (list[dict]): the dataset's infos in dataset order, with `scene_name`,
            `lidar2ego_translation`, `lidar2ego_rotation`, `ego2global_translation`,
            `ego2global_rotation` (quaternions (w, x, y, z) as nuScenes writes them, or 3x3 matrices).
        max_origins (int): keep at most this many origins per sample.
        xy_limit (float): keep origins with |x| < xy_limit and |y| < xy_limit (metres, ego frame).
    """

    def __init__(self, data_infos, max_origins=8, xy_limit=39.0):
        self.data_infos = data_infos
        self.max_origins = max_origins
        self.xy_limit = xy_limit
        self.scene_frames = OrderedDict()
        self.position_in_scene = []
        for index, info in enumerate(data_infos):
            frames = self.scene_frames.setdefault(_required(info, 'scene_name'), [])
            self.position_in_scene.append(len(frames))
            frames.append(index)

    def __len__(self):
        return len(self.data_infos)

    def lidar_to_ego(self, info):
        return rigid_transform(_required(info, 'lidar2ego_rotation'), _required(info, 'lidar2ego_translation'))

    def ego_to_global(self, info):
        return rigid_transform(_required(info, 'ego2global_rotation'), _required(info, 'ego2global_translation'))

    def lidar_to_global(self, info):
        return self.ego_to_global(info).dot(self.lidar_to_ego(info))

    def global_to_lidar(self, info):
        return rigid_inverse(self.lidar_to_ego(info)).dot(rigid_inverse(self.ego_to_global(info)))

    def __getitem__(self, index):
        """float64 [K, 3] origins (metres, ego frame of sample `index`), 1 <= K <= max_origins usually.

        K can be 0 if no key frame of the scene lies within the xy limit (not possible for the sample's
        own LiDAR in a real rig, which sits near the ego origin).
        """
        info = self.data_infos[index]
        scene = self.scene_frames[info['scene_name']]
        ref_position = self.position_in_scene[index]
        ref_lidar_from_global = self.global_to_lidar(info)
        ref_ego_from_lidar = self.lidar_to_ego(info)
        origins = []
        for position, frame_index in enumerate(scene):
            if position == ref_position:
                origin_lidar = np.zeros(3, dtype=np.float32)
            else:
                ref_from_frame = ref_lidar_from_global.dot(self.lidar_to_global(self.data_infos[frame_index]))
                # The original stores this LiDAR-frame position as float32 before moving it to the
                # ego frame in float64; keep that rounding so the origins match it bit for bit.
                origin_lidar = np.array(ref_from_frame[:3, 3], dtype=np.float32)
            origin = ref_ego_from_lidar[:3].dot(np.append(origin_lidar.astype(np.float64), 1.0))
            if abs(origin[0]) < self.xy_limit and abs(origin[1]) < self.xy_limit:
                origins.append(origin)
        if len(origins) > self.max_origins:
            keep = np.round(np.linspace(0, len(origins) - 1, self.max_origins)).astype(np.int64)
            origins = [origins[i] for i in keep]
        return np.array(origins, dtype=np.float64).reshape(-1, 3)
