"""Multi-scale multi-view sampling (docs/method.md, "Sampling op"): the dispatching entry point and its exact
PyTorch fallback.

Symbols (docs/method.md, "Symbols and frames"): BB = B*T*G sampling batch, N views, L levels of
size (H_l, W_l), C channels (one group's, C_g), Q queries, P sampling points per query.

Semantics shared by both paths, for every (bb, q, p):
    view  = round(view_norm * (N - 1))                     (exactly one view is read)
    h, w  = v * (H_l - 1), u * (W_l - 1)                   (align_corners=True, pixel centres at integers)
    out[bb, q, :, p] = sum_l weight[bb, q, p, l] * bilinear(feat_l[bb, view], h, w)
with zero padding (corners outside the map contribute 0). Gradients flow into the features, into
(u, v) and into the weights; the view coordinate gets zero gradient.

Layout: features are channel-last `[BB, N, H_l, W_l, C]` for both paths (the layout the CUDA kernel
reads coalesced); the fallback permutes to channel-first internally for `F.grid_sample`.
"""
import math
import warnings

import torch
import torch.nn.functional as F

__all__ = ['msmv_sampling', 'msmv_sampling_pytorch', 'cuda_op_available']

_cuda_op = None          # models.csrc.msmv_cuda.msmv_sampling_cuda once imported
_cuda_import_tried = False


def _get_cuda_op():
    """Import the CUDA op lazily: CPU-only runs never touch (or warn about) the extension."""
    global _cuda_op, _cuda_import_tried
    if not _cuda_import_tried:
        _cuda_import_tried = True
        try:
            from .msmv_cuda import msmv_sampling_cuda
            _cuda_op = msmv_sampling_cuda
        except (ImportError, OSError) as exc:
            warnings.warn(f'models.csrc: CUDA sampling op not available ({exc}); using the PyTorch '
                          f'fallback (slower, same results). Build it with `cd models/csrc && python '
                          f'setup.py build_ext --inplace`.')
    return _cuda_op


def cuda_op_available():
    """True when the compiled CUDA op imported (it is used for CUDA inputs)."""
    return _get_cuda_op() is not None


def _check_inputs(mlvl_feats, sampling_locations, scale_weights):
    if not isinstance(mlvl_feats, (list, tuple)) or len(mlvl_feats) == 0:
        raise TypeError('msmv_sampling: mlvl_feats must be a non-empty list of [BB, N, H, W, C] tensors, '
                        f'got {type(mlvl_feats).__name__}')
    if mlvl_feats[0].dim() != 5:
        raise ValueError(f'msmv_sampling: level 0 has shape {tuple(mlvl_feats[0].shape)}; features must be '
                         f'channel-last [BB, N, H_l, W_l, C]')
    BB, N, _, _, C = mlvl_feats[0].shape
    for lvl, feat in enumerate(mlvl_feats):
        if feat.dim() != 5 or feat.shape[0] != BB or feat.shape[1] != N or feat.shape[4] != C:
            raise ValueError(f'msmv_sampling: level {lvl} has shape {tuple(feat.shape)}; every level must be '
                             f'channel-last [BB, N, H_l, W_l, C] with the same BB, N, C as level 0 '
                             f'({tuple(mlvl_feats[0].shape)})')
    if sampling_locations.dim() != 4 or sampling_locations.shape[0] != BB or sampling_locations.shape[3] != 3:
        raise ValueError(f'msmv_sampling: sampling_locations must be [BB={BB}, Q, P, 3] (u, v, view/(N-1)), '
                         f'got {tuple(sampling_locations.shape)}')
    L = len(mlvl_feats)
    if tuple(scale_weights.shape) != tuple(sampling_locations.shape[:3]) + (L,):
        raise ValueError(f'msmv_sampling: scale_weights must be [BB, Q, P, L] = '
                         f'{tuple(sampling_locations.shape[:3]) + (L,)}, got {tuple(scale_weights.shape)}')


