"""Geometry shared by the data side, the model, the metrics and the tools (docs/method.md, "Symbols and frames").

Conventions:
* column vectors, ``p_dst = R @ p_src + t``; 4x4 homogeneous transforms are float64 numpy arrays;
* quaternions are nuScenes' ``(w, x, y, z)`` (any norm; normalised before use);
* points of the decoder are *normalised* to the point-cloud range box,
  ``n = (p - range_min) / (range_max - range_min)`` per axis ("encode"), metres otherwise ("decode");
* occupancy grids are dense label arrays ``[X, Y, Z]`` indexed ``[x, y, z]``, free = `FREE_LABEL`.

The matrix helpers need numpy only; `encode_points` / `decode_points` work on torch tensors.
"""
import numpy as np
import torch

from .occ3d import FREE_LABEL, GRID_SHAPE

__all__ = ['quaternion_to_matrix', 'as_rotation_matrix', 'rigid_transform', 'rigid_inverse', 'pad_intrinsic',
           'encode_points', 'decode_points', 'dense_from_sparse']


# ------------------------------------------------------------------------------------------- rotations
def quaternion_to_matrix(quaternion):
    """Rotation matrix of a ``(w, x, y, z)`` quaternion (normalised first): float64 ``[3, 3]``.

    The textbook formula. pyquaternion (which the original's data tools and nuscenes-devkit use)
    multiplies 4x4 matrices instead; the two agree to 1e-15 (tests/core/test_geometry.py).
    """
    q = np.asarray(quaternion, dtype=np.float64).reshape(-1)
    if q.shape != (4,):
        raise ValueError(f'a rotation quaternion needs 4 numbers (w, x, y, z), got {q.shape[0]}')
    norm = np.sqrt(np.dot(q, q))
    if norm == 0:
        raise ValueError('zero quaternion: the info pickle holds no valid rotation')
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def as_rotation_matrix(rotation):
    """A ``(w, x, y, z)`` quaternion (nuScenes info format) or a 3x3 matrix -> float64 ``[3, 3]``."""
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape == (3, 3):
        return rotation
    return quaternion_to_matrix(rotation)


# ------------------------------------------------------------------------------- 4x4 rigid transforms
def rigid_transform(rotation, translation):
    """4x4 float64 homogeneous transform ``[[R, t], [0, 0, 0, 1]]``.

    Args:
        rotation: ``(w, x, y, z)`` quaternion or 3x3 matrix.
        translation (sequence[float]): 3 values, metres.
    """
    mat = np.eye(4)
    mat[:3, :3] = as_rotation_matrix(rotation)
    mat[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return mat


def rigid_inverse(transform):
    """Inverse of a 4x4 rigid transform: ``[[R^T, R^T (-t)], [0, 0, 0, 1]]`` (exact transpose, no
    matrix inversion; the product is formed as nuscenes-devkit's ``transform_matrix(inverse=True)``)."""
    transform = np.asarray(transform, dtype=np.float64)
    # A contiguous copy: numpy's dot takes another summation path for strided views, which can
    # change the last bit of the translation.
    rot_t = np.ascontiguousarray(transform[:3, :3]).T
    inv = np.eye(4)
    inv[:3, :3] = rot_t
    inv[:3, 3] = rot_t.dot(-transform[:3, 3])
    return inv


def pad_intrinsic(intrinsic):
    """3x3 camera intrinsic -> 4x4 (identity with K in the top-left), so that ``pad_intrinsic(K) @
    world2cam`` maps homogeneous points to rows ``(u*d, v*d, d, 1)``."""
    k = np.eye(4)
    k[:3, :3] = intrinsic
    return k


# ------------------------------------------------------------------------ normalised decoder points
def decode_points(points, pc_range):
    """Normalised ``[..., 3]`` tensor -> metres (ego frame), ``pc_range = (x0, y0, z0, x1, y1, z1)``.

    Per axis with Python scalars (no host-to-device copy, so it can run inside a CUDA graph capture);
    in float32 the scalars round to the same constants as float32 tensors would.
    """
    return torch.stack([points[..., i] * (pc_range[i + 3] - pc_range[i]) + pc_range[i] for i in range(3)], -1)


def encode_points(points, pc_range):
    """Metres ``[..., 3]`` tensor -> normalised to `pc_range` (inverse of `decode_points`)."""
    return torch.stack([(points[..., i] - pc_range[i]) / (pc_range[i + 3] - pc_range[i]) for i in range(3)], -1)


# ----------------------------------------------------------------------- sparse -> dense label grids
def dense_from_sparse(sem_pred, occ_loc, shape=GRID_SHAPE, free_label=FREE_LABEL):
    """Dense uint8 label grid ``[X, Y, Z]``: `free_label` everywhere, ``sem_pred[m]`` at ``occ_loc[m]``.

    Args:
        sem_pred (array): int ``[M]`` labels in ``[0, free_label]``.
        occ_loc (array): int ``[M, 3]`` voxel indices ``(x, y, z)``.
    Raises:
        ValueError: lengths differ, indices outside the grid or labels outside ``[0, free_label]``.
    """
    sem = np.asarray(sem_pred).reshape(-1)
    loc = np.asarray(occ_loc).reshape(-1, 3).astype(np.int64)
    if sem.shape[0] != loc.shape[0]:
        raise ValueError(f'sem_pred has {sem.shape[0]} labels but occ_loc {loc.shape[0]} voxels')
    if loc.size and ((loc < 0).any() or (loc >= np.asarray(shape)).any()):
        raise ValueError(f'occ_loc has voxel indices outside the grid {tuple(shape)} '
                         f'(min {loc.min(0).tolist()}, max {loc.max(0).tolist()}); expected (x, y, z) indices')
    if sem.size and (sem.min() < 0 or sem.max() > free_label):
        raise ValueError(f'sem_pred has labels outside [0, {free_label}]')
    dense = np.full(shape, free_label, dtype=np.uint8)
    dense[loc[:, 0], loc[:, 1], loc[:, 2]] = sem
    return dense
