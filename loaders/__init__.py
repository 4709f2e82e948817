"""Data side of OPS: the nuScenes occupancy dataset, its pipeline steps and loaders (registered in
mmdet's DATASETS / PIPELINES on import)."""
from . import pipelines  # noqa: F401
from .builder import build_dataloader, per_gpu_batch_size
from .nuscenes_occ_dataset import OCC_CLASS_NAMES, NuScenesOccDataset

__all__ = ['NuScenesOccDataset', 'OCC_CLASS_NAMES', 'build_dataloader', 'per_gpu_batch_size']
