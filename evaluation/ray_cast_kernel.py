"""RayIoU's voxel traversal as one Triton kernel: `evaluation.ray_iou.cast_rays` on CUDA, the same hits and distances.

The PyTorch traversal (`ray_iou._traverse`) steps all rays together, a few dozen kernels per voxel step and a host
sync every few steps to drop finished rays: on a GPU the metrics of one sample (8 origins x 14,040 rays, two grids)
took longer than the model's test step. Here one program walks a block of rays to their ends.

Same arithmetic, so the same results: the state comes from `ray_iou._ray_setup` (float64, PyTorch); a step compares
the three float64 boundary parameters and adds one float64 increment (no products: nothing to fuse), as the PyTorch
loop. A ray stops as soon as it has left the grid after being inside or has hit in every grid; the PyTorch loop
removes such rays only every few steps, but their state no longer changes (a walk that has left the grid's box
cannot re-enter it: each index moves monotonically; a ray that has hit records nothing more).

Symbols: R rays, G grids per sample (RayIoU: 2, the prediction and the ground truth), BLOCK rays per program.
The kernel is tested through Triton's interpreter on the CPU against the PyTorch traversal
(tests/evaluation/test_ray_cast_kernel.py); on a GPU `cast_rays` uses it (`ray_iou.RAY_TRAVERSAL_KERNEL`), or the
PyTorch traversal (one warning) where Triton cannot build it.
"""
import functools

import torch

__all__ = ['traverse_triton', 'BLOCK']

BLOCK = 128   # rays per program: rays of one origin in a block take similar numbers of steps


@functools.cache
def _build():
    """The jitted kernel (imports Triton only when first needed: the CPU path never does)."""
    import triton
    import triton.language as tl

    @triton.jit
    def traverse_kernel(occ_ptr, base_ptr, voxel_ptr, step_ptr, t_max_ptr, t_delta_ptr, dist_ptr, index_ptr,
                        num_rays, size_x, size_y, size_z, grid_volume, max_steps,
                        G: tl.constexpr, G_POW2: tl.constexpr, BLOCK: tl.constexpr):
        rays = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)                 # [BLOCK]
        valid = rays < num_rays
        vx = tl.load(voxel_ptr + rays * 3, mask=valid, other=0)
        vy = tl.load(voxel_ptr + rays * 3 + 1, mask=valid, other=0)
        vz = tl.load(voxel_ptr + rays * 3 + 2, mask=valid, other=0)
        sx = tl.load(step_ptr + rays * 3, mask=valid, other=0)
        sy = tl.load(step_ptr + rays * 3 + 1, mask=valid, other=0)
        sz = tl.load(step_ptr + rays * 3 + 2, mask=valid, other=0)
        tx = tl.load(t_max_ptr + rays * 3, mask=valid, other=0.0)
        ty = tl.load(t_max_ptr + rays * 3 + 1, mask=valid, other=0.0)
        tz = tl.load(t_max_ptr + rays * 3 + 2, mask=valid, other=0.0)
        dtx = tl.load(t_delta_ptr + rays * 3, mask=valid, other=0.0)
        dty = tl.load(t_delta_ptr + rays * 3 + 1, mask=valid, other=0.0)
        dtz = tl.load(t_delta_ptr + rays * 3 + 2, mask=valid, other=0.0)
        base = tl.load(base_ptr + rays, mask=valid, other=0)
        grids = tl.arange(0, G_POW2)                                           # [G_POW2]
        real_grid = grids[None, :] < G                                         # [1, G_POW2]
        # [BLOCK, G_POW2]; the padding grids count as hit, so that "hit in every grid" reads the whole row
        hit = (grids[None, :] >= G) & valid[:, None]
        dist = tl.zeros([BLOCK, G_POW2], dtype=tl.float64)
        ix = tl.zeros([BLOCK, G_POW2], dtype=tl.int64)
        iy = tl.zeros([BLOCK, G_POW2], dtype=tl.int64)
        iz = tl.zeros([BLOCK, G_POW2], dtype=tl.int64)
        was_inside = tl.zeros([BLOCK], dtype=tl.int1)
        active = valid
        it = tl.zeros([], dtype=tl.int32)
        while (it < max_steps) & (tl.max(active.to(tl.int32), axis=0) > 0):
            inside = (vx >= 0) & (vx < size_x) & (vy >= 0) & (vy < size_y) & (vz >= 0) & (vz < size_z)
            all_hit = tl.min(hit.to(tl.int32), axis=1) > 0
            active = active & ~((was_inside & ~inside) | all_hit)
            take_x = (tx < ty) & (tx < tz)
            take_y = (tx >= ty) & (ty < tz)
            take_z = ~(take_x | take_y)
            exit_t = tl.where(take_x, tx, tl.where(take_y, ty, tz))
            looks = active & inside                                            # [BLOCK]
            record = looks[:, None] & ~hit
            dist = tl.where(record, exit_t[:, None], dist)
            ix = tl.where(record, vx[:, None], ix)
            iy = tl.where(record, vy[:, None], iy)
            iz = tl.where(record, vz[:, None], iz)
            cell = base + (vx * size_y + vy) * size_z + vz                     # inside the grid where `looks`
            occupied = tl.load(occ_ptr + cell[:, None] + grids[None, :] * grid_volume,
                               mask=looks[:, None] & real_grid, other=0)
            hit = hit | ((occupied != 0) & looks[:, None])
            was_inside = was_inside | looks
            vx = tl.where(take_x & active, vx + sx, vx)
            vy = tl.where(take_y & active, vy + sy, vy)
            vz = tl.where(take_z & active, vz + sz, vz)
            tx = tl.where(take_x & active, tx + dtx, tx)
            ty = tl.where(take_y & active, ty + dty, ty)
            tz = tl.where(take_z & active, tz + dtz, tz)
            it += 1
        out = rays[:, None] * G + grids[None, :]
        keep = valid[:, None] & real_grid
        tl.store(dist_ptr + out, dist, mask=keep)
        tl.store(index_ptr + out * 3, ix, mask=keep)
        tl.store(index_ptr + out * 3 + 1, iy, mask=keep)
        tl.store(index_ptr + out * 3 + 2, iz, mask=keep)

    return traverse_kernel


def traverse_triton(occ_flat, spatial_shape, num_grids, base, voxel, step, t_max, t_delta, max_steps):
    """`ray_iou._traverse` by the Triton kernel (same arguments, tensors on CUDA or, under Triton's interpreter, on the
    CPU); returns float64 [R, G] distances and int64 [R, G, 3] voxels."""
    num_rays = voxel.shape[0]
    size_x, size_y, size_z = (int(s) for s in spatial_shape)
    device = voxel.device
    dist = torch.empty(num_rays, num_grids, dtype=torch.float64, device=device)
    index = torch.empty(num_rays, num_grids, 3, dtype=torch.int64, device=device)
    g_pow2 = 1 << max(int(num_grids) - 1, 0).bit_length()
    grid = (-(-num_rays // BLOCK),)
    _build()[grid](occ_flat.view(torch.uint8), base.contiguous(), voxel.contiguous(), step.contiguous(),
                   t_max.contiguous(), t_delta.contiguous(), dist, index, num_rays, size_x, size_y, size_z,
                   size_x * size_y * size_z, int(max_steps), G=int(num_grids), G_POW2=g_pow2, BLOCK=BLOCK,
                   enable_fp_fusion=False)
    return dist, index
