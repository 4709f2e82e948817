"""The test-time wrapper of the configs: one augmentation, results wrapped in one-element lists."""
import copy

from mmdet.datasets.builder import PIPELINES
from mmdet.datasets.pipelines import Compose


@PIPELINES.register_module()
class MultiScaleFlipAug3D:
    """Run `transforms` once and wrap every output value in a one-element list.

    That is mmdet3d's test-time format for a single augmentation (one scale, no flip), which the
    model's `forward_test` unpacks. The original's arguments `img_scale`, `pts_scale_ratio`, `flip`
    and the point-cloud flips configure augmentations OPS does not do (the test resize is
    RandomTransformImage's); they are gone, and passing one is an error naming it.
    """

    def __init__(self, transforms):
        self.transforms = Compose(transforms)

    def __call__(self, results):
        data = self.transforms(copy.copy(results))
        return {key: [value] for key, value in data.items()}

    def __repr__(self):
        return f'{self.__class__.__name__}(transforms={self.transforms})'
