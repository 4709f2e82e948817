"""The OPS decoder (docs/method.md, "Decoder"): position encoder, consistent point sampling, adaptive mixing,
scale-adaptive self-attention, FFN and coarse-to-fine point refinement, 6 layers.

Symbols (docs/method.md, "Symbols and frames"): B batch, Q queries, T frames, N views per frame,
G channel groups, np sampling points per group and frame (`num_points`; `P` in the code of
`OPSSampling`), L FPN levels, C channels (`embed_dims`), C_g = C / G, H attention heads,
P_in / P_out points per query entering / leaving a layer, BB = B*T*G.

Point conventions: the decoder stores points normalised to `pc_range` (n = (p - min) / (max - min),
no clamping; `encode_points` / `decode_points` of core/geometry.py); sampling offsets, regression
offsets and attention distances are in metres, ego frame of the key frame.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import bias_init_with_prob
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmcv.runner import BaseModule
from mmcv.utils import Registry, build_from_cfg
from mmdet.models.utils.builder import TRANSFORMER
from torch.utils.checkpoint import checkpoint

from core.geometry import decode_points, encode_points

from .csrc.wrapper import msmv_sampling
from .ops_sampling import check_sampling_shapes, sample_features, sampling_locations

# decode_points / encode_points are re-exported: they live in core/geometry.py
__all__ = ['OPSTransformer', 'OPSTransformerDecoder', 'OPSTransformerDecoderLayer', 'OPSSampling',
           'AdaptiveMixing', 'OPSSelfAttention', 'DECODER_LAYERS', 'encode_points', 'decode_points']

# Decoder-layer classes, resolved by the decoder from `layer_cfg=dict(type=...)` (docs/architecture.md,
# "Adding a decoder layer")
DECODER_LAYERS = Registry('decoder layer')


class OPSSampling(BaseModule):
    """Consistent point sampling: G*np points around the query's centroid, scaled by the spread of its points.

    Sampling points (metres) = mean(points) + offset * std(points) (unbiased std per axis; 0 when the
    query has a single point, which collapses all samples onto it), identical for all T frames; level
    weights = softmax over L, identical for all frames.
    """

    def __init__(self, embed_dims=256, num_frames=8, num_views=6, num_groups=4, num_points=4, num_levels=4,
                 pc_range=None, init_cfg=None):
        super().__init__(init_cfg)
        self.num_frames, self.num_views, self.num_groups = num_frames, num_views, num_groups
        self.num_points, self.num_levels, self.pc_range = num_points, num_levels, list(pc_range)
        self.sampling_offset = nn.Linear(embed_dims, num_groups * num_points * 3)
        self.scale_weights = nn.Linear(embed_dims, num_groups * num_points * num_levels)

    @torch.no_grad()
    def init_weights(self):
        nn.init.zeros_(self.sampling_offset.weight)
        nn.init.uniform_(self.sampling_offset.bias, -0.5, 0.5)

    def sampling_points(self, query_points, query_feat):
        """`[B, Q, P_in, 3]` normalised points, `[B, Q, C]` -> `[B, Q, G*np, 3]` sampling points (metres),
        row g*np + p; the same for every frame (OPUS-V2 overrides this method)."""
        B, Q, P_in, _ = query_points.shape
        points = decode_points(query_points, self.pc_range)
        if P_in == 1:
            centre, scale = points[:, :, 0], torch.zeros_like(points[:, :, 0])
        else:
            centre, scale = points.mean(2), points.std(2, unbiased=True)
        offset = self.sampling_offset(query_feat).view(B, Q, self.num_groups * self.num_points, 3)
        return centre[:, :, None] + offset * scale[:, :, None]

    def locations(self, sample_points, weights, occ2img, image_h, image_w):
        """Where the op reads each sampling point, and its level weights (`sampling_locations`; the
        projection eps 1e-5 m as the original)."""
        return sampling_locations(sample_points, weights, occ2img, image_h, image_w, self.num_views, 1e-5)

    # the multi-view sampling op (models/csrc/wrapper.py: the CUDA op for CUDA inputs when built, else the exact
    # PyTorch path); an exporter may set the PyTorch path itself (engine/export.py)
    sampling_op = staticmethod(msmv_sampling)

    def forward(self, query_points, query_feat, mlvl_feats, occ2img, image_h, image_w):
        """
        Args:
            query_points (Tensor): `[B, Q, P_in, 3]` normalised, detached.
            query_feat (Tensor): `[B, Q, C]`.
            mlvl_feats (list[Tensor]): L x `[B*T*G, N, H_l, W_l, C/G]` channel-last.
            occ2img (Tensor): `[B, T*N, 4, 4]`; image_h, image_w: augmented image size (pixels).
        Returns:
            Tensor: `[B, Q, G, T*np, C/G]` (`sampling_4d`).
        """
        B, Q = query_points.shape[:2]
        T, G, P, L = self.num_frames, self.num_groups, self.num_points, self.num_levels
        sample_points = self.sampling_points(query_points, query_feat)        # [B, Q, G*np, 3] metres
        sample_points = sample_points.view(B, Q, 1, G, P, 3).expand(B, Q, T, G, P, 3)
        weights = self.scale_weights(query_feat).view(B, Q, G, 1, P, L).softmax(-1)
        weights = weights.expand(B, Q, G, T, P, L)
        check_sampling_shapes(sample_points, weights, occ2img, self.num_views)
        loc, level_weights = self.locations(sample_points, weights, occ2img, image_h, image_w)
        return sample_features(mlvl_feats, loc, level_weights, B, T, G, op=self.sampling_op)


def adaptive_mixing(x, query, gen_weight, gen_bias, out_weight, out_bias, in_dim, out_dim, in_points, out_points):
    """`AdaptiveMixing`'s computation as a function of tensors (shapes there; compilable as one graph)."""
    return mix_with_generated(x, query, F.linear(query, gen_weight, gen_bias), out_weight, out_bias, in_dim, out_dim,
                              in_points, out_points)


