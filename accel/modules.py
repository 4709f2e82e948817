"""Fast modules: subclasses of the faithful method's modules that compute the same function with other
kernels (accel/kernels.py, accel/fused_attention.py) or folded weights (accel/folded_backbone.py), and the
matrix-product precision scopes.

`FAST_MODULES` maps a faithful class to its fast subclass; `accelerate` (accel/accelerate.py) swaps the
class of every module whose type is a key (exactly: a subclass of a faithful class keeps its own code).
The swap keeps the module's parameters and buffers; a fast module differs from its parent by float32
rounding only (tests/accel/test_fast_modules.py compares each with its parent).
"""
import torch
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet

from models.ops_head import OPSHead
from models.ops_transformer import AdaptiveMixing, OPSSampling, OPSSelfAttention
from models.opus_fusion_head import OPUSV1FusionHead
from models.opusv2_transformer import OPUSV2Sampling

from .folded_backbone import FoldedBasicBlock, FoldedBottleneck, FoldedResNet
from .furthest_point import fast_furthest_point_sample
from .fused_attention import MIN_HEAD_DIMS, fused_biased_attention, sdpa_biased_attention
from .kernels import MIXING_KERNEL, SAMPLING_GEOMETRY, compiled_closing
from .precision import matmul_precision

__all__ = ['FastSamplingLocations', 'FastOPSSampling', 'FastOPUSV2Sampling', 'FastAdaptiveMixing',
           'FastSelfAttention', 'FastOPSHead', 'FastOPUSV1FusionHead', 'FAST_MODULES', 'MatmulPrecisionScope',
           'precision_scoped']


class FastSamplingLocations:
    """Mixin for a sampling module: the projection without per-point matrix copies (training and test);
    without autograd on CUDA, the projection and view choice as one compiled kernel."""

    def locations(self, sample_points, weights, occ2img, image_h, image_w):
        args = (sample_points, weights, occ2img, image_h, image_w, self.num_views, 1e-5)
        return SAMPLING_GEOMETRY.or_eager(occ2img.is_cuda and not torch.is_grad_enabled(), *args)


class FastOPSSampling(FastSamplingLocations, OPSSampling):
    """`OPSSampling` with the fast sampling locations."""


class FastOPUSV2Sampling(FastSamplingLocations, OPUSV2Sampling):
    """`OPUSV2Sampling` with the fast sampling locations."""


class FastAdaptiveMixing(AdaptiveMixing):
    """`AdaptiveMixing` as one compiled kernel without autograd on CUDA (float32 results differ by rounding)."""

    def forward(self, x, query):
        return MIXING_KERNEL.or_eager(x.is_cuda and not torch.is_grad_enabled(), *self.mixing_args(x, query))


class FastSelfAttention(OPSSelfAttention):
    """`OPSSelfAttention` on CUDA: in eval, with heads of at least MIN_HEAD_DIMS channels, the bias computed
    inside one fused kernel instead of a `[B*H, Q, Q]` mask; in training the mask through SDPA (softmax,
    dropout and value product fused; the dropout draws other random numbers). Elsewhere the faithful path."""

    def forward(self, query_points, query_feat):
        if not query_feat.is_cuda:
            return super().forward(query_points, query_feat)
        centres, tau = self.bias_terms(query_points, query_feat)
        if self.training:
            return sdpa_biased_attention(self.attention, query_feat, self.attention_bias(centres, tau))
        if query_feat.shape[-1] // self.num_heads >= MIN_HEAD_DIMS:
            out = fused_biased_attention(self.attention.attn, query_feat, centres, tau)
            if out is not None:
                return out
        attn_mask = self.attention_bias(centres, tau)
        return self.attention(query_feat, attn_mask=attn_mask.flatten(0, 1))


class FastOPSHead(OPSHead):
    """`OPSHead` whose post-processing closing is one compiled kernel on CUDA (the same voxels)."""
    closing = staticmethod(compiled_closing)


class FastOPUSV1FusionHead(OPUSV1FusionHead):
    """`OPUSV1FusionHead` with `FastOPSHead`'s closing and the furthest-point sampling of its initial points as one
    Triton kernel on CUDA (accel/furthest_point.py; the same indices)."""
    closing = staticmethod(compiled_closing)
    point_sampler = staticmethod(fast_furthest_point_sample)


FAST_MODULES = {
    OPSSampling: FastOPSSampling,
    OPUSV2Sampling: FastOPUSV2Sampling,
    AdaptiveMixing: FastAdaptiveMixing,
    OPSSelfAttention: FastSelfAttention,
    OPSHead: FastOPSHead,
    OPUSV1FusionHead: FastOPUSV1FusionHead,
    ResNet: FoldedResNet,            # batch norms folded into the convolutions in eval (accel/folded_backbone.py)
    Bottleneck: FoldedBottleneck,
    BasicBlock: FoldedBasicBlock,
}


class MatmulPrecisionScope:
    """Mixin: the module's forward under the matrix-product precision `matmul_precisions` names for the
    phase ('train' or 'test', from `self.training`), restored after (accel/precision.py)."""
    matmul_precisions = {}

    def forward(self, *args, **kwargs):
        with matmul_precision(self.matmul_precisions.get('train' if self.training else 'test')):
            return super().forward(*args, **kwargs)


_SCOPED = {}


def precision_scoped(module, precisions):
    """Give `module` the precision scope `precisions` ({phase: precision}): its class becomes a subclass of
    its own with `MatmulPrecisionScope` (one per class, cached); returns the module."""
    cls = type(module)
    if issubclass(cls, MatmulPrecisionScope):
        raise ValueError(f'{cls.__name__} already has a precision scope')
    if cls not in _SCOPED:
        _SCOPED[cls] = type(cls.__name__, (MatmulPrecisionScope, cls), {'__module__': cls.__module__})
    module.__class__ = _SCOPED[cls]
    module.matmul_precisions = dict(precisions)
    return module
