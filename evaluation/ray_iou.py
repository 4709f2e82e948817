"""RayIoU (the SparseOcc protocol) and the voxel ray caster it uses (docs/evaluation.md, "RayIoU").

Ray casting works in *voxel units*: a point p (metres, ego frame) becomes (p - pc_min) / voxel_size,
so voxel (i, j, k) covers [i, i+1) x [j, j+1) x [k, k+1). Occupancy grids are indexed [x, y, z].

`cast_rays` is the traversal, vectorised in PyTorch (all rays at once, float64, CPU or CUDA) and on CUDA one Triton
kernel (evaluation/ray_cast_kernel.py, the same results). Its reference, the same loop for one ray in plain Python
floats, is a test oracle (tests/evaluation/ray_oracle.py); they agree exactly (same hit voxel, bit-identical
distance).
"""
import math

import numpy as np
import torch

from core.compiled import TritonKernel
from core.occ3d import LABEL_NAMES, POINT_CLOUD_RANGE, VOXEL_SIZE

from .miou import check_label_grid, nanmean_or_nan
from .ray_cast_kernel import traverse_triton

__all__ = ['generate_lidar_rays', 'rays_to_voxel_frame', 'cast_rays', 'traversal_state', 'RayIoU', 'RAY_THRESHOLDS',
           'MAX_RAY_STEPS', 'RAY_TRAVERSAL_KERNEL']

RAY_THRESHOLDS = (1, 2, 4)
# The ray caster gives up after this many voxel steps (docs/evaluation.md, "The ray caster"); a ray
# starting inside the 200 x 200 x 16 grid leaves it after at most 200 + 200 + 16 steps, so only rays
# that start outside can reach it.
MAX_RAY_STEPS = 1000
_DBL_MAX = float(np.finfo(np.float64).max)


def generate_lidar_rays():
    """Unit ray directions of the virtual LiDAR: 39 pitch angles x 360 azimuths (1 degree).

    Pitch angles are -(pi/2 - atan(k+1)) for k = 0..9, then extended by the last difference until
    an angle reaches 0.21 rad (the upper edge of the nuScenes LiDAR's field of view); the step is
    recomputed from the last two angles each time, as the original does, so the float rounding
    matches. Returns float32 [14040, 3] (x, y, z), pitch-major, azimuth 0..359 degrees minor.
    """
    pitch = [-(math.pi / 2 - math.atan(k + 1)) for k in range(10)]
    while pitch[-1] < 0.21:
        pitch.append(pitch[-1] + (pitch[-1] - pitch[-2]))
    rays = []
    for p in pitch:
        for azimuth in np.deg2rad(np.arange(0, 360, 1)):
            rays.append((np.cos(p) * np.cos(azimuth), np.cos(p) * np.sin(azimuth), np.sin(p)))
    return np.array(rays, dtype=np.float32)


def rays_to_voxel_frame(origins, rays, pc_min=POINT_CLOUD_RANGE[:3], voxel_size=VOXEL_SIZE[0], device='cpu'):
    """Ray start and end points in voxel units, rounded through float32 like the original.

    The original adds the float32 unit rays to the float64 origin, converts both points with a
    float32 `pc_min` / `voxel_size` (so 0.4 is really 0.4000000059604645) in float64 and hands
    float32 values to the CUDA kernel, which works in double. The end point only fixes the
    direction (the march does not stop there).

    Args:
        origins (array): float64 [K, 3] ray origins, metres, ego frame.
        rays (array | Tensor): float32 [R, 3] unit directions.
        device: where the points are computed (IEEE arithmetic: the same values anywhere).
    Returns:
        (starts, ends): float64 tensors [K * R, 3] (origin-major), exactly float32-representable.
    """
    origins = torch.as_tensor(np.asarray(origins, dtype=np.float64)).to(device).reshape(-1, 1, 3)
    rays = torch.as_tensor(rays, dtype=torch.float32).to(device).reshape(1, -1, 3)
    offset = torch.tensor(pc_min, dtype=torch.float32, device=device).double()
    scale = torch.tensor([voxel_size] * 3, dtype=torch.float32, device=device).double()
    ends = rays.double() + origins
    starts = ((origins - offset) / scale).float().double().expand(-1, rays.shape[1], -1)
    ends = ((ends - offset) / scale).float().double()
    return starts.reshape(-1, 3), ends.reshape(-1, 3)


