"""The fused modules' kernels: the same functions as the faithful method's, computed another way.

* `project_points_fast`: `models.ops_sampling.project_points` without its per-point matrix copies;
* `fast_sampling_locations`: `sampling_locations` with that projection; `SAMPLING_GEOMETRY` its compiled
  kernel (the projection and view choice as one kernel; without autograd);
* `MIXING_KERNEL`: `models.ops_transformer.adaptive_mixing` compiled (LayerNorm and ReLU fused);
* `compiled_closing`: `models.occ_postprocess.close_and_label` compiled on CUDA (maxima, comparisons and
  argmax are exact, so the voxels are the eager code's).
Each compiled kernel falls back to its eager function where it cannot be built (core/compiled.py).
"""

from core.compiled import CompiledOrNone
from models.occ_postprocess import close_and_label
from models.ops_sampling import sampling_locations
from models.ops_transformer import adaptive_mixing

__all__ = ['project_points_fast', 'fast_sampling_locations', 'SAMPLING_GEOMETRY', 'MIXING_KERNEL', 'CLOSING_KERNEL',
           'compiled_closing']


def project_points_fast(points, occ2img, num_views):
    """`project_points` without its per-point copies of the matrices.

    The faithful form expands the `[B, T*N, 4, 4]` matrices to one copy per point and runs a batched
    matrix-vector product (on the GPU 48 x Q x G*P products, e.g. 1.8 M for OPS-L, in chunks). This
    form broadcasts instead: (u*d, v*d, d) = M[:3, :3] @ p + M[:3, 3] per view, float32 products
    summed in another order (results differ from `project_points` by float32 rounding).

    Returns:
        Tensor: `[B, T, N, Q, GP, 3]` = (u*d, v*d, d); the homogeneous 1 is left out.
    """
    B, Q, T, GP, _ = points.shape
    mats = occ2img.view(B, T, num_views, 1, 1, 4, 4)[..., :3, :]                    # [B, T, N, 1, 1, 3, 4]
    xyz = points.permute(0, 2, 1, 3, 4)[:, :, None, :, :, None, :]                  # [B, T, 1, Q, GP, 1, 3]
    return (mats[..., :3] * xyz).sum(-1) + mats[..., 3]


def fast_sampling_locations(sample_points, scale_weights, occ2img, image_h, image_w, num_views, eps):
    """`sampling_locations` with `project_points_fast`."""
    return sampling_locations(sample_points, scale_weights, occ2img, image_h, image_w, num_views, eps,
                              project=project_points_fast)


SAMPLING_GEOMETRY = CompiledOrNone(fast_sampling_locations, 'the compiled sampling geometry', 'the eager one')
MIXING_KERNEL = CompiledOrNone(adaptive_mixing, 'the compiled adaptive mixing', 'the eager one')
CLOSING_KERNEL = CompiledOrNone(close_and_label, 'the compiled closing kernel', 'the eager closing')


def compiled_closing(scores, score_thr):
    """`close_and_label` from its compiled kernel on CUDA, eagerly elsewhere."""
    return CLOSING_KERNEL.or_eager(scores.is_cuda, scores, score_thr)