def mix_with_generated(x, query, generated, out_weight, out_bias, in_dim, out_dim, in_points, out_points):
    """`adaptive_mixing` after its first product: `generated` `[B, Q, G * (C_g * C_g' + out_points * in_points)]`
    = the parameter generator's output, per group M then S."""
    B, Q, G, P, C = x.shape
    params = generated.reshape(B * Q, G, -1)
    M, S = params.split([in_dim * out_dim, in_points * out_points], dim=2)
    M = M.reshape(B * Q, G, in_dim, out_dim)
    S = S.reshape(B * Q, G, out_points, in_points)
    out = torch.matmul(x.reshape(B * Q, G, P, C), M)                           # channel mixing
    out = F.relu(F.layer_norm(out, (in_points, out_dim)), inplace=True)
    out = torch.matmul(S, out)                                                 # point mixing
    out = F.relu(F.layer_norm(out, (out_points, out_dim)), inplace=True)
    return query + F.linear(out.reshape(B, Q, -1), out_weight, out_bias)


class AdaptiveMixing(nn.Module):
    """Query-conditioned channel then point mixing per group (AdaMixer style), with residual.

    Per query and group, M `[C_g, C_g]` and S `[out_points, in_points]` are generated from the query;
    x `[in_points, C_g]` -> x @ M -> LN(last 2 dims, no affine) -> ReLU -> S @ x -> LN -> ReLU;
    all groups flattened -> Linear -> + query.
    """

    def __init__(self, in_dim=64, in_points=32, n_groups=4, query_dim=256, out_dim=None, out_points=None):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim if out_dim is not None else in_dim
        self.in_points = in_points
        self.out_points = out_points if out_points is not None else in_points
        self.n_groups, self.query_dim = n_groups, query_dim
        self.m_parameters = self.in_dim * self.out_dim
        self.s_parameters = self.in_points * self.out_points
        self.parameter_generator = nn.Linear(query_dim, n_groups * (self.m_parameters + self.s_parameters))
        self.out_proj = nn.Linear(self.out_dim * self.out_points * n_groups, query_dim)

    @torch.no_grad()
    def init_weights(self):
        # zero weight: every query starts from the same (bias-only) mixing matrices
        nn.init.zeros_(self.parameter_generator.weight)

    def mixing_args(self, x, query):
        """The arguments of `adaptive_mixing` for inputs `x`, `query` (shapes checked)."""
        B, Q, G, P, C = x.shape
        if (G, P, C) != (self.n_groups, self.in_points, self.in_dim):
            raise ValueError(f'AdaptiveMixing: x has shape {tuple(x.shape)}, expected [B, Q, G={self.n_groups}, '
                             f'in_points={self.in_points}, C_g={self.in_dim}]')
        return (x, query, self.parameter_generator.weight, self.parameter_generator.bias, self.out_proj.weight,
                self.out_proj.bias, self.in_dim, self.out_dim, self.in_points, self.out_points)

    def forward(self, x, query):
        """
        Args:
            x (Tensor): `[B, Q, G, in_points, C_g]` sampled features.
            query (Tensor): `[B, Q, query_dim]`.
        Returns:
            Tensor: `[B, Q, query_dim]` = query + mixed features.
        """
        return adaptive_mixing(*self.mixing_args(x, query))