def _ray_setup(origins, ends):
    """Amanatides-Woo initial state per ray (float64 tensors [R, 3])."""
    delta = ends - origins
    # Summed left to right like the C expression rx*rx + ry*ry + rz*rz.
    squared = delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1] + delta[:, 2] * delta[:, 2]
    # torch's float64 sqrt on the CPU (SIMD path) is not always correctly rounded (1 ulp off for
    # ~1% of inputs); numpy's is, like the C/CUDA sqrt of the original, so take it from numpy. CUDA's
    # float64 sqrt is correctly rounded (IEEE 754 round-to-nearest): torch's there.
    length = squared.sqrt() if squared.is_cuda else torch.from_numpy(np.sqrt(squared.numpy()))
    if bool((length == 0).any()):
        raise ValueError('a ray has its end point equal to its origin, so no direction; '
                         'give end points that differ from the origins')
    direction = delta / length[:, None]
    step = torch.where(direction >= 0, 1, -1).to(torch.int64)
    voxel = torch.trunc(origins).to(torch.int64)  # C int() truncates toward zero
    boundary = (voxel + (step > 0).to(torch.int64)).double()
    nonzero = direction != 0
    big = torch.full_like(direction, _DBL_MAX)
    t_max = torch.where(nonzero, (boundary - origins) / direction, big)
    t_delta = torch.where(nonzero, step.double() / direction, big)
    return voxel, step, t_max, t_delta


@torch.no_grad()
def cast_rays(occupancy, origins, ends, sample_index=None, max_steps=MAX_RAY_STEPS, compact_every=8):
    """First-hit voxel traversal of many rays through one or several occupancy grids.

    Semantics (docs/evaluation.md, "The ray caster"): start in the voxel containing the origin (int
    truncation), walk voxel by voxel (Amanatides-Woo; when two boundaries are crossed at the same
    parameter the step goes to z before y before x), stop when the ray leaves the grid after having
    been inside, or after `max_steps` steps. The hit is the first in-grid voxel on the path that is occupied; its
    distance is the ray parameter where the ray *exits* that voxel. Without a hit: the last in-grid
    voxel and its exit parameter. A ray that never enters the grid gets distance 0 and voxel
    (0, 0, 0), as zero-initialised outputs would give (only possible for origins outside the grid).

    Every grid of a sample is traced along the same path, so prediction and ground truth share one
    traversal; a ray stops early once it has hit in all grids.

    Args:
        occupancy (Tensor): bool [S, G, X, Y, Z] (S samples, G grids per sample), or [X, Y, Z].
        origins (Tensor): float64 [R, 3] ray starts, voxel units.
        ends (Tensor): float64 [R, 3] points fixing the ray directions, voxel units.
        sample_index (Tensor | None): int64 [R] sample of each ray (default all 0).
        max_steps (int): step limit.
        compact_every (int): steps between removals of finished rays in the PyTorch traversal (a speed knob only).
    Returns:
        dist (Tensor): float64 [R, G] hit (exit) distance in voxel units.
        index (Tensor): int64 [R, G, 3] (x, y, z) of the hit / last voxel.
    """
    state = traversal_state(occupancy, origins, ends, sample_index, max_steps)
    occ_flat, num_grids, voxel = state[0], state[2], state[4]
    if voxel.shape[0] == 0:
        return (torch.zeros(0, num_grids, dtype=torch.float64, device=occ_flat.device),
                torch.zeros(0, num_grids, 3, dtype=torch.int64, device=occ_flat.device))
    if occ_flat.is_cuda:
        out = RAY_TRAVERSAL_KERNEL(*state)
        if out is not None:
            return out
    return _traverse(*state, compact_every=compact_every)


