"""The OPUS-Fusion decoder: V1's decoder (models/ops_transformer.py) whose layers also read the LiDAR BEV map
(docs/method.md, "OPUS-Fusion: head and decoder").

What differs from V1, per layer:
1. Sampling (`OPUSV1FusionSampling`): V1's G*np sampling points (centre + offset * spread) are read in the T x N
   camera views as V1 does, and the same points once more in the LiDAR BEV map (`sample_bev_features`):
   `[B, Q, G, T*np, C_g]` and `[B, Q, G, np, C_g]`.
2. Mixing: the two are concatenated along the points, `[B, Q, G, (T+1)*np, C_g]` (frames first, the map last),
   and mixed by an adaptive mixing named `img_pts_mixing` (the authors' name, so the checkpoints load) that
   keeps the (T+1)*np points (`out_points = in_points`; V1 mixes T*np into 32).
3. Projection: the queries live in the occupancy frame; `occ2img = ego2img @ inverse(ego2occ)` per view (as
   OPUS-V2) and `occ2points = ego2points @ inverse(ego2occ)` for the map (the authors' `occ2lidar`, from their
   `ego2lidar` meta, which their `LiDARToOccSpace` overwrites with `ego2occ`; loaders/pipelines/points.py keeps
   it as `ego2points`). For Occ3D `ego2occ` and `ego2points` are the identity (ego = occupancy = points frame), so
   occ2img = ego2img and occ2points = I.

Everything else (position encoder, self-attention, FFN, heads, refinement, nan_to_num, detached points) is V1's.

Symbols (docs/method.md, "Symbols and frames"): B batch, Q queries, T frames, N views, G groups, np sampling points
per group and frame (`P` in the code), L FPN levels, C channels, C_g = C / G, (H_b, W_b) the BEV map.
"""
import numpy as np
import torch
from mmdet.models.utils.builder import TRANSFORMER

from .ops_sampling import check_sampling_shapes, sample_features
from .ops_transformer import (
    DECODER_LAYERS,
    AdaptiveMixing,
    OPSSampling,
    OPSTransformer,
    OPSTransformerDecoder,
    OPSTransformerDecoderLayer,
)
from .opus_fusion_sampling import sample_bev_features

__all__ = ['OPUSV1FusionSampling', 'OPUSV1FusionDecoderLayer', 'OPUSV1FusionDecoder', 'OPUSV1FusionTransformer']

META_HINT = ('the OPUS-Fusion pipelines add ego2img and ego2occ (ComposeEgo2Img) and ego2points (LiDARToOccSpace) '
             'and collect them, configs/_base_/opus-fusion_r50_704x256_8f.py')


class OPUSV1FusionSampling(OPSSampling):
    """V1's consistent point sampling, read in the camera views and in the LiDAR BEV map.

    Parameters as V1 (`sampling_offset`, `scale_weights`): the map read has no weights of its own.
    """

    def forward(self, query_points, query_feat, mlvl_feats, bev_feats, occ2img, occ2points, image_h, image_w):
        """
        Args:
            query_points (Tensor): `[B, Q, P_in, 3]` normalised, detached.
            query_feat (Tensor): `[B, Q, C]`.
            mlvl_feats (list[Tensor]): L x `[B*T*G, N, H_l, W_l, C_g]` channel-last.
            bev_feats (Tensor): `[B*G, C_g, H_b, W_b]` (the decoder's `bev_sampling_layout`).
            occ2img (Tensor): `[B, T*N, 4, 4]`; occ2points (Tensor): `[B, 4, 4]`.
            image_h, image_w (int): augmented image size (pixels).
        Returns:
            tuple(Tensor, Tensor): image features `[B, Q, G, T*np, C_g]` (V1's `sampling_4d`) and map features
            `[B, Q, G, np, C_g]` at the same points.
        """
        B, Q = query_points.shape[:2]
        T, G, P, L = self.num_frames, self.num_groups, self.num_points, self.num_levels
        points = self.sampling_points(query_points, query_feat).view(B, Q, G, P, 3)    # metres, occupancy frame
        weights = self.scale_weights(query_feat).view(B, Q, G, 1, P, L).softmax(-1).expand(B, Q, G, T, P, L)
        frame_points = points[:, :, None].expand(B, Q, T, G, P, 3)
        check_sampling_shapes(frame_points, weights, occ2img, self.num_views)
        loc, level_weights = self.locations(frame_points, weights, occ2img, image_h, image_w)
        image = sample_features(mlvl_feats, loc, level_weights, B, T, G, op=self.sampling_op)
        return image, sample_bev_features(points, bev_feats, occ2points, self.pc_range)


