"""Masks a benchmark's label files do not carry.

* `FullCameraMask`: `mask_camera` = True on every voxel, for benchmarks without a camera-visibility mask
  (nuScenes-Occupancy) and models whose training step requires one (OPS: the mask only weights the point
  loss of invisible ground-truth voxels). OPUS-V2 does the same inside the model when no mask is collected
  (models/opusv2.py, as the authors' OPUSV2.forward_train: `torch.ones_like(voxel_semantics)`), so an OPS
  trained with it treats every voxel as the OPUS-V2 authors' nuScenes-Occupancy training does.
"""
import numpy as np
from mmdet.datasets.builder import PIPELINES

__all__ = ['FullCameraMask']


@PIPELINES.register_module()
class FullCameraMask:
    """Adds `mask_camera`: bool, all True, the shape of `voxel_semantics` (place it after the label loader)."""

    def __call__(self, results):
        if 'voxel_semantics' not in results:
            raise KeyError('FullCameraMask needs voxel_semantics in the results: place it after LoadOccFromFile')
        if 'mask_camera' in results:
            raise ValueError('FullCameraMask: the labels already carry a mask_camera; remove FullCameraMask from the '
                             'pipeline (it would replace the real mask)')
        results['mask_camera'] = np.ones(np.shape(results['voxel_semantics']), dtype=bool)
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}()'