def traversal_state(occupancy, origins, ends, sample_index=None, max_steps=MAX_RAY_STEPS):
    """`cast_rays`' arguments checked and set up for a traversal (on the occupancy's device): the flat bool occupancy,
    (X, Y, Z), G, `base` int64 [R] (the first cell of each ray's sample in the flat occupancy), `_ray_setup`'s voxel,
    step, t_max and t_delta, and max_steps: the arguments of `_traverse` and of the Triton kernel."""
    occupancy = torch.as_tensor(occupancy)
    if occupancy.dim() == 3:
        occupancy = occupancy[None, None]
    if occupancy.dim() != 5:
        raise ValueError(f'occupancy must be [X, Y, Z] or [S, G, X, Y, Z], got shape {tuple(occupancy.shape)}')
    device = occupancy.device
    num_samples, num_grids, size_x, size_y, size_z = occupancy.shape
    origins = torch.as_tensor(origins).to(device=device, dtype=torch.float64)
    ends = torch.as_tensor(ends).to(device=device, dtype=torch.float64)
    if origins.shape != ends.shape or origins.dim() != 2 or origins.shape[1] != 3:
        raise ValueError(f'origins and ends must both be [R, 3], got {tuple(origins.shape)} and {tuple(ends.shape)}')
    num_rays = origins.shape[0]
    if sample_index is None:
        sample_index = torch.zeros(num_rays, dtype=torch.int64, device=device)
    sample_index = torch.as_tensor(sample_index).to(device=device, dtype=torch.int64)
    if sample_index.numel() and (sample_index.min() < 0 or sample_index.max() >= num_samples):
        raise ValueError(f'sample_index must lie in [0, {num_samples}), the number of grids given')
    voxel, step, t_max, t_delta = _ray_setup(origins, ends)
    base = sample_index * (num_grids * size_x * size_y * size_z)
    return (occupancy.reshape(-1).to(torch.bool), (size_x, size_y, size_z), num_grids, base, voxel, step, t_max,
            t_delta, max_steps)


def _traverse(occ_flat, spatial_shape, num_grids, base, voxel, step, t_max, t_delta, max_steps, compact_every=8):
    """The traversal of `cast_rays` in PyTorch, all rays at once, from `traversal_state`; returns `cast_rays`'
    outputs."""
    device = occ_flat.device
    num_rays = voxel.shape[0]
    size_x, size_y, size_z = spatial_shape
    grid_volume = size_x * size_y * size_z
    out_dist = torch.zeros(num_rays, num_grids, dtype=torch.float64, device=device)
    out_index = torch.zeros(num_rays, num_grids, 3, dtype=torch.int64, device=device)
    grid_offsets = torch.arange(num_grids, device=device, dtype=torch.int64) * grid_volume
    strides = torch.tensor([size_y * size_z, size_z, 1], device=device, dtype=torch.int64)
    size = torch.tensor([size_x, size_y, size_z], device=device, dtype=torch.int64)
    ids = torch.arange(num_rays, device=device)
    was_inside = torch.zeros(num_rays, dtype=torch.bool, device=device)
    hit = torch.zeros(num_rays, num_grids, dtype=torch.bool, device=device)
    dist = out_dist.clone()
    index = out_index.clone()

    for it in range(max_steps):
        inside = ((voxel >= 0) & (voxel < size)).all(1)
        if it % compact_every == 0 and it > 0:
            done = (was_inside & ~inside) | hit.all(1)
            if bool(done.any()):
                out_dist[ids[done]] = dist[done]
                out_index[ids[done]] = index[done]
                keep = ~done
                ids, voxel, step, t_max, t_delta = ids[keep], voxel[keep], step[keep], t_max[keep], t_delta[keep]
                base, was_inside, hit, dist, index = base[keep], was_inside[keep], hit[keep], dist[keep], index[keep]
                inside = inside[keep]
                if ids.numel() == 0:
                    break
        t_x, t_y, t_z = t_max.unbind(1)
        take_x = (t_x < t_y) & (t_x < t_z)
        take_y = (t_x >= t_y) & (t_y < t_z)
        take = torch.stack((take_x, take_y, ~(take_x | take_y)), 1)
        exit_t = torch.where(take_x, t_x, torch.where(take_y, t_y, t_z))
        # A voxel keeps being recorded until the first occupied one: that gives both the hit and,
        # for rays without a hit, the last voxel inside the grid.
        record = inside[:, None] & ~hit
        dist = torch.where(record, exit_t[:, None], dist)
        index = torch.where(record[..., None], voxel[:, None, :], index)
        in_grid = torch.minimum(voxel.clamp(min=0), size - 1)
        flat = base + (in_grid * strides).sum(1)
        hit |= occ_flat[flat[:, None] + grid_offsets] & inside[:, None]
        was_inside |= inside
        voxel = voxel + take.to(torch.int64) * step
        t_max = torch.where(take, t_max + t_delta, t_max)
    out_dist[ids] = dist
    out_index[ids] = index
    return out_dist, out_index


