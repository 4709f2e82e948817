"""The test-time wrapper of the configs: one augmentation, results wrapped in one-element lists."""
import copy

from mmdet.datasets.builder import PIPELINES
from mmdet.datasets.pipelines import Compose


@PIPELINES.register_module()
class MultiScaleFlipAug3D:
    """Run `transforms` once and wrap every output value in a list (mmdet3d's format for one scale, no flip).

    img_scale and pts_scale_ratio are accepted for config compatibility (the resize is done by
    RandomTransformImage); several scales or flipping are not supported and raise.
    """

    def __init__(self, transforms, img_scale=None, pts_scale_ratio=1, flip=False, flip_direction='horizontal',
                 pcd_horizontal_flip=False, pcd_vertical_flip=False):
        if flip or pcd_horizontal_flip or pcd_vertical_flip:
            raise ValueError('MultiScaleFlipAug3D: flip test-time augmentation is not supported; set flip=False')
        if isinstance(img_scale, list) and len(img_scale) > 1:
            raise ValueError(f'MultiScaleFlipAug3D: one image scale only, got {img_scale}')
        if isinstance(pts_scale_ratio, (list, tuple)) and len(pts_scale_ratio) > 1:
            raise ValueError(f'MultiScaleFlipAug3D: one pts_scale_ratio only, got {pts_scale_ratio}')
        self.transforms = Compose(transforms)
        self.img_scale = img_scale
        self.pts_scale_ratio = pts_scale_ratio

    def __call__(self, results):
        data = copy.copy(results)
        data.update(scale=self.img_scale, flip=False, pcd_scale_factor=self.pts_scale_ratio,
                    pcd_horizontal_flip=False, pcd_vertical_flip=False)
        data = self.transforms(data)
        return {key: [value] for key, value in data.items()}

    def __repr__(self):
        return f'{self.__class__.__name__}(transforms={self.transforms}, img_scale={self.img_scale})'
