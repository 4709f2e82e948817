"""Shared by the LiDAR tests (tests/loaders/pipelines/test_points.py, tests/tools/synthetic/test_lidar_sweeps.py):
the float32 rounding bound of the loading steps' point transforms."""
import numpy as np

U32 = 2.0 ** -24   # float32 unit roundoff


def float32_bound(matrix, points, translation=0.0):
    """Per point and coordinate, `[N, 3]`: a bound on |float32 result - exact| of a sweep's points moved by
    `float32(float32(p @ R.T) + t)` and then by a float32 4x4 matmul with the float32-rounded `matrix` (LiDAR -> ego).

    Each rounding adds at most u = 2^-24 times the magnitude of the terms it rounds: 2 roundings before the matmul,
    1 of the matrix entries, <= 4 of the 4-term dot product, and 1 spare: 8 u times |matrix| @ (|p| + |t|) + |t_m|.
    """
    magnitude = np.abs(matrix[:3, :3]) @ (np.abs(points) + np.abs(translation)).T + np.abs(matrix[:3, 3:4])
    return 8 * U32 * magnitude.T
