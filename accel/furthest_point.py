"""Furthest-point sampling as one Triton kernel: `models.opus_fusion_head.furthest_point_sample`, the same indices.

The faithful function picks the Q initial points of OPUS-Fusion one by one in a Python loop of about a dozen small
kernels per pick: on a GPU about 0.1 ms a pick, 4,800 picks for OPUS-Fusion-L (docs/performance.md). Here one
program runs the whole loop: per pick it streams the points in blocks, updates each point's smallest squared
distance (kept in a scratch vector in global memory, L2-resident at sweep sizes) and reduces the block maxima.

Same arithmetic, so the same indices:
* squared distance `(dx*dx + dy*dy) + dz*dz` in float32, each product and sum rounded (the kernel is launched
  with `enable_fp_fusion=False`: no fused multiply-adds, as PyTorch's separate elementwise kernels);
* `min(dist, d)` per point, the first 1e10;
* the next index is the first maximum (Triton's `argmax` breaks ties to the lower index within a block; a later
  block replaces the running best only when strictly greater), as `torch.argmax`.

`fast_furthest_point_sample` uses the kernel for float32 CUDA points where Triton builds it, else the faithful
function (the CPU, other dtypes, a Triton that fails: one warning, then the faithful function; core/compiled.py).
The kernel is tested through Triton's interpreter on the CPU against the faithful function
(tests/accel/test_furthest_point.py); a build on each GPU checks it too at its first call.
"""
import functools

import torch

from core.compiled import TritonKernel
from models.opus_fusion_head import furthest_point_sample

__all__ = ['fast_furthest_point_sample', 'furthest_point_sample_triton', 'FURTHEST_POINT_KERNEL', 'BLOCK']

BLOCK = 2048   # points per block of the scan (16 warps x 32 threads x 4)


@functools.cache
def _build():
    """The jitted kernel (imports Triton only when first needed: the CPU path never does)."""
    import triton
    import triton.language as tl

    @triton.jit
    def fps_kernel(xyz_ptr, dist_ptr, out_ptr, n, num_samples, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        last = tl.zeros([], dtype=tl.int32)                  # index 0 first, as the faithful loop
        tl.store(out_ptr, last.to(tl.int64))
        for j in range(1, num_samples):
            lx = tl.load(xyz_ptr + last * 3)
            ly = tl.load(xyz_ptr + last * 3 + 1)
            lz = tl.load(xyz_ptr + last * 3 + 2)
            best_value = tl.full([], -1.0, dtype=tl.float32)   # below every distance (>= 0)
            best_index = tl.zeros([], dtype=tl.int32)
            for start in range(0, n, BLOCK):
                index = start + offsets
                inside = index < n
                dx = tl.load(xyz_ptr + index * 3, mask=inside, other=0.0) - lx
                dy = tl.load(xyz_ptr + index * 3 + 1, mask=inside, other=0.0) - ly
                dz = tl.load(xyz_ptr + index * 3 + 2, mask=inside, other=0.0) - lz
                d = dx * dx + dy * dy + dz * dz
                dist = tl.minimum(tl.load(dist_ptr + index, mask=inside, other=0.0), d)
                tl.store(dist_ptr + index, dist, mask=inside)
                dist = tl.where(inside, dist, -1.0)
                block_max = tl.max(dist, axis=0)
                block_arg = tl.argmax(dist, axis=0)
                better = block_max > best_value
                best_index = tl.where(better, start + block_arg, best_index)
                best_value = tl.where(better, block_max, best_value)
            # every thread's distance updates land before the next pick reads them
            tl.debug_barrier()
            last = best_index
            tl.store(out_ptr + j, last.to(tl.int64))

    return fps_kernel


def furthest_point_sample_triton(points, num_samples):
    """`furthest_point_sample(points, num_samples)` by the Triton kernel: float32 `[N, 3]` points (on CUDA, or on
    the CPU under Triton's interpreter) -> int64 `[num_samples]`."""
    if points.dim() != 2 or points.shape[1] != 3 or points.shape[0] == 0 or points.dtype != torch.float32:
        raise ValueError(f'furthest_point_sample_triton needs float32 points [N >= 1, 3], got {points.dtype} '
                         f'{tuple(points.shape)}')
    xyz = points.contiguous()
    dist = torch.full((xyz.shape[0],), 1e10, dtype=torch.float32, device=xyz.device)
    out = torch.empty(num_samples, dtype=torch.int64, device=xyz.device)
    options = dict(num_warps=16) if xyz.is_cuda else {}
    _build()[(1,)](xyz, dist, out, xyz.shape[0], num_samples, BLOCK=BLOCK, enable_fp_fusion=False, **options)
    return out


# the faithful loop where the kernel cannot be built (one warning)
FURTHEST_POINT_KERNEL = TritonKernel(furthest_point_sample_triton, furthest_point_sample,
                                     'the Triton furthest-point sampling kernel', 'the PyTorch loop')


def fast_furthest_point_sample(points, num_samples):
    """The kernel for float32 CUDA points, else (or once it failed to build) the faithful function."""
    return FURTHEST_POINT_KERNEL.or_eager(points.is_cuda and points.dtype == torch.float32, points, num_samples)
