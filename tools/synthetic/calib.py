"""The sensor rig of the synthetic car: approximately the nuScenes car's six cameras and top LiDAR.

The numbers approximate the calibration of the real nuScenes vehicle (camera positions on the roof,
yaw of each camera, focal lengths and principal points of the 1600x900 images; the LiDAR rotated
by about -90 degrees about z). They are rounded values, not a copy of any calibration file; small
pitch/roll angles are added so that every camera rotation is a full 3D rotation.

Frames: ego = nuScenes ego frame (x forward, y left, z up, metres, origin on the ground under the
rear axle); camera = OpenCV camera frame (x right, y down, z along the optical axis).
"""
import numpy as np

from core.occ3d import CAMERA_NAMES  # noqa: F401  (the camera order of the infos and the loaders)

from .geometry import rot_x, rot_y, rot_z

FULL_WIDTH, FULL_HEIGHT = 1600, 900

# name: (translation in ego [m], yaw [deg], pitch [deg], roll [deg], focal [px], cx [px], cy [px])
# at the full 1600x900 resolution.
_RIG = {
    'CAM_FRONT': ((1.70, 0.016, 1.51), 0.0, 0.6, -0.3, 1266.4, 816.3, 491.5),
    'CAM_FRONT_RIGHT': ((1.55, -0.493, 1.50), -55.0, 0.4, 0.2, 1260.8, 808.0, 495.3),
    'CAM_FRONT_LEFT': ((1.52, 0.495, 1.51), 55.0, 0.5, -0.2, 1272.6, 826.6, 479.8),
    'CAM_BACK': ((0.028, 0.003, 1.58), 180.0, 0.3, 0.4, 809.2, 829.2, 481.8),
    'CAM_BACK_LEFT': ((1.036, 0.485, 1.59), 110.0, 0.5, 0.3, 1256.7, 792.1, 492.8),
    'CAM_BACK_RIGHT': ((1.015, -0.480, 1.56), -110.0, 0.2, -0.4, 1259.5, 807.3, 501.2),
}
LIDAR_TRANSLATION = (0.944, 0.0, 1.840)
LIDAR_YAW_DEG = -90.1

# Cameras fire while the LiDAR sweeps past them, so each camera's key-frame image is a little
# off the sample (LiDAR) timestamp, as in nuScenes; seconds.
CAMERA_TIME_OFFSETS = {'CAM_FRONT': 0.012, 'CAM_FRONT_RIGHT': 0.020, 'CAM_FRONT_LEFT': 0.004,
                       'CAM_BACK': 0.045, 'CAM_BACK_LEFT': -0.008, 'CAM_BACK_RIGHT': 0.037}

# Forward-looking camera: optical axis = ego x, image right = ego -y, image down = ego -z.
_CAM_TO_EGO_AXES = np.array([[0., 0., 1.], [-1., 0., 0.], [0., -1., 0.]])


def camera_rotation(name):
    """3x3 rotation camera -> ego of camera `name`."""
    _, yaw, pitch, roll = _RIG[name][:4]
    return rot_z(np.deg2rad(yaw)) @ rot_y(np.deg2rad(pitch)) @ rot_x(np.deg2rad(roll)) @ _CAM_TO_EGO_AXES


def camera_translation(name):
    return np.array(_RIG[name][0], dtype=np.float64)


def image_size(scale):
    """(width, height) in pixels of images rendered at `scale` x 1600x900."""
    width, height = int(round(FULL_WIDTH * scale)), int(round(FULL_HEIGHT * scale))
    if width < 16 or height < 9:
        raise ValueError(f'image scale {scale} gives {width}x{height} images; use a scale >= 0.01')
    return width, height


def camera_intrinsic(name, scale):
    """3x3 intrinsic matrix of camera `name` for images of image_size(scale) pixels.

    Pixel convention: integer coordinates are pixel centres (OpenCV / nuScenes). The matrix is
    scaled so that the image border maps to the same rays as at full resolution.
    """
    f, cx, cy = _RIG[name][4:]
    width, height = image_size(scale)
    sx, sy = width / FULL_WIDTH, height / FULL_HEIGHT
    return np.array([[f * sx, 0., (cx + 0.5) * sx - 0.5],
                     [0., f * sy, (cy + 0.5) * sy - 0.5],
                     [0., 0., 1.]])


def lidar_rotation():
    return rot_z(np.deg2rad(LIDAR_YAW_DEG))


def lidar_translation():
    return np.array(LIDAR_TRANSLATION, dtype=np.float64)
