"""Projection of 3D sampling points into the T x N camera views and multi-level sampling
(docs/method.md, "Projection and view choice").

Symbols (docs/method.md, "Symbols and frames"): B batch, Q queries, T frames, N views per frame,
G channel groups, P sampling points per group and frame (`num_points`, np in the docs), GP = G*P,
L FPN levels, C channels per group (C_g), BB = B*T*G the batch of the sampling op, (H, W) the
augmented image.
"""
import torch

from .csrc.wrapper import msmv_sampling

__all__ = ['sampling_4d', 'sampling_locations', 'sample_features', 'check_sampling_shapes', 'project_points',
           'level_weight_group']


def level_weight_group(t, g, num_frames, num_groups):
    """Group whose level weights the sampling slot (frame t, group g) actually uses
    (docs/method.md, "Projection and view choice", step 6).

    The weights are flattened in (b, g, t) order while points/features use (b, t, g) order, so slot
    (t, g) reads the weights produced for group floor((t * G + g) / T). Inherited from SparseBEV and
    kept because the official checkpoints were trained with it.
    """
    return (t * num_groups + g) // num_frames


def project_points(points, occ2img, num_views):
    """Homogeneous projection of `[B, Q, T, GP, 3]` ego points (metres) into the N views of their frame.

    Written as the original writes it, a broadcast `matmul` of `[..., 4, 4]` matrices with `[..., 4, 1]`
    columns over `[B, T, N, Q, GP]`, because that fixes the float32 summation order (one small GEMM
    per point); an `einsum` contracts in another order and differs by an ulp now and then, which
    grows through six decoder layers (docs/method.md, "float32 details").

    Args:
        points (Tensor): `[B, Q, T, GP, 3]` metres, ego frame of the key frame.
        occ2img (Tensor): `[B, T*N, 4, 4]` ego -> (u*d, v*d, d, 1) of view (t, n), frame-major.
        num_views (int): N.
    Returns:
        Tensor: `[B, T, N, Q, GP, 4]` = (u*d, v*d, d, 1) in pixels of the augmented image.
    """
    B, Q, T, GP, _ = points.shape
    N = num_views
    mats = occ2img[:, :, None, None, :, :].expand(B, T * N, Q, GP, 4, 4).reshape(B, T, N, Q, GP, 4, 4)
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)            # [B, Q, T, GP, 4]
    homo = homo[:, :, None, :, :, :, None].expand(B, Q, N, T, GP, 4, 1).transpose(1, 3)  # [B, T, N, Q, GP, 4, 1]
    return torch.matmul(mats, homo).squeeze(-1)


def sampling_locations(sample_points, scale_weights, occ2img, image_h, image_w, num_views, eps,
                       project=project_points):
    """The sampling op's inputs: where each point is read (one camera per point and frame) and its level weights.

    Args as `sampling_4d`; `project` is `project_points` or a function of the same arguments returning the
    same first three coordinates (accel/kernels.py has one without per-point matrix copies). Returns:
        (Tensor, Tensor): `[B*T*G, Q, P, 3]` (u, v, view / (N - 1)) and `[B*T*G, Q, P, L]` level weights.
    """
    B, Q, T, G, P, _ = sample_points.shape
    N = num_views
    L = scale_weights.shape[-1]
    proj = project(sample_points.reshape(B, Q, T, G * P, 3), occ2img, N)           # [B, T, N, Q, GP, 3 or 4]
    depth = proj[..., 2]
    depth_clamped = torch.clamp(depth, min=eps)
    u = proj[..., 0] / depth_clamped / image_w
    v = proj[..., 1] / depth_clamped / image_h
    valid = (depth > eps) & (u > 0) & (u < 1) & (v > 0) & (v < 1)                 # strict on all borders

    # first visible camera in camera order; camera 0 when the point is visible in none. The valid flag
    # is not used afterwards: invisible points read the zero padding of camera 0 (docs/method.md,
    # "Projection and view choice", step 4).
    view = valid.to(torch.uint8).argmax(dim=2, keepdim=True)                    # [B, T, 1, Q, GP]
    u = u.gather(2, view)[:, :, 0]
    v = v.gather(2, view)[:, :, 0]                                              # [B, T, Q, GP]
    view_norm = view[:, :, 0].to(u.dtype) / (N - 1) if N > 1 else torch.zeros_like(u)
    loc = torch.stack([u, v, view_norm], dim=-1)                                # [B, T, Q, GP, 3]
    loc = loc.reshape(B, T, Q, G, P, 3).permute(0, 1, 3, 2, 4, 5).reshape(B * T * G, Q, P, 3)

    # [QUIRK] (docs/method.md, "Projection and view choice", step 6) the weights are flattened in (b, g, t)
    # order while `loc` and the features use (b, t, g): slot (b*T + t)*G + g therefore receives the
    # weights of group level_weight_group(t, g, T, G) = floor((t*G + g) / T). Kept to match the
    # official checkpoints.
    weights = scale_weights.permute(0, 2, 3, 1, 4, 5).reshape(B * G * T, Q, P, L)

    return loc, weights


