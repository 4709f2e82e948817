"""Pipeline steps of OPUS-V2 (docs/opusv2.md, "data"): the occupancy-frame bookkeeping and the GT flip.

Frames: `ego` = the key frame's ego frame; `occ` = the frame the queries and the GT grid live in,
`occ = ego2occ @ ego` (identity at test, the BDA flip in training). The model projects with
`occ2img = ego2img @ inverse(ego2occ)`.

* `ComposeEgo2Img`: `ego2img[v] = lidar2img[v] @ ego2lidar` for all T*N views (the official V2 dataset
  composes the same "ego -> global -> camera -> pixels" chain from the poses; equal up to float32
  rounding), and `ego2occ = I` unless a step set it. Place it after `RandomTransformImage` (whose
  image-augmentation matrix is then part of `lidar2img`, and so of `ego2img`).
* `RandomTransformOcc`: BEVDet-style "BDA" on the ground truth only, with flips along x and y.
"""
import numpy as np
from mmdet.datasets.builder import PIPELINES

from .loading import LoadOccFromFile
from .transforms import merge_aug_conf

__all__ = ['ComposeEgo2Img', 'RandomTransformOcc']

# V2's configs call the Occ3D loader LoadOcc3DFromFile; it is V1's LoadOccFromFile
PIPELINES.register_module(name='LoadOcc3DFromFile', module=LoadOccFromFile)

DEFAULT_BDA_AUG_CONF = dict(rot_lim=(0.0, 0.0), scale_lim=(1.0, 1.0), flip_dx_ratio=0.5, flip_dy_ratio=0.5)
GRID_KEYS = ('voxel_semantics', 'mask_lidar', 'mask_camera')


@PIPELINES.register_module()
class ComposeEgo2Img:
    """Adds `ego2img` (T*N float32 [4, 4], rows (u*d, v*d, d, 1)) and, if absent, `ego2occ` = I (float64 [4, 4])."""

    def __call__(self, results):
        for key in ('lidar2img', 'ego2lidar'):
            if key not in results:
                raise KeyError(f'ComposeEgo2Img needs "{key}" in the results (from the dataset and the sweep loader)')
        ego2lidar = np.asarray(results['ego2lidar'], dtype=np.float64).reshape(4, 4)
        results['ego2img'] = [(np.asarray(m, dtype=np.float64) @ ego2lidar).astype(np.float32)
                              for m in results['lidar2img']]
        results.setdefault('ego2occ', np.eye(4))
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}()'


@PIPELINES.register_module()
class RandomTransformOcc:
    """Random flips of the occupancy ground truth along x and/or y, recorded in `ego2occ` (training only).

    Per sample, in this order (numpy's global RNG, after the image augmentation's draws): rotation
    U(rot_lim) degrees and scale U(scale_lim) are drawn (the configs keep the defaults (0, 0), (1, 1):
    nothing rotates or scales), then flip_dx = U(0, 1) < flip_dx_ratio, flip_dy = U(0, 1) < flip_dy_ratio.
    bda = [[F S Rz, 0], [0, 1]] with F = diag(-1, 1, 1) if flip_dx times diag(1, -1, 1) if flip_dy;
    `ego2occ <- bda @ ego2occ`. flip_dx reverses the grids (`voxel_semantics`, `mask_lidar`,
    `mask_camera`, those present) along axis 0 (x), flip_dy along axis 1 (y): with the symmetric range
    [-40, 40] the voxel centre x maps to -x exactly. Images and `ego2img` are unchanged.

    Args:
        bda_aug_conf (dict): rot_lim, scale_lim, flip_dx_ratio, flip_dy_ratio (defaults as above).
            A rotation or scaling range other than (0, 0) / (1, 1) is not implemented (no V2 config uses it).
    """

    def __init__(self, bda_aug_conf=None):
        conf = merge_aug_conf('RandomTransformOcc', 'bda_aug_conf', bda_aug_conf, DEFAULT_BDA_AUG_CONF)
        if tuple(conf['rot_lim']) != (0.0, 0.0) or tuple(conf['scale_lim']) != (1.0, 1.0):
            raise NotImplementedError(f'RandomTransformOcc: only flips are implemented; got rot_lim '
                                      f'{conf["rot_lim"]} and scale_lim {conf["scale_lim"]} (use (0, 0) and (1, 1))')
        self.bda_aug_conf = conf

    def sample_augmentation(self):
        """One draw: (rotate [deg], scale, flip_dx, flip_dy); all four numbers are drawn, as the original."""
        c = self.bda_aug_conf
        rotate = np.random.uniform(*c['rot_lim'])
        scale = np.random.uniform(*c['scale_lim'])
        flip_dx = np.random.uniform() < c['flip_dx_ratio']
        flip_dy = np.random.uniform() < c['flip_dy_ratio']
        return rotate, scale, bool(flip_dx), bool(flip_dy)

    @staticmethod
    def bda_matrix(rotate, scale, flip_dx, flip_dy):
        """4x4 ego -> occupancy transform F @ S @ Rz (rotate in degrees about z)."""
        angle = rotate / 180 * np.pi
        rot = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
        flip = np.eye(3)
        if flip_dx:
            flip = flip @ np.diag([-1.0, 1.0, 1.0])
        if flip_dy:
            flip = flip @ np.diag([1.0, -1.0, 1.0])
        bda = np.eye(4)
        bda[:3, :3] = flip @ (scale * np.eye(3)) @ rot
        return bda

    def __call__(self, results):
        rotate, scale, flip_dx, flip_dy = self.sample_augmentation()
        for key in GRID_KEYS:
            if key in results:
                grid = results[key]
                if flip_dx:
                    grid = grid[::-1]
                if flip_dy:
                    grid = grid[:, ::-1]
                # a copy with positive strides: torch.from_numpy (collate) refuses negative ones
                results[key] = np.ascontiguousarray(grid)
        ego2occ = np.asarray(results.get('ego2occ', np.eye(4)), dtype=np.float64)
        results['ego2occ'] = self.bda_matrix(rotate, scale, flip_dx, flip_dy) @ ego2occ
        results['bda_aug'] = dict(rotate=rotate, scale=scale, flip_dx=flip_dx, flip_dy=flip_dy)
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(bda_aug_conf={self.bda_aug_conf})'
