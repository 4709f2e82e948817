"""Synthetic pinhole camera rigs for the sampling/decoder/detector tests (not the nuScenes rig)."""
import math

import numpy as np


def pinhole_rig(frames, yaws_deg, H, W, focal, step):
    """occ2img / lidar2img matrices [len(frames) * len(yaws_deg), 4, 4] float64, frame-major.

    Camera n of frame t sits at (-step * t, 0, 1.5) m (the car drove `step` m per frame), looks
    horizontally at yaw `yaws_deg[n]` (0 = +x, forward), principal point at the image centre.
    """
    K = np.array([[focal, 0, W / 2, 0], [0, focal, H / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    mats = []
    for t in frames:
        for yaw in yaws_deg:
            y = math.radians(yaw)
            R = np.stack([[math.sin(y), -math.cos(y), 0], [0, 0, -1], [math.cos(y), math.sin(y), 0]])
            E = np.eye(4)
            E[:3, :3] = R
            E[:3, 3] = -R @ np.array([-step * t, 0.0, 1.5])
            mats.append(K @ E)
    return np.stack(mats)
