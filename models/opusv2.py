"""The OPUS-V2 detector: V1's `OPS` (image branch, GPU photometric distortion, online/offline test,
feature cache) with the V2 head (docs/opusv2.md).

Batch format as V1 (docs/architecture.md) except the projection metas: `img_metas` carry `ego2img`
(T*N float32 [4, 4]: key-frame ego -> pixels of the augmented image) and `ego2occ` ([4, 4]: ego ->
occupancy frame, the BDA flip in training, identity at test) instead of `lidar2img`; `voxel_semantics`
and `mask_camera` are in the occupancy frame (flipped with it).
"""
import torch
from mmdet.models import DETECTORS

from .ops import OPS

__all__ = ['OPUSV2']


@DETECTORS.register_module()
class OPUSV2(OPS):
    """OPUS-V2 detector (config type 'OPUSV2'; same arguments and state-dict prefixes as `OPS`).

    Its test steps are not graph-capturable as written: the CPD module's sparse voxel sets have data-dependent
    sizes. The execution policies' heads compute the test step's CPD module on the dense grid instead, with
    static shapes, and replay that step from a CUDA graph (accel/dense_cpd.py). The training decoder has static
    shapes (the CPD modules run after it, `OPUSV2Head.after_decoder`), so its forward and backward are replayed
    from graphs as V1's.
    """
    PROJECTION_KEY = 'ego2img'
    GRAPH_CAPTURABLE = frozenset({'train_decoder'})

    def forward_train(self, img, img_metas, voxel_semantics=None, mask_camera=None, **kwargs):
        """As `OPS.forward_train`; without `mask_camera` every voxel counts as camera-visible (as the original)."""
        if mask_camera is None and voxel_semantics is not None:
            mask_camera = torch.ones(torch.as_tensor(voxel_semantics).shape, dtype=torch.bool)
        return super().forward_train(img, img_metas, voxel_semantics=voxel_semantics, mask_camera=mask_camera,
                                     **kwargs)
