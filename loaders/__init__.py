"""Data side of OPS: the datasets (Occ3D-nuScenes, nuScenes-Occupancy, Occ3D-Waymo), their pipeline steps
and loaders (registered in mmdet's DATASETS / PIPELINES on import). The benchmark protocol a dataset uses
(cameras, classes, label files) is a description of core/benchmarks/, named by the dataset and the label
loader; the metrics live in evaluation/."""
from . import pipelines  # noqa: F401
from .builder import build_dataloader, build_train_dataloader, per_gpu_batch_size
from .nuscenes_occ_dataset import NuScenesOccDataset
from .nuscenes_occupancy_dataset import NuScenesOccupancyDataset
from .waymo_occ_dataset import WaymoOccDataset

__all__ = ['NuScenesOccDataset', 'NuScenesOccupancyDataset', 'WaymoOccDataset', 'build_dataloader',
           'build_train_dataloader', 'per_gpu_batch_size']
