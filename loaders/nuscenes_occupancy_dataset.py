"""NuScenesOccupancyDataset: nuScenes key frames with nuScenes-Occupancy labels (docs/data.md, "nuScenes-Occupancy").

The infos are those of gen_sweep_info.py (`--benchmark nuscenes-occupancy` writes `occ_path` by the release's
layout and every info carries `scene_token` and `lidar_token`), so this is `NuScenesOccDataset` with two
differences:

* the input dict carries `scene_token` and `lidar_token`, the fields the label file is named by
  (`scene_<scene_token>/occupancy/<lidar_token>.npy`);
* the grid frame. The models place their queries and the ground-truth grid in one frame and project from it
  with `lidar2img @ ego2lidar` (OPS) or `ego2img @ inverse(ego2occ)` with `ego2img = lidar2img @ ego2lidar`
  (OPUS-V2: loaders/pipelines/opusv2_transforms.py). For Occ3D that frame is the key frame's ego frame. The
  nuScenes-Occupancy grids are in the key frame's LiDAR frame (`label_frame = 'lidar'`), so here `ego2lidar`
  is the identity: grid frame = LiDAR frame, and every camera matrix projects from it directly. The OPUS-V2
  authors do the same with `ego2occ = ego2lidar` (their loaders/nuscenes_occupancy_dataset.py), which gives
  the same `occ2img = lidar2img` up to float32 rounding. The vehicle's LiDAR -> ego transform stays in
  `lidar2ego_translation` / `lidar2ego_rotation` (the camera history is composed from those, not from
  `ego2lidar`).

The camera history, sample order and test-mode behaviour are NuScenesOccDataset's. Importing this module
registers the dataset and its pipeline steps (configs name it in `custom_imports`).
"""
import numpy as np
from mmdet.datasets import DATASETS

from core.benchmarks import BenchmarkError
from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY

from .nuscenes_occ_dataset import NuScenesOccDataset
from .pipelines import occupancy_masks  # noqa: F401  (registers FullCameraMask)

__all__ = ['NuScenesOccupancyDataset']

# the info fields the release's label files are named by
LABEL_TOKEN_KEYS = ('scene_token', 'lidar_token')


@DATASETS.register_module()
class NuScenesOccupancyDataset(NuScenesOccDataset):
    """NuScenesOccDataset for a benchmark whose grids live in the LiDAR frame (nuScenes-Occupancy).

    Args: those of NuScenesOccDataset; `benchmark` defaults to 'nuscenes-occupancy' and `occ_root` to
    `<data_root>/occupancy` (the description's `label_root_dir`).
    """

    CLASSES = NUSCENES_OCCUPANCY.class_names

    def __init__(self, ann_file, pipeline=None, data_root=None, occ_root=None, test_mode=False, load_interval=1,
                 into_past=150, benchmark=NUSCENES_OCCUPANCY.name):
        super().__init__(ann_file, pipeline=pipeline, data_root=data_root, occ_root=occ_root, test_mode=test_mode,
                         load_interval=load_interval, into_past=into_past, benchmark=benchmark)
        for info in self.data_infos[:1]:
            missing = [k for k in LABEL_TOKEN_KEYS if k not in info]
            if missing:
                raise BenchmarkError(f'{ann_file}: infos lack {missing}, which name the {self.benchmark.title} label '
                                     f'files; regenerate them with `python gen_sweep_info.py --benchmark '
                                     f'{self.benchmark.name} ...`')

    def get_data_info(self, index):
        input_dict = super().get_data_info(index)
        info = self.data_infos[index]
        input_dict.update({k: info[k] for k in LABEL_TOKEN_KEYS})
        if getattr(self.benchmark, 'label_frame', 'ego') == 'lidar':
            input_dict['ego2lidar'] = np.eye(4)   # the grid frame is the LiDAR frame (module docstring)
        return input_dict
