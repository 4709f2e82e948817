"""core/geometry.py: quaternions, 4x4 rigid transforms, normalised decoder points, sparse -> dense grids."""
import math

import numpy as np
import pytest
import torch

from core.geometry import (
    as_rotation_matrix,
    decode_points,
    dense_from_sparse,
    encode_points,
    pad_intrinsic,
    quaternion_to_matrix,
    rigid_inverse,
    rigid_transform,
)
from core.occ3d import FREE_LABEL, GRID_SHAPE, POINT_CLOUD_RANGE

EPS = float(np.finfo(np.float64).eps)   # 2.2e-16: float64 spacing at 1; one rounding is at most EPS / 2
U32 = 2.0 ** -24                        # float32 unit roundoff: one rounding moves a value by at most U32 of it


def yaw_quaternion(degrees):
    half = math.radians(degrees) / 2
    return [math.cos(half), 0.0, 0.0, math.sin(half)]


def rodrigues(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_quaternion_to_matrix():
    np.testing.assert_array_equal(quaternion_to_matrix([1, 0, 0, 0]), np.eye(3))  # 0s and 1s: exact arithmetic
    # cos/sin of pi/4, the norm, the division, a product, a sum and 1 - x: ~6 roundings of O(1) numbers, <= 3 EPS
    np.testing.assert_allclose(quaternion_to_matrix(yaw_quaternion(90)), [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                               atol=4 * EPS)
    rng = np.random.default_rng(0)
    for _ in range(5):
        axis, angle = rng.normal(size=3), rng.uniform(-math.pi, math.pi)
        q = np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis / np.linalg.norm(axis)])
        # each side ~10-15 float64 roundings of O(1) numbers (the Rodrigues side adds a 3x3 BLAS product and
        # sin/cos): <= ~12 EPS together; 1e-14 = 45 EPS
        np.testing.assert_allclose(quaternion_to_matrix(q * 3.0), rodrigues(axis, angle), atol=1e-14)
    with pytest.raises(ValueError, match='4 numbers'):
        quaternion_to_matrix([1, 0, 0])
    with pytest.raises(ValueError, match='zero quaternion'):
        quaternion_to_matrix([0, 0, 0, 0])
    assert as_rotation_matrix(np.eye(3)) is not None and np.array_equal(as_rotation_matrix(np.eye(3)), np.eye(3))


def test_matches_pyquaternion_when_installed():
    pyquaternion = pytest.importorskip('pyquaternion')
    q = [0.7, -0.2, 0.5, 0.46]
    # entries are sums of products of the normalised components (sum of |terms| <= 1): ~10 roundings on each side,
    # pyquaternion's through a 4x4 BLAS product whose order and FMA use differ between CPUs: <= ~10 EPS apart
    np.testing.assert_allclose(quaternion_to_matrix(q), pyquaternion.Quaternion(q).rotation_matrix, atol=16 * EPS)


def test_rigid_transform_inverse():
    q = [0.9, 0.1, -0.3, 0.2]
    mat = rigid_transform(q, [1, 2, 3])
    inv = rigid_inverse(mat)
    # R^T R: R orthonormal to ~6 EPS; the translation column cancels R^T t against R^T (-t), two 3-term dot
    # products over |t|_1 = 6 m, each <= 3 * 6 * EPS / 2: ~20 EPS = 4.4e-15 in all; 1e-14
    np.testing.assert_allclose(inv @ mat, np.eye(4), atol=1e-14)
    np.testing.assert_array_equal(mat @ [0, 0, 0, 1], [1, 2, 3, 1])  # products with 0 and 1: exact
    np.testing.assert_array_equal(rigid_transform(np.eye(3), [0, 0, 0]), np.eye(4))
    np.testing.assert_array_equal(rigid_inverse(mat)[:3, :3], mat[:3, :3].T)  # a transpose, not an inversion


def test_rigid_inverse_is_nuscenes_transform_matrix_inverse_bit_for_bit():
    # nuscenes-devkit's transform_matrix(inverse=True), which the original's ego2lidar and ray origins use
    rng = np.random.default_rng(1)
    for _ in range(200):
        q, t = rng.normal(size=4), rng.normal(size=3) * 1000
        rot = quaternion_to_matrix(q)
        expected = np.eye(4)
        expected[:3, :3] = rot.T
        expected[:3, 3] = rot.T.dot(np.transpose(-np.array(t)))
        np.testing.assert_array_equal(rigid_inverse(rigid_transform(rot, t)), expected)


def test_pad_intrinsic():
    K = np.array([[1000.0, 0, 800], [0, 1000, 450], [0, 0, 1]])
    padded = pad_intrinsic(K)
    assert padded.shape == (4, 4) and np.array_equal(padded[:3, :3], K) and np.array_equal(padded[3], [0, 0, 0, 1])
    # a point 10 m in front of the camera maps to (u*d, v*d, d, 1)
    np.testing.assert_array_equal(padded @ [1.0, -0.5, 10.0, 1.0], [1000 + 8000, -500 + 4500, 10, 1])  # exact sums


def test_encode_decode_points():
    pc = list(POINT_CLOUD_RANGE)
    n = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 0.75]])
    m = decode_points(n, pc)
    # float32 n * size + lo: the size's and the expected constants' float32 storage, the product and the sum, each
    # <= U32 of a number <= 80 m
    assert torch.allclose(m, torch.tensor([[-40.0, -40.0, -1.0], [40.0, 40.0, 5.4], [0.0, -20.0, 3.8]]),
                          rtol=0, atol=4 * U32 * 80)
    # back: product, sum, difference and quotient each <= U32 of a number <= the range size (the size's own
    # rounding cancels): <= 4 U32 in normalised units
    assert torch.allclose(encode_points(m, pc), n, rtol=0, atol=4 * U32)
    # In float32 the Python-scalar form equals the float32-tensor form bit for bit.
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(1000, 3, generator=g) * 1.4 - 0.2
    lo = torch.tensor(pc[:3], dtype=torch.float32)
    size = torch.tensor(pc[3:], dtype=torch.float32) - lo
    assert torch.equal(decode_points(pts, pc), pts * size + lo)
    assert decode_points(pts.double(), pc).dtype == torch.float64


def test_dense_from_sparse():
    dense = dense_from_sparse(np.array([3, 16]), np.array([[0, 1, 2], [199, 199, 15]]))
    assert dense.shape == GRID_SHAPE and dense.dtype == np.uint8
    assert dense[0, 1, 2] == 3 and dense[199, 199, 15] == 16 and (dense != FREE_LABEL).sum() == 2
    assert (dense_from_sparse(np.zeros(0, int), np.zeros((0, 3), int), shape=(2, 2, 2)) == FREE_LABEL).all()
    with pytest.raises(ValueError, match='outside the grid'):
        dense_from_sparse(np.array([1]), np.array([[0, 0, 16]]))
    with pytest.raises(ValueError, match='2 labels but occ_loc 1'):
        dense_from_sparse(np.array([1, 2]), np.array([[0, 0, 0]]))
    with pytest.raises(ValueError, match=r'labels outside \[0, 17\]'):
        dense_from_sparse(np.array([18]), np.array([[0, 0, 0]]))