# on CUDA: the traversal as one Triton kernel (the same results), or the PyTorch loop where it cannot be built
RAY_TRAVERSAL_KERNEL = TritonKernel(traverse_triton, _traverse, 'the Triton ray-traversal kernel',
                                    'the PyTorch traversal')


class RayIoU:
    """RayIoU accumulator: per-class ray counts over a whole evaluation set.

    For each sample and each of its origins, the same rays are cast through the predicted and the
    ground-truth label grids (occupied = label != free). A ray contributes only if it hits something
    in the ground truth; its class is the label of the hit voxel (free if nothing was hit) and its
    depth the hit distance in metres (float32, like the original). For threshold tau, a true positive
    is a ray with the same class in both and |d_pred - d_gt| < tau (strict).

    Args:
        class_names (sequence[str]): all labels, free last.
        thresholds (sequence[float]): depth thresholds in metres.
        rays (array | None): float32 [R, 3] unit directions (default: `generate_lidar_rays()`).
        pc_range (sequence[float]): grid box (x_min, y_min, z_min, x_max, y_max, z_max), metres.
        voxel_size (float): metres.
        device (str | torch.device): where rays are cast ('cpu' or 'cuda'); results are identical.
        max_steps (int): ray-caster step limit.
    """

    def __init__(self, class_names=LABEL_NAMES, thresholds=RAY_THRESHOLDS, rays=None,
                 pc_range=POINT_CLOUD_RANGE, voxel_size=VOXEL_SIZE[0], device='cpu', max_steps=MAX_RAY_STEPS):
        self.class_names = tuple(class_names)
        self.num_labels = len(self.class_names)
        self.free_label = self.num_labels - 1
        self.thresholds = tuple(thresholds)
        self.rays = generate_lidar_rays() if rays is None else np.asarray(rays, dtype=np.float32)
        self.pc_min = tuple(pc_range[:3])
        self.voxel_size = voxel_size
        self.device = torch.device(device)
        self.max_steps = max_steps
        self.gt_count = np.zeros(self.num_labels, dtype=np.int64)
        self.pred_count = np.zeros(self.num_labels, dtype=np.int64)
        self.tp_count = np.zeros((len(self.thresholds), self.num_labels), dtype=np.int64)
        self.num_samples = 0

    def cast(self, preds, gts, origins):
        """Cast the rays of several samples; returns per-ray labels and depths (no accumulation).

        Args:
            preds, gts (list[array]): S int label grids [X, Y, Z] (0..16, 17 = free).
            origins (list[array]): S float64 arrays [K_s, 3], ray origins in metres (ego frame).
        Returns:
            list of S dicts with int64 [K_s * R] `pred_label`, `gt_label` and float32 [K_s * R]
            `pred_depth`, `gt_depth` (metres), origin-major.
        """
        label, depth, counts = self._cast(preds, gts, origins)
        out, start = [], 0
        for n in counts:
            sl = slice(start, start + n)
            out.append(dict(pred_label=label[sl, 0].cpu().numpy(), gt_label=label[sl, 1].cpu().numpy(),
                            pred_depth=depth[sl, 0].cpu().numpy(), gt_depth=depth[sl, 1].cpu().numpy()))
            start += n
        return out

    def _cast(self, preds, gts, origins):
        """`cast` on the device: (int64 labels [sum K_s * R, 2] and float32 depths (metres) of the rays in the
        prediction (column 0) and the ground truth (column 1), samples and origins in order; rays per sample)."""
        if not (len(preds) == len(gts) == len(origins)):
            raise ValueError(f'got {len(preds)} predictions, {len(gts)} ground truths and {len(origins)} origin sets')
        grids, starts, ends, sample_index, counts = [], [], [], [], []
        rays = torch.from_numpy(self.rays).to(self.device)
        for s, (pred, gt, org) in enumerate(zip(preds, gts, origins)):
            gt = check_label_grid(gt, 'ground truth', self.num_labels)
            pred = check_label_grid(pred, 'prediction', self.num_labels, shape=gt.shape)
            org = np.asarray(org, dtype=np.float64).reshape(-1, 3)
            grids.append(torch.from_numpy(np.stack([pred, gt]).astype(np.uint8)))
            start, end = rays_to_voxel_frame(org, rays, self.pc_min, self.voxel_size, self.device)
            starts.append(start)
            ends.append(end)
            sample_index.append(torch.full((start.shape[0],), s, dtype=torch.int64, device=self.device))
            counts.append(start.shape[0])
        if not grids:
            return torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2), []
        labels = torch.stack(grids).to(self.device)  # [S, 2, X, Y, Z]
        sample_of_ray = torch.cat(sample_index)
        dist, index = cast_rays(labels != self.free_label, torch.cat(starts), torch.cat(ends), sample_of_ray,
                                max_steps=self.max_steps)
        # Distances leave the kernel as float32 and are scaled in float32, as in the original.
        depth = dist.float() * torch.tensor(self.voxel_size, dtype=torch.float32, device=dist.device)
        size_x, size_y, size_z = labels.shape[2:]
        flat = (((sample_of_ray[:, None] * 2 + torch.arange(2, device=self.device)) * size_x + index[..., 0])
                * size_y + index[..., 1]) * size_z + index[..., 2]
        return labels.reshape(-1)[flat].to(torch.int64), depth, counts

    def add_batch(self, preds, gts, origins):
        """Cast and accumulate several samples (arguments as in `cast`): `add_rays` of each sample's rays, the
        counts summed on the device."""
        label, depth, counts = self._cast(preds, gts, origins)
        self._count(label[:, 0], label[:, 1], depth[:, 0], depth[:, 1], len(counts))

    def add_rays(self, pred_label, gt_label, pred_depth, gt_depth):
        """Accumulate the counts of one sample's rays (int labels, float32 metre depths, all [R])."""
        self._count(*(torch.from_numpy(np.asarray(a)) for a in (pred_label, gt_label, pred_depth, gt_depth)), 1)

    def _count(self, pred_label, gt_label, pred_depth, gt_depth, num_samples):
        """Accumulate the counts of the rays of `num_samples` samples (int64 labels, float32 depths, tensors [R])."""
        valid = gt_label != self.free_label
        pred_label, gt_label = pred_label[valid], gt_label[valid]
        error = (pred_depth[valid] - gt_depth[valid]).abs()
        same = pred_label == gt_label
        counts = [gt_label, pred_label] + [gt_label[same & (error < tau)] for tau in self.thresholds]
        counts = torch.stack([torch.bincount(c, minlength=self.num_labels) for c in counts]).cpu().numpy()
        self.gt_count += counts[0]
        self.pred_count += counts[1]
        self.tp_count += counts[2:]
        self.num_samples += num_samples

    def per_class_iou(self):
        """float64 [len(thresholds), num_labels - 1] IoU per threshold and class (free dropped, NaN = no rays)."""
        denom = (self.gt_count + self.pred_count)[None, :] - self.tp_count
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = self.tp_count / denom.astype(np.float64)
        return iou[:, :-1]

    def summary(self):
        """dict(RayIoU=mean over all thresholds and classes, 'RayIoU@<tau>'=mean over classes), fractions."""
        iou = self.per_class_iou()
        out = {'RayIoU': nanmean_or_nan(iou)}
        for j, tau in enumerate(self.thresholds):
            out[f'RayIoU@{tau:g}'] = nanmean_or_nan(iou[j])
        return out

    def table(self):
        """The per-class PrettyTable of the original (fractions, 3 decimals, MEAN row)."""
        from prettytable import PrettyTable
        iou = self.per_class_iou()
        table = PrettyTable(['Class Names'] + [f'RayIoU@{tau:g}' for tau in self.thresholds])
        table.float_format = '.3'
        for i, name in enumerate(self.class_names[:-1]):
            table.add_row([name] + [iou[j, i] for j in range(len(self.thresholds))],
                          divider=(i == len(self.class_names) - 2))
        summary = self.summary()
        table.add_row(['MEAN'] + [summary[f'RayIoU@{tau:g}'] for tau in self.thresholds])
        return table.get_string()