@DECODER_LAYERS.register_module()
class OPUSV1FusionDecoderLayer(OPSTransformerDecoderLayer):
    """V1's decoder layer reading the images and the LiDAR map, mixing their (T+1)*np points together.

    Args: V1's (`OPSTransformerDecoderLayer`); `mixing_out_points` must stay None: the mixing keeps its
    (T+1)*np points, as the authors' `img_pts_mixing` (built without `out_points`).
    State-dict keys: V1's, with `img_pts_mixing.*` (`[G*(C_g^2 + ((T+1)*np)^2), C]` generator,
    `[C, G*(T+1)*np*C_g]` projection) instead of `mixing.*`.
    """
    sampling_class = OPUSV1FusionSampling

    def __init__(self, embed_dims=256, num_frames=8, num_groups=4, num_points=4, mixing_out_points=None, **kwargs):
        if mixing_out_points is not None:
            raise ValueError(f'OPUS-Fusion: mixing_out_points={mixing_out_points} is not a setting of its decoder: '
                             f'the mixing keeps its (num_frames + 1) * num_points points; remove it from the '
                             f'transformer config')
        super().__init__(embed_dims=embed_dims, num_frames=num_frames, num_groups=num_groups, num_points=num_points,
                         mixing_out_points=None, **kwargs)
        # V1's T*np-point mixing is replaced (`mixing` below reads the new one, so V1's init and accel's swaps
        # apply to it)
        del self.mixing
        self.img_pts_mixing = AdaptiveMixing(in_dim=embed_dims // num_groups, in_points=num_points * (num_frames + 1),
                                             n_groups=num_groups, query_dim=embed_dims)

    @property
    def mixing(self):
        """The layer's adaptive mixing under V1's name (its parameters are `img_pts_mixing.*`)."""
        return self.img_pts_mixing

    def forward(self, query_points, query_feat, mlvl_feats, bev_feats, occ2img, occ2points, image_h, image_w):
        """
        Args: V1's (`OPSTransformerDecoderLayer.forward`) plus `bev_feats` `[B*G, C_g, H_b, W_b]` and `occ2points`
        `[B, 4, 4]` (`OPUSV1FusionSampling.forward`).
        Returns:
            tuple: query_feat `[B, Q, C]`, cls logits `[B, Q, P_out, num_classes]`, new points `[B, Q, P_out, 3]`
            normalised.
        """
        B, Q, P_in, _ = query_points.shape
        if P_in != self.in_points:
            raise ValueError(f'decoder layer expects {self.in_points} points per query, got {P_in}')
        query_feat = query_feat + self.position_encoder(query_points.flatten(2))
        image, bev = self._cp(self.sampling, query_points, query_feat, mlvl_feats, bev_feats, occ2img, occ2points,
                              image_h, image_w)
        sampled = torch.cat([image, bev], dim=-2)                                     # [B, Q, G, (T+1)*np, C_g]
        query_feat = self.norm1(self._cp(self.img_pts_mixing, sampled, query_feat))
        query_feat = self.norm2(self._cp(self.self_attn, query_points, query_feat))
        query_feat = self.norm3(self.ffn(query_feat))
        cls_score = self.cls_head(query_feat)
        offsets = self.reg_branch(query_feat).reshape(B, Q, self.out_points, 3) * self.scale
        return query_feat, cls_score, self.refine_points(query_points, offsets)


