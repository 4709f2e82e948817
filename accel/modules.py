"""Fused and fast modules: subclasses of the faithful method's modules that compute the same function with other
kernels (accel/kernels.py, accel/fused_attention.py, accel/furthest_point.py, accel/dense_cpd.py) or folded weights
(accel/folded_backbone.py), and the matrix-product precision scopes.

Two tables map a faithful class to the subclass `accelerate` (accel/accelerate.py) swaps in, exactly by
type (a subclass of a faithful class keeps its own code), keeping the module's parameters and buffers:
* `FUSED_MODULES` (the policy's kernels='fused', the faithful preset): other kernels on CUDA, the same
  float32 arithmetic (sums in another order); elsewhere the faithful code, bit for bit;
* `FAST_MODULES` (kernels='fast'): the fused modules, the self-attention in half precision from
  HALF_MIN_QUERIES queries on, and the backbone's batch norms folded into its convolutions in eval.
Each differs from its parent by float32 rounding only, the half-precision attention by fp16's
(tests/accel/test_fast_modules.py compares each with its parent).
"""
import torch
import torch.nn.functional as F
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet

from models.ops_head import OPSHead
from models.ops_transformer import AdaptiveMixing, OPSSampling, OPSSelfAttention, mix_with_generated
from models.opus_fusion_head import OPUSV1FusionHead
from models.opusv2_head import OPUSV2DCDHead, OPUSV2Head
from models.opusv2_transformer import OPUSV2Sampling

from .dense_cpd import dense_cpd, dense_occ_grids, fits_dense_cpd
from .folded_backbone import FoldedBasicBlock, FoldedBottleneck, FoldedResNet
from .furthest_point import fast_furthest_point_sample
from .fused_attention import MIN_HEAD_DIMS, fused_biased_attention, sdpa_biased_attention
from .kernels import MIXING_KERNEL, SAMPLING_GEOMETRY, compiled_closing
from .precision import HALF_MIN_QUERIES, matmul_precision
from .recompute import recompute_when_saved, under_current_settings

__all__ = ['FusedSamplingLocations', 'FusedOPSSampling', 'FusedOPUSV2Sampling', 'FusedAdaptiveMixing',
           'FusedSelfAttention', 'FastSelfAttention', 'FusedOPSHead', 'FusedOPUSV1FusionHead', 'DenseCPDHead',
           'DenseCPDOPUSV2Head', 'DenseCPDOPUSV2DCDHead', 'FUSED_MODULES',
           'FAST_MODULES', 'KERNEL_TABLES', 'MatmulPrecisionScope', 'precision_scoped']


class FusedSamplingLocations:
    """Mixin for a sampling module: on CUDA the projection without per-point matrix copies, and without
    autograd the projection and view choice as one compiled kernel; elsewhere the faithful code."""

    def locations(self, sample_points, weights, occ2img, image_h, image_w):
        if not occ2img.is_cuda:
            return super().locations(sample_points, weights, occ2img, image_h, image_w)
        args = (sample_points, weights, occ2img, image_h, image_w, self.num_views, 1e-5)
        return SAMPLING_GEOMETRY.or_eager(not torch.is_grad_enabled(), *args)


class FusedOPSSampling(FusedSamplingLocations, OPSSampling):
    """`OPSSampling` with the fused sampling locations."""


class FusedOPUSV2Sampling(FusedSamplingLocations, OPUSV2Sampling):
    """`OPUSV2Sampling` with the fused sampling locations."""


class FusedAdaptiveMixing(AdaptiveMixing):
    """`AdaptiveMixing` on CUDA: without autograd as one compiled kernel (float32 results differ by rounding); with
    autograd the faithful computation, its generated weights `[B, Q, G * (C_g * C_g + P_out * P_in)]` computed
    again in the backward instead of kept (accel/recompute.py; the same bits). Elsewhere the faithful code."""

    def forward(self, x, query):
        if x.is_cuda and torch.is_grad_enabled():
            return self.recomputing_forward(x, query)
        return MIXING_KERNEL.or_eager(x.is_cuda, *self.mixing_args(x, query))

    def recomputing_forward(self, x, query):
        """The faithful forward, whose backward computes the generated weights again (any device)."""
        x, query, gen_weight, gen_bias, *rest = self.mixing_args(x, query)
        generate = under_current_settings(lambda: F.linear(query, gen_weight, gen_bias))
        generated = generate()
        with recompute_when_saved(generated, generate):
            return mix_with_generated(x, query, generated, *rest)


