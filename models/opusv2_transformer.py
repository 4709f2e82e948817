"""The OPUS-V2 decoder: the V1 decoder (models/ops_transformer.py) with three changes (docs/opusv2.md).

1. Consistent point sampling: sampling point = centre + prototype * scale + offset, with a learned
   `sampling_prototype` (`nn.Embedding(G*np, 3)`, N(0, 1) init) shared by all queries and frames; the
   scale of a single-point query is 1 m (V1: 0, which collapsed all samples onto the point).
2. The class branch predicts `num_pt_channels` (32) point features per output point instead of class
   logits (no prior-probability bias init), and only runs in training or in the last layer: the CPD
   modules of the head (models/densifier.py) turn them into voxel logits.
3. Projection: queries live in the occupancy frame; `occ2img = ego2img @ inverse(ego2occ)` per view
   (`ego2occ` is the BDA flip in training, the identity at test), instead of V1's `lidar2img @ ego2lidar`.

Everything else (position encoder, adaptive mixing, scale-adaptive self-attention, FFN, regression
and refinement, `sampling_4d`, nan_to_num of the outputs) is the V1 code.

Symbol legend:
    B  batch size;  Q  queries;  P_in / P_out  points per query into / out of a layer
    T  frames (8);  N  cameras (6);  G  groups (4);  np  sampling points per group and frame
    C  query channels (256);  C_p  point-feature channels (32)
Points are normalised to pc_range inside the decoder; sampling points and offsets are metres in the
occupancy frame.
"""
import torch
import torch.nn as nn
from mmdet.models.utils.builder import TRANSFORMER

from .ops_transformer import (
    DECODER_LAYERS,
    OPSSampling,
    OPSTransformer,
    OPSTransformerDecoder,
    OPSTransformerDecoderLayer,
    decode_points,
)

__all__ = ['OPUSV2Sampling', 'OPUSV2TransformerDecoderLayer', 'OPUSV2TransformerDecoder', 'OPUSV2Transformer']


class OPUSV2Sampling(OPSSampling):
    """V1 sampling with a learned prototype: points = centre + prototype * scale + offset (metres)."""

    def __init__(self, embed_dims=256, num_frames=8, num_views=6, num_groups=4, num_points=4, num_levels=4,
                 pc_range=None, init_cfg=None):
        super().__init__(embed_dims=embed_dims, num_frames=num_frames, num_views=num_views, num_groups=num_groups,
                         num_points=num_points, num_levels=num_levels, pc_range=pc_range, init_cfg=init_cfg)
        self.sampling_prototype = nn.Embedding(num_groups * num_points, 3)

    @torch.no_grad()
    def init_weights(self):
        super().init_weights()          # offsets: weight 0, bias U(-0.5, 0.5) as V1
        nn.init.normal_(self.sampling_prototype.weight, mean=0.0, std=1.0)

    def sampling_points(self, query_points, query_feat):
        """`[B, Q, P_in, 3]` normalised, `[B, Q, C]` -> `[B, Q, G*np, 3]` metres (row g*np + p pairs with
        prototype row g*np + p). Centre = mean of the query's points, scale = their unbiased std per axis,
        or (point, 1 m) for a single-point query."""
        B, Q, P_in, _ = query_points.shape
        points = decode_points(query_points, self.pc_range)
        if P_in == 1:
            centre, scale = points[:, :, 0], torch.ones_like(points[:, :, 0])
        else:
            centre, scale = points.mean(2), points.std(2, unbiased=True)
        offset = self.sampling_offset(query_feat).view(B, Q, self.num_groups * self.num_points, 3)
        return centre[:, :, None] + self.sampling_prototype.weight * scale[:, :, None] + offset


@DECODER_LAYERS.register_module()
class OPUSV2TransformerDecoderLayer(OPSTransformerDecoderLayer):
    """V1 layer with V2 sampling; its `num_classes` argument is the point-feature width C_p.

    `cls_head` returns `[B, Q, P_out, C_p]` point features in training or for the last layer
    (`last_layer`, set by the decoder), None otherwise (eval mode only needs the last layer's).
    """
    sampling_class = OPUSV2Sampling
    last_layer = False

    @torch.no_grad()
    def init_weights(self):
        # as V1 but without the -4.595 prior bias: the point-feature branch keeps PyTorch's default init
        self.sampling.init_weights()
        self.mixing.init_weights()
        self.self_attn.init_weights()

    def cls_head(self, query_feat):
        if self.training or self.last_layer:
            return super().cls_head(query_feat)
        return None


class OPUSV2TransformerDecoder(OPSTransformerDecoder):
    """V1 decoder of V2 layers; projection from the occupancy frame (`ego2img`, `ego2occ` metas)."""
    layer_class = OPUSV2TransformerDecoderLayer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder_layers[-1].last_layer = True

    def _occ2img(self, img_metas, device):
        """`[B, T*N, 4, 4]` float32: occupancy frame -> pixels = ego2img @ inverse(ego2occ), per view."""
        ego2img, ego2occ = self._meta_matrices(
            img_metas, 'ego2img', 'ego2occ', device,
            hint='the OPUS-V2 pipelines add ego2img and ego2occ (ComposeEgo2Img, RandomTransformOcc) and collect '
                 'them, docs/opusv2.md')
        occ2ego = torch.inverse(ego2occ)
        return torch.matmul(ego2img, occ2ego[:, None])


@TRANSFORMER.register_module()
class OPUSV2Transformer(OPSTransformer):
    """Container of the OPUS-V2 decoder (config type 'OPUSV2Transformer'; state-dict prefix `decoder.`).

    Args as `OPSTransformer`, except `num_pt_channels` (C_p = 32 point-feature channels per point)
    replaces `num_classes`, and the defaults are V2-T's: 5 layers, num_refines (8, 16, 32, 64, 128).

    `forward` returns (point features, points): lists over layers of `[B, Q, P_i, C_p]` (None in eval
    mode except for the last layer) and `[B, Q, P_i, 3]` normalised points.
    """
    decoder_class = OPUSV2TransformerDecoder

    def __init__(self, embed_dims=256, num_frames=8, num_points=4, num_layers=5, num_levels=4, num_pt_channels=32,
                 num_refines=(8, 16, 32, 64, 128), scales=(0.5,), pc_range=None, num_views=6, num_groups=4,
                 num_heads=8, ffn_dims=512, mixing_out_points=32, attn_drop=0.1, ffn_drop=0.1, with_cp=True,
                 layer_cfg=None, init_cfg=None):
        # the layers' class-branch width is the point-feature width (V1's num_classes slot)
        super().__init__(embed_dims=embed_dims, num_frames=num_frames, num_points=num_points, num_layers=num_layers,
                         num_levels=num_levels, num_classes=num_pt_channels, num_refines=num_refines, scales=scales,
                         pc_range=pc_range, num_views=num_views, num_groups=num_groups, num_heads=num_heads,
                         ffn_dims=ffn_dims, mixing_out_points=mixing_out_points, attn_drop=attn_drop,
                         ffn_drop=ffn_drop, with_cp=with_cp, layer_cfg=layer_cfg, init_cfg=init_cfg)
        self.num_pt_channels = int(num_pt_channels)
