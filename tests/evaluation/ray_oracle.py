"""Test oracle of the RayIoU ray caster: the traversal of one ray as a literal loop in Python floats.

`evaluation.ray_iou.cast_rays` (vectorised PyTorch) must agree with it bit for bit: same hit voxel,
same distance (docs/evaluation.md, "The ray caster"). Not product code: only the tests use it.
"""
import math

import numpy as np

from evaluation.ray_iou import MAX_RAY_STEPS

_DBL_MAX = float(np.finfo(np.float64).max)


def cast_ray_scalar(occupied, origin, end, max_steps=MAX_RAY_STEPS):
    """Reference traversal of one ray in plain Python floats (IEEE double), written as a literal loop.

    Args:
        occupied (array-like): [X, Y, Z] truthy where occupied (numpy array or nested lists).
        origin, end (sequence of 3 floats): voxel units.
    Returns:
        (distance in voxel units (float), (x, y, z) voxel index (tuple of int)).
    """
    occupied = np.asarray(occupied)
    size_x, size_y, size_z = occupied.shape
    xo, yo, zo = (float(v) for v in origin)
    rx, ry, rz = float(end[0]) - xo, float(end[1]) - yo, float(end[2]) - zo
    length = math.sqrt(rx * rx + ry * ry + rz * rz)
    dx, dy, dz = rx / length, ry / length, rz / length
    vx, vy, vz = int(xo), int(yo), int(zo)
    sx = 1 if dx >= 0 else -1
    sy = 1 if dy >= 0 else -1
    sz = 1 if dz >= 0 else -1
    tx = (vx + (1 if sx > 0 else 0) - xo) / dx if dx != 0 else _DBL_MAX
    ty = (vy + (1 if sy > 0 else 0) - yo) / dy if dy != 0 else _DBL_MAX
    tz = (vz + (1 if sz > 0 else 0) - zo) / dz if dz != 0 else _DBL_MAX
    dtx = sx / dx if dx != 0 else _DBL_MAX
    dty = sy / dy if dy != 0 else _DBL_MAX
    dtz = sz / dz if dz != 0 else _DBL_MAX

    path = []  # (voxel, exit distance) of every in-grid voxel visited, in order
    was_inside = False
    for _ in range(max_steps):
        current = (vx, vy, vz)
        inside = 0 <= vx < size_x and 0 <= vy < size_y and 0 <= vz < size_z
        if inside:
            was_inside = True
        elif was_inside:
            break
        if tx < ty:
            if tx < tz:
                exit_t, vx, tx = tx, vx + sx, tx + dtx
            else:
                exit_t, vz, tz = tz, vz + sz, tz + dtz
        else:
            if ty < tz:
                exit_t, vy, ty = ty, vy + sy, ty + dty
            else:
                exit_t, vz, tz = tz, vz + sz, tz + dtz
        if inside:
            path.append((current, exit_t))
    for voxel, exit_t in path:
        if occupied[voxel]:
            return exit_t, voxel
    if path:
        return path[-1][1], path[-1][0]
    return 0.0, (0, 0, 0)