class OPUSV1FusionDecoder(OPSTransformerDecoder):
    """V1's decoder of Fusion layers; the camera and LiDAR geometry from the `ego2img`, `ego2occ`, `ego2points`
    metas."""
    layer_class = OPUSV1FusionDecoderLayer

    def _frame_matrices(self, img_metas, key, device):
        """`[B, 4, 4]` float32 of the meta `key` (one matrix per sample)."""
        mats = []
        for i, meta in enumerate(img_metas):
            if key not in meta:
                raise KeyError(f'img_metas[{i}] has no "{key}" ({META_HINT})')
            mats.append(np.asarray(meta[key], dtype=np.float32).reshape(4, 4))
        return torch.from_numpy(np.stack(mats)).to(device)

    def _occ2img(self, img_metas, device):
        """`[B, T*N, 4, 4]` float32: occupancy frame -> pixels = ego2img @ inverse(ego2occ), per view."""
        ego2img, ego2occ = self._meta_matrices(img_metas, 'ego2img', 'ego2occ', device, hint=META_HINT)
        return torch.matmul(ego2img, torch.inverse(ego2occ)[:, None])

    def points_geometry(self, img_metas, device):
        """`[B, 4, 4]` float32: occupancy frame -> the LiDAR points' frame = ego2points @ inverse(ego2occ) (the
        authors' `occ2lidar = ego2lidar @ occ2ego`)."""
        occ2ego = torch.inverse(self._frame_matrices(img_metas, 'ego2occ', device))
        return torch.matmul(self._frame_matrices(img_metas, 'ego2points', device), occ2ego)

    def bev_sampling_layout(self, bev_feats):
        """The LiDAR map `[B, C, H_b, W_b]` -> `[B*G, C_g, H_b, W_b]`: batch b*G + g holds channels g*C_g.. (the
        authors' grouping, channel-first for grid_sample)."""
        if bev_feats.dim() != 4 or bev_feats.shape[1] != self.embed_dims:
            raise ValueError(f'LiDAR BEV features have shape {tuple(bev_feats.shape)}, expected [B, C={self.embed_dims}'
                             f', H, W] (the LiDAR branch\'s pts_feat_dim must equal the decoder\'s embed_dims)')
        B, C, H, W = bev_feats.shape
        return bev_feats.reshape(B * self.num_groups, C // self.num_groups, H, W)

    def forward(self, query_points, query_feat, mlvl_feats, bev_feats, img_metas):
        """
        Args:
            query_points (Tensor): `[B, Q, 1, 3]` initial points, normalised.
            query_feat (Tensor): `[B, Q, C]`.
            mlvl_feats (list[Tensor]): L FPN levels `[B, T*N, C, H_l, W_l]`, frame-major views.
            bev_feats (Tensor): the LiDAR map `[B, C, H_b, W_b]`.
            img_metas (list[dict]): B dicts with `ego2img` (T*N 4x4), `ego2occ`, `ego2points` (4x4), `img_shape`.
        Returns:
            tuple(list[Tensor], list[Tensor]): per layer, logits and points (`run_layers`).
        """
        if len(img_metas) != query_points.shape[0]:
            raise ValueError(f'{len(img_metas)} img_metas for a batch of {query_points.shape[0]}')
        device = query_points.device
        occ2img, (image_h, image_w) = self.image_geometry(img_metas, device)
        return self.run_layers(query_points, query_feat, self.sampling_layout(mlvl_feats),
                               self.bev_sampling_layout(bev_feats), occ2img, self.points_geometry(img_metas, device),
                               image_h, image_w)

    def run_layers(self, query_points, query_feat, feats, bev_feats, occ2img, occ2points, image_h, image_w):
        """The decoder on device tensors (`OPSTransformerDecoder.run_layers` with the LiDAR map).

        feats: L levels `[B*T*G, N, H_l, W_l, C_g]` (`sampling_layout`); bev_feats: `[B*G, C_g, H_b, W_b]`
        (`bev_sampling_layout`); occ2img `[B, T*N, 4, 4]`; occ2points `[B, 4, 4]`.
        """
        self.check_sampling_layout(feats, occ2img)
        return self.iterate_layers(query_points, query_feat, feats, bev_feats, occ2img, occ2points, image_h, image_w)


@TRANSFORMER.register_module()
class OPUSV1FusionTransformer(OPSTransformer):
    """Container of the OPUS-Fusion decoder (config type 'OPUSV1FusionTransformer', the authors' name;
    state-dict prefix `decoder.`).

    Args: `OPSTransformer`'s (the authors' config gives embed_dims, num_frames, num_points, num_layers,
    num_levels, num_classes, num_refines, scales, pc_range); `mixing_out_points` must stay None (the mixing
    keeps its (T+1)*np points).
    """
    decoder_class = OPUSV1FusionDecoder

    def __init__(self, embed_dims=256, num_frames=8, num_points=4, num_layers=6, num_levels=4, num_classes=17,
                 num_refines=(1, 4, 16, 32, 64, 128), scales=(0.5,), pc_range=None, num_views=6, num_groups=4,
                 num_heads=8, ffn_dims=512, mixing_out_points=None, attn_drop=0.1, ffn_drop=0.1, with_cp=True,
                 layer_cfg=None, init_cfg=None):
        super().__init__(embed_dims=embed_dims, num_frames=num_frames, num_points=num_points, num_layers=num_layers,
                         num_levels=num_levels, num_classes=num_classes, num_refines=num_refines, scales=scales,
                         pc_range=pc_range, num_views=num_views, num_groups=num_groups, num_heads=num_heads,
                         ffn_dims=ffn_dims, mixing_out_points=mixing_out_points, attn_drop=attn_drop,
                         ffn_drop=ffn_drop, with_cp=with_cp, layer_cfg=layer_cfg, init_cfg=init_cfg)

    def forward(self, query_points, query_feat, mlvl_feats, bev_feats, img_metas):
        """See `OPUSV1FusionDecoder.forward`: returns (cls_scores, refine_pts), lists over layers."""
        return self.decoder(query_points, query_feat, mlvl_feats, bev_feats, img_metas)

    def points_geometry(self, img_metas, device):
        """See `OPUSV1FusionDecoder.points_geometry`."""
        return self.decoder.points_geometry(img_metas, device)

    def bev_sampling_layout(self, bev_feats):
        """See `OPUSV1FusionDecoder.bev_sampling_layout`."""
        return self.decoder.bev_sampling_layout(bev_feats)

    def run(self, query_points, query_feat, feats, bev_feats, occ2img, occ2points, image_h, image_w):
        """The decoder on device tensors (`OPUSV1FusionDecoder.run_layers`)."""
        return self.decoder.run_layers(query_points, query_feat, feats, bev_feats, occ2img, occ2points, image_h,
                                       image_w)