class OPSSelfAttention(BaseModule):
    """Self-attention with an additive bias -tau[b, q, h] * ||c_q - c_k|| between query centroids (metres).

    tau comes per head and per *query row* from the query feature; mmcv MultiheadAttention adds the
    residual inside.
    """

    def __init__(self, embed_dims=256, num_heads=8, dropout=0.1, pc_range=None, init_cfg=None):
        super().__init__(init_cfg)
        self.num_heads, self.pc_range = num_heads, list(pc_range)
        self.attention = MultiheadAttention(embed_dims, num_heads, attn_drop=dropout, batch_first=True)
        self.gen_tau = nn.Linear(embed_dims, num_heads)

    @torch.no_grad()
    def init_weights(self):
        nn.init.zeros_(self.gen_tau.weight)
        nn.init.uniform_(self.gen_tau.bias, 0.0, 2.0)

    def bias_terms(self, query_points, query_feat):
        """The bias's factors: query centroids `[B, Q, 3]` (metres, no gradient) and tau `[B, H, Q]`."""
        with torch.no_grad():
            centres = decode_points(query_points, self.pc_range).mean(2)      # [B, Q, 3] metres
        return centres, self.gen_tau(query_feat).permute(0, 2, 1)

    @staticmethod
    def attention_bias(centres, tau):
        """`[B, Q, 3]` centroids, `[B, H, Q]` tau -> the additive logit bias `[B, H, Q, Q]`."""
        with torch.no_grad():
            # exact differences (no |a|^2 - 2ab + |b|^2 expansion); broadcasting is much faster than
            # cdist's exact-mode kernel on the GPU
            dist = (centres[:, :, None] - centres[:, None]).norm(dim=-1)  # [B, Q, Q]
        return -tau[..., None] * dist[:, None]

    def forward(self, query_points, query_feat):
        """query_points `[B, Q, P, 3]` normalised; query_feat `[B, Q, C]` -> `[B, Q, C]`."""
        attn_mask = self.attention_bias(*self.bias_terms(query_points, query_feat))   # [B, H, Q, Q]
        return self.attention(query_feat, attn_mask=attn_mask.flatten(0, 1))   # [B*H, Q, Q], index b*H + h


