"""The CPD module of OPUS-V2 ("Continuous Prediction Discretization", class `Densifier` in the official code).

One per decoder layer (docs/opusv2.md, "CPD"). It turns the layer's predicted points and their
32-channel point features into class logits on a sparse set of 0.4 m voxels:

1. points (normalised) -> metres; voxel of each point from the *detached* points, clamped into the
   grid (a point outside the range lands in a border voxel, it is not dropped: [QUIRK] kept);
2. point input = [p - voxel centre (3), p - query centroid (3), point feature (32)] = 38 channels;
3. two PointPillars-style VFE layers (Linear without bias + BatchNorm1d + ReLU, per-voxel max):
   38 -> 32 (+ the voxel max, concatenated: 64) -> 64, max per voxel -> `[U, 64]`; in training the
   BatchNorm statistics are those of each sample's own points (`PFNLayer.normalise`), as one sample per GPU
   computes them;
4. regular sparse conv 3x3x3 (64 -> 64; the active set grows by one voxel) -> ReLU -> submanifold
   conv 3x3x3 (64 -> 17) on that grown set -> logits `[U', 17]`.

Frames: points and voxel centres are metres in the occupancy frame (the ego frame of the key frame,
flipped by the BDA augmentation in training); voxel indices (b, x, y, z) address the 200x200x16 grid.

Symbol legend:
    B   batch size;  Q  queries;  P  points per query;  N = B*Q*P points
    C_p point-feature channels (32);  C_v VFE output channels (64);  K  classes (17)
    U   occupied voxels (unique voxels of the N points);  U'  output voxels (U dilated by one voxel)
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.benchmarks import OCC3D_NUSCENES

from .sparse_conv import SparseConv3d, SubMConv3d, scatter_max

__all__ = ['PFNLayer', 'Densifier']


class PFNLayer(nn.Module):
    """A VFE layer: h = ReLU(BN(Linear(x))) per point, then the per-voxel channel maximum.

    Args:
        in_channels (int): point feature width in.
        out_channels (int): output width. A non-last layer computes out_channels // 2 channels and
            returns them concatenated with their voxel maximum (PointPillars' PFN), so its output is
            out_channels wide per *point*; the last layer returns the voxel maximum, per *voxel*.
        use_norm (bool): BatchNorm1d (eps 1e-3, momentum 0.01) after a bias-free Linear; False: a Linear
            with bias and no norm (not used by OPUS-V2).
        last_layer (bool): see out_channels.
    """

    def __init__(self, in_channels, out_channels, use_norm=True, last_layer=False):
        super().__init__()
        self.last_vfe = last_layer
        self.use_norm = use_norm
        if not last_layer:
            out_channels = out_channels // 2
        self.units = out_channels
        # the BatchNorm's shift replaces the bias (and the official checkpoints have none)
        self.linear = nn.Linear(in_channels, out_channels, bias=not use_norm)
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01) if use_norm else None

    def normalise(self, h, num_samples):
        """The BatchNorm of `h` `[N, C]`, rows in (sample, point) order with N / num_samples points per sample.

        In training each sample's points are normalised by their own statistics (mean, biased variance over the
        sample's points, not voxels), as the original computes them at one sample per GPU (its 8 GPUs x 1): every
        split of the total batch over GPUs then trains the same function (docs/opusv2.md, "The CPD module"). The
        running statistics move by the mean of the samples' statistics (batch mean, unbiased variance) with the
        layer's momentum; one sample is nn.BatchNorm1d itself. In eval mode the running statistics normalise
        every point.
        """
        norm = self.norm
        if num_samples == 1 or not norm.training:
            return norm(h)
        if h.shape[0] % num_samples:
            raise ValueError(f'PFNLayer: {h.shape[0]} points do not split into {num_samples} equal samples')
        rows = h.view(num_samples, -1, h.shape[1])
        out = torch.cat([F.batch_norm(r, None, None, norm.weight, norm.bias, True, 0.0, norm.eps) for r in rows])
        if norm.track_running_stats:
            with torch.no_grad():
                norm.num_batches_tracked.add_(1)
                factor = (1.0 / float(norm.num_batches_tracked)) if norm.momentum is None else norm.momentum
                norm.running_mean.mul_(1 - factor).add_(rows.mean(dim=1).mean(dim=0), alpha=factor)
                norm.running_var.mul_(1 - factor).add_(rows.var(dim=1, unbiased=True).mean(dim=0), alpha=factor)
        return out

    def forward(self, x, inverse, num_voxels, num_samples=1):
        """
        Args:
            x (Tensor): `[N, C_in]` point features, rows in (sample, point) order.
            inverse (Tensor): int64 `[N]`, voxel (row of the unique voxel list) of each point.
            num_voxels (int): U.
            num_samples (int): B, samples of the batch (each N / B points): the BatchNorm's training statistics
                are per sample (`normalise`).
        Returns:
            Tensor: `[U, C_out]` (last layer) or `[N, 2 * C_out // 2]` = [h, voxel max of h] (other layers).
        """
        h = self.linear(x)
        if self.norm is not None:
            h = self.normalise(h, num_samples)
        h = torch.relu(h)
        voxel_max = scatter_max(h, inverse, num_voxels)
        if self.last_vfe:
            return voxel_max
        return torch.cat([h, voxel_max[inverse]], dim=1)


class Densifier(nn.Module):
    """CPD module: points + point features -> sparse voxel logits (one per decoder layer).

    Args:
        in_channels (int): C_p, point-feature channels (32 = the decoder's num_pt_channels).
        pfn_channels (sequence[int]): VFE widths ([64, 64]).
        num_classes (int): K (17).
        pc_range (sequence[6] | Tensor): (x_min, y_min, z_min, x_max, y_max, z_max), metres.
        voxel_num (sequence[3] | Tensor): grid size (200, 200, 16).
    The defaults of the last three are the Occ3D-nuScenes description's (core/benchmarks/); the head
    passes its own.

    `pc_range` (float32 [6]) and `voxel_num` (int64 [3]) are buffers, as in the official state dicts.
    """

    def __init__(self, in_channels=32, pfn_channels=(64, 64), num_classes=OCC3D_NUSCENES.num_classes,
                 pc_range=OCC3D_NUSCENES.point_cloud_range, voxel_num=OCC3D_NUSCENES.grid_shape):
        super().__init__()
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.register_buffer('pc_range', torch.as_tensor(pc_range, dtype=torch.float32).clone().reshape(6))
        self.register_buffer('voxel_num', torch.as_tensor(voxel_num, dtype=torch.long).clone().reshape(3))
        self._voxel_num = [int(v) for v in self.voxel_num.tolist()]   # host copy: no device syncs
        filters = [self.in_channels + 6] + list(pfn_channels)
        self.pfn_layers = nn.ModuleList([
            PFNLayer(filters[i], filters[i + 1], use_norm=True, last_layer=i >= len(filters) - 2)
            for i in range(len(filters) - 1)])
        c_v = filters[-1]
        # named as spconv's SparseSequential children (0, 1, 2), so the state-dict keys match
        self.cls_branch = nn.ModuleList([
            SparseConv3d(c_v, c_v, 3, 1, 1, indice_key='densifier1'),
            nn.ReLU(inplace=True),
            SubMConv3d(c_v, self.num_classes, 3, 1, 1, indice_key='densifier2')])

    @torch.no_grad()
    def init_weights(self):
        """Prior probability 0.01 on every class logit (the rest keeps the PyTorch/spconv defaults)."""
        nn.init.constant_(self.cls_branch[2].bias, -math.log((1 - 0.01) / 0.01))

    def voxelize(self, points):
        """Voxel of each point and its centre (no gradient).

        Args:
            points (Tensor): `[..., 3]` metres (detached).
        Returns:
            tuple: voxel indices int64 `[..., 3]` (x, y, z), clamped to the grid; centres `[..., 3]` metres.
        """
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        size = self.voxel_num.to(points.dtype)
        # the official arithmetic: re-encode to [0, 1], scale by the voxel count, floor, clamp (not drop)
        encoded = (points - lo) / (hi - lo)
        loc = torch.floor(encoded * size)
        loc = torch.minimum(torch.maximum(loc, torch.zeros_like(size)), size - 1)
        centre = (loc + 0.5) / size * (hi - lo) + lo
        return loc.long(), centre

    def point_inputs(self, pt_feats, points):
        """Steps 1-2: the VFE input of every point and its voxel.

        Args:
            pt_feats (Tensor): `[B, Q, P, C_p]` point features.
            points (Tensor): `[B, Q, P, 3]` normalised points (not detached: the class loss reaches the
                regression branch through p - voxel centre and p - query centroid).
        Returns:
            tuple: point inputs `[N, 6 + C_p]` (rows in (b, q, p) order); int64 `[N]` voxel of each point as the
            linear index ((b * X + x) * Y + y) * Z + z into the `[B, X, Y, Z]` grids (no gradient).
        """
        if pt_feats.dim() != 4 or points.shape[:3] != pt_feats.shape[:3] or points.shape[-1] != 3:
            raise ValueError(f'Densifier: expected point features [B, Q, P, {self.in_channels}] and points '
                             f'[B, Q, P, 3], got {tuple(pt_feats.shape)} and {tuple(points.shape)}')
        if pt_feats.shape[-1] != self.in_channels:
            raise ValueError(f'Densifier: point features have {pt_feats.shape[-1]} channels, built for '
                             f'{self.in_channels}')
        B = points.shape[0]
        X, Y, Z = self._voxel_num
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        metres = points * (hi - lo) + lo                                      # [B, Q, P, 3]
        with torch.no_grad():
            loc, centre = self.voxelize(metres.detach())
            batch = torch.arange(B, device=points.device).view(B, 1, 1).expand(points.shape[:3])
            uid = ((batch * X + loc[..., 0]) * Y + loc[..., 1]) * Z + loc[..., 2]
        query_centre = metres.mean(dim=2, keepdim=True)                       # [B, Q, 1, 3]
        x = torch.cat([metres - centre, metres - query_centre, pt_feats], dim=-1).reshape(-1, 6 + self.in_channels)
        return x, uid.reshape(-1)

    def forward(self, pt_feats, points):
        """
        Args:
            pt_feats (Tensor): `[B, Q, P, C_p]` point features.
            points (Tensor): `[B, Q, P, 3]` normalised points (`point_inputs`).
        Returns:
            tuple: logits `[U', K]` float32, voxel indices int64 `[U', 4]` (b, x, y, z) sorted by (b, x, y, z).
        """
        B = points.shape[0]
        X, Y, Z = self._voxel_num
        x, uid = self.point_inputs(pt_feats, points)
        with torch.no_grad():
            uniq, inverse = torch.unique(uid, sorted=True, return_inverse=True)
        num_voxels = uniq.shape[0]
        for pfn in self.pfn_layers:
            x = pfn(x, inverse, num_voxels, B)                                # ends as [U, C_v]
        coords = torch.stack([uniq // (X * Y * Z), (uniq // (Y * Z)) % X, (uniq // Z) % Y, uniq % Z], dim=1)
        conv, relu, subm = self.cls_branch
        y, coords = conv(x, coords, B, (X, Y, Z))
        logits, coords = subm(relu(y), coords, B, (X, Y, Z))
        return logits, coords
