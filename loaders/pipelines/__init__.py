"""Data pipeline steps, registered in mmdet's PIPELINES (docs/data.md, "2. Dataset and pipeline")."""
from .formatting import Collect3D, DefaultFormatBundle3D
from .gpu_decode import (
                         DeferredRandomTransformImage,
                         JpegFormatBundle3D,
                         LoadMultiViewJpegFromFiles,
                         LoadMultiViewJpegFromMultiSweeps,
                         gpu_decode_pipeline,
)
from .loading import LoadMultiViewImageFromFiles, LoadMultiViewImageFromMultiSweeps, LoadOccFromFile, compose_lidar2img
from .opusv2_transforms import ComposeEgo2Img, RandomTransformOcc
from .points import LiDARToOccSpace, LoadPointsFromFile, LoadPointsFromMultiSweeps, PointsRangeFilter, lidar_input_dict
from .test_time_aug import MultiScaleFlipAug3D
from .transforms import RandomTransformImage

__all__ = ['Collect3D', 'ComposeEgo2Img', 'DefaultFormatBundle3D', 'LoadMultiViewImageFromFiles',
           'LoadMultiViewImageFromMultiSweeps', 'LoadOccFromFile', 'MultiScaleFlipAug3D', 'RandomTransformImage',
           'RandomTransformOcc', 'compose_lidar2img',
           # GPU decode path (loaders/pipelines/gpu_decode.py)
           'DeferredRandomTransformImage', 'JpegFormatBundle3D', 'LoadMultiViewJpegFromFiles',
           'LoadMultiViewJpegFromMultiSweeps', 'gpu_decode_pipeline',
           # LiDAR points (OPUS-Fusion, loaders/pipelines/points.py)
           'LiDARToOccSpace', 'LoadPointsFromFile', 'LoadPointsFromMultiSweeps', 'PointsRangeFilter',
           'lidar_input_dict']