@DECODER_LAYERS.register_module()
class OPSTransformerDecoderLayer(BaseModule):
    """One decoder layer: pos-enc -> sampling -> mixing + LN1 -> self-attn + LN2 -> FFN + LN3 -> heads.

    Args:
        in_points (int): points per query entering the layer (P_in).
        out_points (int): points per query predicted by the layer (P_out).
        scale (float): factor on the regression output (metres).
        with_cp (bool): gradient checkpointing of sampling, mixing and self-attention in training.
    """
    sampling_class = OPSSampling   # subclasses (OPUS-V2) swap the sampling module here

    def __init__(self, embed_dims=256, num_frames=8, num_views=6, num_groups=4, num_points=4, num_levels=4,
                 num_classes=17, in_points=1, out_points=1, scale=0.5, pc_range=None, num_heads=8,
                 ffn_dims=512, mixing_out_points=32, attn_drop=0.1, ffn_drop=0.1, with_cp=True,
                 init_cfg=None):
        super().__init__(init_cfg)
        self.embed_dims, self.num_classes = embed_dims, num_classes
        self.in_points, self.out_points, self.scale = in_points, out_points, scale
        self.pc_range, self.with_cp = list(pc_range), with_cp

        self.position_encoder = nn.Sequential(
            nn.Linear(3 * in_points, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True),
            nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True))
        self.sampling = self.sampling_class(embed_dims, num_frames, num_views, num_groups, num_points,
                                            num_levels, pc_range)
        self.mixing = AdaptiveMixing(in_dim=embed_dims // num_groups, in_points=num_points * num_frames,
                                     n_groups=num_groups, query_dim=embed_dims, out_points=mixing_out_points)
        self.self_attn = OPSSelfAttention(embed_dims, num_heads, attn_drop, pc_range)
        self.ffn = FFN(embed_dims, feedforward_channels=ffn_dims, num_fcs=2, ffn_drop=ffn_drop,
                       act_cfg=dict(type='ReLU', inplace=True), add_identity=True)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.norm3 = nn.LayerNorm(embed_dims)
        self.cls_branch = nn.Sequential(
            nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True),
            nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True),
            nn.Linear(embed_dims, num_classes * out_points))
        self.reg_branch = nn.Sequential(
            nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True),
            nn.Linear(embed_dims, embed_dims), nn.ReLU(inplace=True),
            nn.Linear(embed_dims, 3 * out_points))

    @torch.no_grad()
    def init_weights(self):
        self.sampling.init_weights()
        self.mixing.init_weights()
        self.self_attn.init_weights()
        nn.init.constant_(self.cls_branch[-1].bias, bias_init_with_prob(0.01))

    def _cp(self, fn, *args):
        if self.with_cp and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def cls_head(self, query_feat):
        """`[B, Q, C]` -> class logits `[B, Q, P_out, num_classes]` (point-major; OPUS-V2 overrides this)."""
        B, Q = query_feat.shape[:2]
        return self.cls_branch(query_feat).reshape(B, Q, self.out_points, self.num_classes)

    def refine_points(self, query_points, offsets):
        """New points around the centroid of the previous ones: `[B, Q, P_in, 3]`, `[B, Q, P_out, 3]` (metres)
        -> `[B, Q, P_out, 3]` normalised."""
        centre = decode_points(query_points, self.pc_range).mean(2, keepdim=True)
        return encode_points(centre + offsets, self.pc_range)

    def forward(self, query_points, query_feat, mlvl_feats, occ2img, image_h, image_w):
        """
        Args:
            query_points (Tensor): `[B, Q, P_in, 3]` normalised (detached by the decoder).
            query_feat (Tensor): `[B, Q, C]`.
            mlvl_feats (list[Tensor]): L x `[B*T*G, N, H_l, W_l, C/G]` channel-last.
            occ2img (Tensor): `[B, T*N, 4, 4]`.
        Returns:
            tuple: query_feat `[B, Q, C]`, cls logits `[B, Q, P_out, num_classes]`,
            new points `[B, Q, P_out, 3]` normalised.
        """
        B, Q, P_in, _ = query_points.shape
        if P_in != self.in_points:
            raise ValueError(f'decoder layer expects {self.in_points} points per query, got {P_in}')
        query_feat = query_feat + self.position_encoder(query_points.flatten(2))
        sampled = self._cp(self.sampling, query_points, query_feat, mlvl_feats, occ2img, image_h, image_w)
        query_feat = self.norm1(self._cp(self.mixing, sampled, query_feat))
        query_feat = self.norm2(self._cp(self.self_attn, query_points, query_feat))
        query_feat = self.norm3(self.ffn(query_feat))
        cls_score = self.cls_head(query_feat)
        offsets = self.reg_branch(query_feat).reshape(B, Q, self.out_points, 3) * self.scale
        return query_feat, cls_score, self.refine_points(query_points, offsets)


