"""Formatting: stack the images into one tensor and collect the keys the model takes
(docs/architecture.md, "Interfaces")."""
import numpy as np
import torch
from mmcv.parallel import DataContainer as DC
from mmdet.datasets.builder import PIPELINES

DEFAULT_META_KEYS = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp', 'ego2lidar')


@PIPELINES.register_module()
class DefaultFormatBundle3D:
    """`img` (list of [H, W, 3]) -> DataContainer(stack=True) of a [T*N, 3, H, W] tensor (dtype kept: uint8).

    The occupancy arrays (`voxel_semantics`, `mask_camera`, `mask_lidar`) stay numpy arrays; mmcv's
    collate turns them into [B, 200, 200, 16] tensors. No arguments: the original's `class_names`,
    `with_gt` and `with_label` format 3D-box targets, which this project does not have.
    """

    def __call__(self, results):
        if 'img' in results:
            imgs = results['img']
            if isinstance(imgs, list):
                shapes = {img.shape for img in imgs}
                if len(shapes) != 1:
                    raise ValueError(f'DefaultFormatBundle3D: images of different shapes {sorted(shapes)} cannot be '
                                     f'stacked; put RandomTransformImage (same final_dim for all) before it')
                imgs = np.stack(imgs, axis=0)
            else:
                imgs = imgs[None] if imgs.ndim == 3 else imgs
            imgs = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))
            results['img'] = DC(torch.from_numpy(imgs), stack=True)
        if 'points' in results:   # [N, D] per sample, N differs: a list in the batch (OPUS-Fusion)
            results['points'] = DC(torch.from_numpy(np.ascontiguousarray(results['points'], dtype=np.float32)),
                                   stack=False)
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}()'


@PIPELINES.register_module()
class Collect3D:
    """Keep `keys` and pack the `meta_keys` present in the results into `img_metas` (cpu-only DataContainer)."""

    def __init__(self, keys, meta_keys=DEFAULT_META_KEYS):
        self.keys = list(keys)
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results):
        missing = [k for k in self.keys if k not in results]
        if missing:
            raise KeyError(f'Collect3D: key(s) {missing} are not in the results (available: {sorted(results)}); '
                           f'add the step that produces them (e.g. LoadOccFromFile for voxel_semantics/mask_camera)')
        meta = {k: results[k] for k in self.meta_keys if k in results}
        data = dict(img_metas=DC(meta, cpu_only=True))
        for k in self.keys:
            data[k] = results[k]
        return data

    def __repr__(self):
        return f'{self.__class__.__name__}(keys={self.keys}, meta_keys={self.meta_keys})'
