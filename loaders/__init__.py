"""Data side of OPS: the nuScenes occupancy dataset, its pipeline steps and loaders (registered in
mmdet's DATASETS / PIPELINES on import). The benchmark protocol it uses (cameras, classes, label files)
is a description of core/benchmarks/, named by the dataset and the label loader; the metrics live in
evaluation/."""
from . import pipelines  # noqa: F401
from .builder import build_dataloader, build_train_dataloader, per_gpu_batch_size
from .nuscenes_occ_dataset import NuScenesOccDataset

__all__ = ['NuScenesOccDataset', 'build_dataloader', 'build_train_dataloader', 'per_gpu_batch_size']