class OPSTransformerDecoder(BaseModule):
    """Stack of decoder layers; layer i turns `([1] + num_refines)[i]` points per query into `num_refines[i]`.

    `layer_cfg` (dict | None): the layers' type, a class registered in `DECODER_LAYERS` (default `layer_class`),
    and keyword arguments of that class beyond the ones the decoder passes (the shared sizes, the layer's
    `in_points`, `out_points`, `scale`). None: `layer_class` with the decoder's arguments only.
    """
    layer_class = OPSTransformerDecoderLayer   # the default layer type; subclasses (OPUS-V2) swap it here

    def __init__(self, embed_dims=256, num_frames=8, num_views=6, num_groups=4, num_points=4, num_layers=6,
                 num_levels=4, num_classes=17, num_refines=(1, 4, 16, 32, 64, 128), scales=(0.5,),
                 pc_range=None, num_heads=8, ffn_dims=512, mixing_out_points=32, attn_drop=0.1, ffn_drop=0.1,
                 with_cp=True, layer_cfg=None, init_cfg=None):
        super().__init__(init_cfg)
        if len(num_refines) != num_layers:
            raise ValueError(f'num_refines {list(num_refines)} must have one entry per decoder layer '
                             f'(num_layers={num_layers})')
        scales = list(scales)
        if len(scales) == 1:
            scales = scales * num_layers
        if len(scales) != num_layers:
            raise ValueError(f'scales {scales} must have 1 or num_layers={num_layers} entries')
        if embed_dims % num_groups or embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} must be divisible by num_groups={num_groups} and '
                             f'num_heads={num_heads}')
        self.embed_dims, self.num_frames, self.num_views = embed_dims, num_frames, num_views
        self.num_groups, self.num_levels, self.num_layers = num_groups, num_levels, num_layers
        self.pc_range = list(pc_range)
        in_points = [1] + list(num_refines[:-1])
        shared = dict(embed_dims=embed_dims, num_frames=num_frames, num_views=num_views, num_groups=num_groups,
                      num_points=num_points, num_levels=num_levels, num_classes=num_classes, pc_range=pc_range,
                      num_heads=num_heads, ffn_dims=ffn_dims, mixing_out_points=mixing_out_points,
                      attn_drop=attn_drop, ffn_drop=ffn_drop, with_cp=with_cp)
        layer_cfg = dict(layer_cfg or {})
        layer_cfg.setdefault('type', self.layer_class)
        clash = sorted(set(layer_cfg) & (set(shared) | {'in_points', 'out_points', 'scale'}))
        if clash:
            raise ValueError(f'layer_cfg: {clash} are set by the decoder (its own arguments, num_refines, scales); '
                             f'give them to the transformer')
        self.decoder_layers = nn.ModuleList([
            build_from_cfg(dict(layer_cfg, in_points=in_points[i], out_points=num_refines[i], scale=scales[i],
                                **shared), DECODER_LAYERS)
            for i in range(num_layers)])

    @torch.no_grad()
    def init_weights(self):
        for layer in self.decoder_layers:
            layer.init_weights()

    def _meta_matrices(self, img_metas, per_view_key, frame_key, device,
                       hint='Collect3D of the pipeline must collect it in meta_keys'):
        """float32 device tensors from the metas: `[B, T*N, 4, 4]` of `per_view_key` (one matrix per view of
        every frame) and `[B, 4, 4]` of `frame_key`; a missing key or a wrong count names the sample."""
        TN = self.num_frames * self.num_views
        views, frames = [], []
        for i, meta in enumerate(img_metas):
            for key in (per_view_key, frame_key, 'img_shape'):
                if key not in meta:
                    raise KeyError(f'img_metas[{i}] has no "{key}" ({hint})')
            mats = np.asarray(meta[per_view_key], dtype=np.float32)
            if mats.shape != (TN, 4, 4):
                raise ValueError(f'img_metas[{i}]["{per_view_key}"] has shape {mats.shape}, expected ({TN}, 4, 4) '
                                 f'= num_frames {self.num_frames} x num_views {self.num_views}')
            views.append(mats)
            frames.append(np.asarray(meta[frame_key], dtype=np.float32).reshape(4, 4))
        return torch.from_numpy(np.stack(views)).to(device), torch.from_numpy(np.stack(frames)).to(device)

    def _occ2img(self, img_metas, device):
        """`[B, T*N, 4, 4]` float32: ego (key frame) -> pixels = lidar2img @ ego2lidar, per view."""
        lidar2img, ego2lidar = self._meta_matrices(img_metas, 'lidar2img', 'ego2lidar', device)
        return torch.matmul(lidar2img, ego2lidar[:, None])

    def _group_channels(self, feat):
        """F frames `[F, N, C, H, W]` -> a view `[F, G, N, H, W, C/G]`, channel g*C/G + c at [f, g, ..., c]."""
        frames, N, C, H, W = feat.shape
        G = self.num_groups
        return feat.reshape(frames, N, G, C // G, H, W).permute(0, 2, 1, 4, 5, 3)

    def frame_sampling_layout(self, feat):
        """One frame's level `[N, C, H, W]` -> `[G, N, H, W, C/G]` (what the online feature cache stores
        per frame: T of them, stacked, are `sampling_layout` of the T frames)."""
        return self._group_channels(feat[None])[0].contiguous()

    def sampling_layout(self, mlvl_feats):
        """L FPN levels `[B, T*N, C, H, W]` -> the sampling op's channel-last `[B*T*G, N, H, W, C/G]`:
        batch (b*T + t)*G + g holds channels g*C/G.. of frame t (`run_layers` takes this layout)."""
        T, N, G = self.num_frames, self.num_views, self.num_groups
        out = []
        for feat in mlvl_feats:
            B, TN, C, H, W = feat.shape
            if TN != T * N or C != self.embed_dims:
                raise ValueError(f'image features have shape {tuple(feat.shape)}, expected [B, T*N={T * N}, '
                                 f'C={self.embed_dims}, H, W] (num_frames={T}, num_views={N})')
            out.append(self._group_channels(feat.reshape(B * T, N, C, H, W)).reshape(B * T * G, N, H, W, C // G))
        return out

    def forward(self, query_points, query_feat, mlvl_feats, img_metas):
        """
        Args:
            query_points (Tensor): `[B, Q, 1, 3]` initial points, normalised.
            query_feat (Tensor): `[B, Q, C]`.
            mlvl_feats (list[Tensor]): L FPN levels `[B, T*N, C, H_l, W_l]`, frame-major views.
            img_metas (list[dict]): B dicts with `lidar2img` (T*N 4x4), `ego2lidar` (4x4), `img_shape`.
        Returns:
            tuple(list[Tensor], list[Tensor]): per layer, logits `[B, Q, P_i, num_classes]` and points
            `[B, Q, P_i, 3]` (normalised), both passed through `nan_to_num`.
        """
        if len(img_metas) != query_points.shape[0]:
            raise ValueError(f'{len(img_metas)} img_metas for a batch of {query_points.shape[0]}')
        occ2img, (image_h, image_w) = self.image_geometry(img_metas, query_points.device)
        return self.run_layers(query_points, query_feat, self.sampling_layout(mlvl_feats), occ2img, image_h, image_w)

    def image_geometry(self, img_metas, device):
        """(occ2img `[B, T*N, 4, 4]` float32 on `device`, (image_h, image_w) of the augmented images)."""
        return self._occ2img(img_metas, device), tuple(img_metas[0]['img_shape'][0][:2])

    def run_layers(self, query_points, query_feat, feats, occ2img, image_h, image_w):
        """The decoder on device tensors only (no host work, so it can be captured in a CUDA graph).

        feats: L levels in the sampling layout `[B*T*G, N, H_l, W_l, C/G]` (`sampling_layout`);
        occ2img: `[B, T*N, 4, 4]` ego -> pixels; image_h, image_w: augmented image size (pixels).
        """
        self.check_sampling_layout(feats, occ2img)
        return self.iterate_layers(query_points, query_feat, feats, occ2img, image_h, image_w)

    def check_sampling_layout(self, feats, occ2img):
        """The L feature levels are in the sampling layout of occ2img's batch (`sampling_layout`), else an error."""
        B, T, G = occ2img.shape[0], self.num_frames, self.num_groups
        if len(feats) != self.num_levels:
            raise ValueError(f'got {len(feats)} feature levels, the decoder was built for {self.num_levels}')
        for feat in feats:
            if feat.dim() != 5 or feat.shape[0] != B * T * G or feat.shape[1] != self.num_views:
                raise ValueError(f'features of shape {tuple(feat.shape)} are not in the sampling layout '
                                 f'[B*T*G={B * T * G}, N={self.num_views}, H, W, C/G] (sampling_layout)')

    def iterate_layers(self, query_points, query_feat, *layer_inputs):
        """Every layer on (points, features, *layer_inputs) -> (logits per layer, points per layer), NaN-free."""
        cls_scores, refine_pts = [], []
        for layer in self.decoder_layers:
            # each layer refines around the previous points without back-propagating into them
            query_points = query_points.detach()
            query_feat, cls_score, query_points = layer(query_points, query_feat, *layer_inputs)
            cls_scores.append(cls_score)
            refine_pts.append(query_points)
        # a layer may return no logits (None: OPUS-V2 in eval mode before the last layer)
        return ([None if c is None else torch.nan_to_num(c) for c in cls_scores],
                [torch.nan_to_num(p) for p in refine_pts])


@TRANSFORMER.register_module()
class OPSTransformer(BaseModule):
    """Container of the OPS decoder (config type 'OPSTransformer'; state-dict prefix `decoder.`).

    Args mirror the published configs: embed_dims 256, num_frames 8, num_points np, num_layers 6,
    num_levels 4, num_classes 17, num_refines (points per query after each layer), scales [0.5],
    pc_range; num_views 6 and num_groups 4 are code defaults; `layer_cfg` (None: the decoder's default
    layer) picks a registered decoder-layer type and its extra arguments (`OPSTransformerDecoder`).
    """
    decoder_class = OPSTransformerDecoder   # subclasses (OPUS-V2) swap the decoder type here

    def __init__(self, embed_dims=256, num_frames=8, num_points=4, num_layers=6, num_levels=4, num_classes=17,
                 num_refines=(1, 4, 16, 32, 64, 128), scales=(0.5,), pc_range=None, num_views=6, num_groups=4,
                 num_heads=8, ffn_dims=512, mixing_out_points=32, attn_drop=0.1, ffn_drop=0.1, with_cp=True,
                 layer_cfg=None, init_cfg=None):
        super().__init__(init_cfg)
        if pc_range is None or len(pc_range) != 6:
            raise ValueError(f'OPSTransformer needs pc_range=[x0, y0, z0, x1, y1, z1] (metres), got {pc_range}')
        self.embed_dims, self.num_frames, self.num_points = embed_dims, num_frames, num_points
        self.num_layers, self.num_levels, self.num_classes = num_layers, num_levels, num_classes
        self.num_refines, self.num_views, self.num_groups = list(num_refines), num_views, num_groups
        self.pc_range = list(pc_range)
        self.decoder = self.decoder_class(embed_dims, num_frames, num_views, num_groups, num_points, num_layers,
                                          num_levels, num_classes, num_refines, scales, pc_range, num_heads,
                                          ffn_dims, mixing_out_points, attn_drop, ffn_drop, with_cp,
                                          layer_cfg=layer_cfg)

    @torch.no_grad()
    def init_weights(self):
        self.decoder.init_weights()

    def forward(self, query_points, query_feat, mlvl_feats, img_metas):
        """See `OPSTransformerDecoder.forward`: returns (cls_scores, refine_pts), lists over layers."""
        return self.decoder(query_points, query_feat, mlvl_feats, img_metas)

    def image_geometry(self, img_metas, device):
        """See `OPSTransformerDecoder.image_geometry`."""
        return self.decoder.image_geometry(img_metas, device)

    def sampling_layout(self, mlvl_feats):
        """See `OPSTransformerDecoder.sampling_layout`."""
        return self.decoder.sampling_layout(mlvl_feats)

    def frame_sampling_layout(self, feat):
        """See `OPSTransformerDecoder.frame_sampling_layout`."""
        return self.decoder.frame_sampling_layout(feat)

    def run(self, query_points, query_feat, feats, occ2img, image_h, image_w):
        """The decoder on device tensors, features in the sampling layout (`OPSTransformerDecoder.run_layers`)."""
        return self.decoder.run_layers(query_points, query_feat, feats, occ2img, image_h, image_w)
