"""RayIoU origins (docs/evaluation.md, "RayIoU"): poses, scene grouping, the 39 m filter and the choice of 8
origins. The pose helpers themselves: tests/core/test_geometry.py."""
import math

import numpy as np
import pytest

from evaluation.ray_origins import RayOrigins


def yaw_quaternion(degrees):
    half = math.radians(degrees) / 2
    return [math.cos(half), 0.0, 0.0, math.sin(half)]


def info(scene, token, ego_xy, yaw=0.0, lidar=(1.0, 0.0, 2.0), lidar_q=(1.0, 0.0, 0.0, 0.0)):
    return dict(scene_name=scene, token=token, lidar2ego_translation=list(lidar), lidar2ego_rotation=list(lidar_q),
                ego2global_translation=[ego_xy[0], ego_xy[1], 0.0], ego2global_rotation=yaw_quaternion(yaw))


def test_origins_hand_computed():
    # LiDAR 1 m ahead of and 2 m above the ego origin. Frames: ego at (100, 50) yaw 0, (110, 50)
    # yaw 0, (110, 60) yaw 90 deg. LiDARs in global: (101, 50, 2), (111, 50, 2), (110, 61, 2).
    infos = [info('scene-a', 't0', (100, 50)), info('scene-a', 't1', (110, 50)),
             info('scene-a', 't2', (110, 60), yaw=90)]
    origins = RayOrigins(infos)
    # cos/sin of 45 degrees make the float64 pose products inexact (~1e-13 m), then the LiDAR-frame positions
    # (|v| <= 11 m) are stored in float32 (<= half an ulp, 2^-21 m below 16 m): one ulp, 2^-20 m, bounds both
    atol = 2.0 ** -20
    np.testing.assert_allclose(origins[0], [[1, 0, 2], [11, 0, 2], [10, 11, 2]], atol=atol)
    # In frame 2 (yaw 90 at (110, 60)) a global offset (dx, dy) becomes (dy, -dx).
    np.testing.assert_allclose(origins[2], [[-10, 9, 2], [-10, -1, 2], [1, 0, 2]], atol=atol)
    assert origins[1].dtype == np.float64 and origins[1].shape == (3, 3)


def test_frames_of_other_scenes_are_not_used():
    infos = [info('scene-a', 't0', (0, 0)), info('scene-b', 'u0', (5, 0)), info('scene-a', 't1', (3, 0)),
             info('scene-b', 'u1', (7, 0))]
    origins = RayOrigins(infos)
    # yaw 0 and whole-metre offsets: identity rotations and integer sums, exact in float64 and float32
    np.testing.assert_array_equal(origins[0], [[1, 0, 2], [4, 0, 2]])
    np.testing.assert_array_equal(origins[3], [[-1, 0, 2], [1, 0, 2]])


def test_xy_limit_is_strict():
    infos = [info('s', 't0', (0, 0)), info('s', 't1', (38, 0)), info('s', 't2', (0, 38)), info('s', 't3', (-40, 0)),
             info('s', 't4', (0, -39.5))]
    # LiDAR x = ego x + 1: t1 at exactly 39 (dropped), t3 at -39 (dropped); t2 at y = 38 (kept).
    np.testing.assert_array_equal(RayOrigins(infos)[0], [[1, 0, 2], [1, 38, 2]])  # yaw 0, offsets k/2 m: exact


def test_at_most_eight_origins_evenly_spread():
    infos = [info('s', f't{i}', (2.0 * i, 0)) for i in range(12)]
    got = RayOrigins(infos)[0]
    # round(linspace(0, 11, 8)) = 0, 2, 3, 5, 6, 8, 9, 11
    expected_x = [1 + 2.0 * i for i in (0, 2, 3, 5, 6, 8, 9, 11)]
    np.testing.assert_array_equal(got[:, 0], expected_x)  # yaw 0, whole metres: exact
    assert got.shape == (8, 3)
    assert RayOrigins(infos, max_origins=20)[0].shape == (12, 3)


def test_lidar_frame_position_is_rounded_to_float32():
    infos = [info('s', 't0', (0, 0), lidar=(0, 0, 0)), info('s', 't1', (0.1, 0), lidar=(0, 0, 0))]
    got = RayOrigins(infos)[0]
    assert got[1, 0] == float(np.float32(0.1)) != 0.1


def test_missing_pose_key_is_reported():
    bad = info('s', 't0', (0, 0))
    del bad['ego2global_rotation']
    with pytest.raises(KeyError, match='ego2global_rotation'):
        RayOrigins([bad])[0]
    with pytest.raises(KeyError, match='scene_name'):
        RayOrigins([{'token': 'x'}])