class FusedSelfAttention(OPSSelfAttention):
    """`OPSSelfAttention` on CUDA: in eval, with heads of at least MIN_HEAD_DIMS channels, the bias computed
    inside one fused kernel instead of a `[B*H, Q, Q]` mask; in training the mask through SDPA (softmax,
    dropout and value product fused, no weights kept for the backward; the dropout draws other random
    numbers). float32, or half precision from `half_min_queries` queries on (None: never). Elsewhere the
    faithful path."""
    half_min_queries = None

    def forward(self, query_points, query_feat):
        if not query_feat.is_cuda:
            return super().forward(query_points, query_feat)
        centres, tau = self.bias_terms(query_points, query_feat)
        half = self.half_min_queries is not None and query_feat.shape[1] >= self.half_min_queries
        if self.training:
            return sdpa_biased_attention(self.attention, query_feat, lambda: self.attention_bias(centres, tau),
                                         half=half)
        if query_feat.shape[-1] // self.num_heads >= MIN_HEAD_DIMS:
            out = fused_biased_attention(self.attention.attn, query_feat, centres, tau, half=half)
            if out is not None:
                return out
        attn_mask = self.attention_bias(centres, tau)
        return self.attention(query_feat, attn_mask=attn_mask.flatten(0, 1))


class FastSelfAttention(FusedSelfAttention):
    """`FusedSelfAttention` in half precision from HALF_MIN_QUERIES queries on (OPS-L: 4,800)."""
    half_min_queries = HALF_MIN_QUERIES


class FusedOPSHead(OPSHead):
    """`OPSHead` whose post-processing closing is one compiled kernel on CUDA (the same voxels)."""
    closing = staticmethod(compiled_closing)


class DenseCPDHead:
    """Mixin for an OPUS-V2 head: at test time on CUDA, on grids of at most DENSE_CPD_MAX_CELLS cells, the last
    layer's CPD module on the dense grid (accel/dense_cpd.py: the same logits at the same voxels, summed in
    another order), so that the test step has static shapes and is captured in a CUDA graph
    (`static_test_step`); elsewhere the faithful sparse module. Its outputs then hold ``dense_cls_scores``
    `[B, K, X, Y, Z]` and ``dense_active`` `[B, X, Y, Z]` instead of the last layer's voxel logits and voxels."""

    @property
    def static_test_step(self):
        return fits_dense_cpd(self._voxel_num)

    def classify_voxels(self, outs):
        if self.training or not outs['all_refine_pts'][-1].is_cuda or not self.static_test_step:
            return super().classify_voxels(outs)
        pt_feats = self.layer_point_features(outs)
        if any(f is not None for f in pt_feats[:-1]):
            raise RuntimeError(f'{type(self).__name__}: point features of layers before the last at test time')
        logits, active = dense_cpd(self.densifiers[-1], pt_feats[-1], outs['all_refine_pts'][-1])
        none = [None] * len(pt_feats)
        outs.update(all_cls_scores=none, all_voxel_coors=list(none), dense_cls_scores=logits, dense_active=active)
        return outs

    @torch.no_grad()
    def get_occ_grids(self, preds_dicts):
        if 'dense_cls_scores' not in preds_dicts:
            return super().get_occ_grids(preds_dicts)
        return dense_occ_grids(preds_dicts['dense_cls_scores'], preds_dicts['dense_active'],
                               self.test_cfg['score_thr'], self.empty_label)


class DenseCPDOPUSV2Head(DenseCPDHead, OPUSV2Head):
    """`OPUSV2Head` with the dense CPD module at test time (`DenseCPDHead`)."""


class DenseCPDOPUSV2DCDHead(DenseCPDHead, OPUSV2DCDHead):
    """`OPUSV2DCDHead` with the dense CPD module at test time (`DenseCPDHead`)."""


class FusedOPUSV1FusionHead(OPUSV1FusionHead):
    """`OPUSV1FusionHead` with `FusedOPSHead`'s closing and the furthest-point sampling of its initial points as one
    Triton kernel on CUDA (accel/furthest_point.py; the same indices)."""
    closing = staticmethod(compiled_closing)
    point_sampler = staticmethod(fast_furthest_point_sample)


FUSED_MODULES = {
    OPSSampling: FusedOPSSampling,
    OPUSV2Sampling: FusedOPUSV2Sampling,
    AdaptiveMixing: FusedAdaptiveMixing,
    OPSSelfAttention: FusedSelfAttention,
    OPSHead: FusedOPSHead,
    OPUSV1FusionHead: FusedOPUSV1FusionHead,
    OPUSV2Head: DenseCPDOPUSV2Head,
    OPUSV2DCDHead: DenseCPDOPUSV2DCDHead,
}

FAST_MODULES = {
    **FUSED_MODULES,
    OPSSelfAttention: FastSelfAttention,
    ResNet: FoldedResNet,            # batch norms folded into the convolutions in eval (accel/folded_backbone.py)
    Bottleneck: FoldedBottleneck,
    BasicBlock: FoldedBasicBlock,
}

# the execution policy's `kernels` (accel/policy.py) -> the table `accelerate` swaps from
KERNEL_TABLES = {'reference': {}, 'fused': FUSED_MODULES, 'fast': FAST_MODULES}


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