def check_sampling_shapes(sample_points, scale_weights, occ2img, num_views):
    """Shape checks of `sampling_4d`'s inputs (a message naming the mismatch)."""
    B, Q, T, G, P, _ = sample_points.shape
    N = num_views
    if occ2img.shape[:2] != (B, T * N):
        raise ValueError(f'sampling_4d: occ2img has shape {tuple(occ2img.shape)}, expected [B={B}, T*N={T * N}, 4, 4] '
                         f'(T={T} frames from the sampling points, N={N} views)')
    if tuple(scale_weights.shape[:5]) != (B, Q, G, T, P):
        raise ValueError(f'sampling_4d: scale_weights has shape {tuple(scale_weights.shape)}, expected '
                         f'[B, Q, G, T, P, L] = [{B}, {Q}, {G}, {T}, {P}, L]')


def sample_features(mlvl_feats, loc, weights, batch, frames, groups, op=msmv_sampling):
    """The sampling op at the locations of `sampling_locations`.

    Args:
        mlvl_feats (list[Tensor]): L levels `[B*T*G, N, H_l, W_l, C]` channel-last.
        loc (Tensor): `[B*T*G, Q, P, 3]` (u, v, view / (N - 1)); weights (Tensor): `[B*T*G, Q, P, L]`.
        batch, frames, groups (int): B, T, G.
        op (callable): the sampling op (`msmv_sampling`, or `msmv_sampling_pytorch`, its exact PyTorch path).
    Returns:
        Tensor: `[B, Q, G, T*P, C]` sampled features (T-major, then P).
    """
    B, T, G = batch, frames, groups
    Q, P = loc.shape[1:3]
    out = op(mlvl_feats, loc, weights)                                          # [B*T*G, Q, C, P]
    C = out.shape[2]
    out = out.reshape(B, T, G, Q, C, P).permute(0, 3, 2, 1, 5, 4)               # [B, Q, G, T, P, C]
    return out.reshape(B, Q, G, T * P, C)


def sampling_4d(sample_points, mlvl_feats, scale_weights, occ2img, image_h, image_w, num_views=6, eps=1e-5):
    """Sample image features at 3D points seen by every frame, one camera per point and frame.

    Args:
        sample_points (Tensor): `[B, Q, T, G, P, 3]` sampling points in metres, ego frame of the key frame.
        mlvl_feats (list[Tensor]): L levels `[B*T*G, N, H_l, W_l, C]` channel-last, batch index
            (b*T + t)*G + g, channel group g of the FPN output.
        scale_weights (Tensor): `[B, Q, G, T, P, L]` level weights (softmax over L).
        occ2img (Tensor): `[B, T*N, 4, 4]` ego (key frame) -> pixel of the augmented image of view (t, n),
            rows (u*d, v*d, d, 1), frame-major.
        image_h, image_w (int): size of the augmented (unpadded) image in pixels; u, v are normalised by it.
        num_views (int): N cameras per frame.
        eps (float): minimum depth in metres for a valid projection.
    Returns:
        Tensor: `[B, Q, G, T*P, C]` sampled features (T-major, then P).
    """
    B, Q, T, G, P, _ = sample_points.shape
    check_sampling_shapes(sample_points, scale_weights, occ2img, num_views)
    loc, weights = sampling_locations(sample_points, scale_weights, occ2img, image_h, image_w, num_views, eps)
    return sample_features(mlvl_feats, loc, weights, B, T, G)
