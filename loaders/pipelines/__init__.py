"""Data pipeline steps, registered in mmdet's PIPELINES (spec 2.4)."""
from .formatting import Collect3D, DefaultFormatBundle3D
from .loading import (CAMERA_TYPES, LoadMultiViewImageFromFiles, LoadMultiViewImageFromMultiSweeps, LoadOccFromFile,
                      compose_lidar2img)
from .test_time_aug import MultiScaleFlipAug3D
from .transforms import RandomTransformImage

__all__ = ['CAMERA_TYPES', 'Collect3D', 'DefaultFormatBundle3D', 'LoadMultiViewImageFromFiles',
           'LoadMultiViewImageFromMultiSweeps', 'LoadOccFromFile', 'MultiScaleFlipAug3D', 'RandomTransformImage',
           'compose_lidar2img']