def _padded_num_views(num_views):
    """Depth of the zero-padded view axis: 2**m + 1 planes, so that view k sits at an exact grid point.

    Why: grid_sample (align_corners=True) maps z to ((z + 1) / 2) * (D - 1). With D = N = 6 views no
    float32 z lands exactly on view 1 (the neighbouring representable values give 0.99999994 and
    1.0000001), so the trilinear kernel would mix a ~1e-7 share of a neighbouring view into the sample,
    unlike the CUDA op which reads exactly one view. With D - 1 a power of two, z = k / 2**(m-1) - 1 and
    every step of the un-normalisation is exact in any float format, so the weight of view k is exactly 1
    and its neighbour's exactly 0.
    """
    if num_views <= 2:
        return num_views
    return 2 ** int(math.ceil(math.log2(num_views - 1))) + 1


def msmv_sampling_pytorch(mlvl_feats, sampling_locations, scale_weights):
    """Exact PyTorch implementation of the sampling op (5-D `F.grid_sample`, one view per point).

    Args:
        mlvl_feats (list[Tensor]): L levels of channel-last features `[BB, N, H_l, W_l, C]`.
        sampling_locations (Tensor): `[BB, Q, P, 3]` = (u, v, view / (N - 1)), u and v normalised to
            [0, 1] of the image (values outside read zeros); the view coordinate must be one of
            k / (N - 1), k = 0..N-1 (rounded to the nearest view).
        scale_weights (Tensor): `[BB, Q, P, L]` weight of each level.
    Returns:
        Tensor: `[BB, Q, C, P]` in the features' dtype.
    """
    _check_inputs(mlvl_feats, sampling_locations, scale_weights)
    BB, N, _, _, C = mlvl_feats[0].shape
    dtype = mlvl_feats[0].dtype
    view = torch.round(sampling_locations[..., 2].detach() * (N - 1)).long()     # [BB, Q, P]
    if view.numel() and (int(view.min()) < 0 or int(view.max()) > N - 1):
        raise ValueError(f'msmv_sampling: view coordinate outside [0, 1] (view index {int(view.min())}..'
                         f'{int(view.max())} for N={N}); sampling_locations[..., 2] must be view / (N - 1)')
    depth = _padded_num_views(N)
    z = view.to(dtype) * (2.0 / (depth - 1)) - 1 if depth > 1 else torch.zeros_like(view, dtype=dtype)
    # x = u, y = v in grid_sample's [-1, 1] convention; the view is an exact grid point (see above)
    grid = torch.stack([sampling_locations[..., 0].to(dtype) * 2 - 1,
                        sampling_locations[..., 1].to(dtype) * 2 - 1, z], dim=-1)[:, :, :, None]  # [BB, Q, P, 1, 3]
    out = 0
    for lvl, feat in enumerate(mlvl_feats):
        H, W = feat.shape[2:4]
        feat_cf = feat.new_zeros(BB, C, depth, H, W)                   # [BB, C, D, H_l, W_l]
        feat_cf[:, :, :N] = feat.permute(0, 4, 1, 2, 3)
        sampled = F.grid_sample(feat_cf, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
        out = out + sampled[..., 0] * scale_weights[..., lvl].to(dtype)[:, None]    # [BB, C, Q, P]
    return out.permute(0, 2, 1, 3).contiguous()


def msmv_sampling(mlvl_feats, sampling_locations, scale_weights):
    """Multi-scale multi-view sampling: the CUDA op for CUDA inputs when it is built, else the fallback.

    Shapes as `msmv_sampling_pytorch`: features L x `[BB, N, H_l, W_l, C]` (channel-last), locations
    `[BB, Q, P, 3]`, weights `[BB, Q, P, L]` -> `[BB, Q, C, P]` (`msmv_sampling_pytorch` is the fallback itself,
    on any device).
    """
    if sampling_locations.is_cuda:
        op = _get_cuda_op()
        if op is not None:
            return op(mlvl_feats, sampling_locations, scale_weights)
    return msmv_sampling_pytorch(mlvl_feats, sampling_locations, scale_weights)
