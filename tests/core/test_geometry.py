"""core/geometry.py: quaternions, 4x4 rigid transforms, normalised decoder points, sparse -> dense grids."""
import math

import numpy as np
import pytest
import torch

from core.geometry import (as_rotation_matrix, decode_points, dense_from_sparse, encode_points, pad_intrinsic,
                           quaternion_to_matrix, rigid_inverse, rigid_transform)
from core.occ3d import FREE_LABEL, GRID_SHAPE, POINT_CLOUD_RANGE


def yaw_quaternion(degrees):
    half = math.radians(degrees) / 2
    return [math.cos(half), 0.0, 0.0, math.sin(half)]


def rodrigues(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_quaternion_to_matrix():
    np.testing.assert_allclose(quaternion_to_matrix([1, 0, 0, 0]), np.eye(3))
    np.testing.assert_allclose(quaternion_to_matrix(yaw_quaternion(90)), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(5):
        axis, angle = rng.normal(size=3), rng.uniform(-math.pi, math.pi)
        q = np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis / np.linalg.norm(axis)])
        np.testing.assert_allclose(quaternion_to_matrix(q * 3.0), rodrigues(axis, angle), atol=1e-14)
    with pytest.raises(ValueError, match='4 numbers'):
        quaternion_to_matrix([1, 0, 0])
    with pytest.raises(ValueError, match='zero quaternion'):
        quaternion_to_matrix([0, 0, 0, 0])
    assert as_rotation_matrix(np.eye(3)) is not None and np.array_equal(as_rotation_matrix(np.eye(3)), np.eye(3))


def test_matches_pyquaternion_when_installed():
    pyquaternion = pytest.importorskip('pyquaternion')
    q = [0.7, -0.2, 0.5, 0.46]
    np.testing.assert_allclose(quaternion_to_matrix(q), pyquaternion.Quaternion(q).rotation_matrix, atol=1e-15)


def test_rigid_transform_inverse():
    q = [0.9, 0.1, -0.3, 0.2]
    mat = rigid_transform(q, [1, 2, 3])
    inv = rigid_inverse(mat)
    np.testing.assert_allclose(inv @ mat, np.eye(4), atol=1e-14)
    np.testing.assert_allclose(mat @ [0, 0, 0, 1], [1, 2, 3, 1])
    np.testing.assert_allclose(rigid_transform(np.eye(3), [0, 0, 0]), np.eye(4))
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
    np.testing.assert_allclose(padded @ [1.0, -0.5, 10.0, 1.0], [1000 + 8000, -500 + 4500, 10, 1])


def test_encode_decode_points():
    pc = list(POINT_CLOUD_RANGE)
    n = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 0.75]])
    m = decode_points(n, pc)
    assert torch.allclose(m, torch.tensor([[-40.0, -40.0, -1.0], [40.0, 40.0, 5.4], [0.0, -20.0, 3.8]]))
    assert torch.allclose(encode_points(m, pc), n)
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
