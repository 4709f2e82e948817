"""The synthetic world written in the Occ3D-Waymo on-disk layout (tools/make_synthetic_waymo.py).

The same procedural streets as the nuScenes-layout world (layout.py, world.py, render.py, occupancy.py), seen by
an approximate Waymo rig: five cameras (FRONT, FRONT_LEFT, FRONT_RIGHT at 1920x1280, SIDE_LEFT, SIDE_RIGHT at
1920x886 full size; yaws 0, +-45, +-90 degrees, about 50 degrees of horizontal field of view each, small
pitch/roll so every rotation is fully 3D) and a roof LiDAR at the benchmark's `lidar_position`. The numbers are
rounded values of that kind of rig, not a copy of any calibration.

Timeline: frames every 0.1 s (10 Hz), every frame labelled. The FRONT camera fires at the frame time (its pose is
the frame pose, which is what the loaders take as the frame's), the others a few milliseconds off it; every image
is rendered from the ego pose at its own time and the pose file carries that pose.

Files (the release's layout, docs/data.md "Occ3D-Waymo"):
  kitti_format/training/image_<k>/<image_idx:07d>.png        k = 0..4, train (prefix 0) and val (prefix 1)
  occ3d_waymo/waymo_infos_{train,val}.pkl                     mmdetection3d-style per-frame infos
  occ3d_waymo/cam_infos.pkl, cam_infos_vali.pkl               {scene: {frame: [5 camera dicts]}}
  occ3d_waymo/{training,validation}/<scene:03d>/<frame:03d>_04.npz   voxel_label (23 = free), the three masks
Labels: the world's Occ3D-nuScenes classes mapped to the nearest Occ3D-Waymo class (`NUSCENES_TO_WAYMO`);
`final_voxel_state` = occupancy.camera_mask over the five cameras, `infov` = voxels whose centre projects into one
of the five images (no depth test), `origin_voxel_state` = occupancy.lidar_mask of the roof LiDAR.
"""
import os
import os.path as osp
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.benchmarks.occ3d_waymo import OCC3D_WAYMO, RELEASE_FREE_ID
from core.geometry import pad_intrinsic, rigid_inverse, rigid_transform
from loaders.waymo_occ_dataset import IMAGE_FOLDERS, POSE_FILE_CAMERAS

from . import occupancy, world
from .calib import _CAM_TO_EGO_AXES  # a forward-looking camera's axes (optical axis = ego x)
from .geometry import rot_x, rot_y, rot_z
from .render import render
from .writer import KEY_INTERVAL, MASK_MIN_SCALE, SceneConfig

CAMERA_NAMES = OCC3D_WAYMO.camera_names
FRAME_INTERVAL_US = 100_000      # 10 Hz
FRONT_SIZE, SIDE_SIZE = (1920, 1280), (1920, 886)   # (width, height) at full resolution
# name: (translation in the vehicle frame [m], yaw, pitch, roll [deg], focal [px], cx, cy [px] at full size)
_RIG = {
    'FRONT': ((1.54, -0.02, 2.12), 0.0, 0.8, -0.2, 2055.0, 955.0, 642.0),
    'FRONT_LEFT': ((1.50, 0.10, 2.11), 45.0, 0.6, 0.3, 2050.0, 962.0, 637.0),
    'FRONT_RIGHT': ((1.50, -0.13, 2.11), -45.0, 0.7, -0.3, 2052.0, 958.0, 646.0),
    'SIDE_LEFT': ((1.43, 0.12, 2.11), 90.0, 0.5, 0.2, 2058.0, 951.0, 440.0),
    'SIDE_RIGHT': ((1.43, -0.15, 2.11), -90.0, 0.4, -0.2, 2061.0, 967.0, 447.0),
}
CAMERA_TIME_OFFSETS = {'FRONT': 0.0, 'FRONT_LEFT': 0.006, 'FRONT_RIGHT': -0.006, 'SIDE_LEFT': 0.012,
                       'SIDE_RIGHT': -0.012}   # seconds
# Occ3D-nuScenes id (world.py) -> Occ3D-Waymo release id; free 17 -> 23
NUSCENES_TO_WAYMO = np.array([
    0,    # others -> GENERALOBJECT
    0,    # barrier -> GENERALOBJECT (Waymo has no barrier class)
    8,    # bicycle -> BICYCLE
    1, 1,  # bus, car -> VEHICLE
    1,    # construction_vehicle -> VEHICLE
    9,    # motorcycle -> MOTORCYCLE
    2,    # pedestrian -> PEDESTRIAN
    7,    # traffic_cone -> CONSTRUCTION_CONE
    1, 1,  # trailer, truck -> VEHICLE
    13,   # driveable_surface -> ROAD
    14, 14, 14,  # other_flat, sidewalk, terrain -> WALKABLE (Waymo's walkable ground includes grass)
    10,   # manmade -> BUILDING
    11,   # vegetation -> VEGETATION (trunks included: the world labels the whole tree vegetation)
    RELEASE_FREE_ID,
], dtype=np.uint8)
assert len(NUSCENES_TO_WAYMO) == world.FREE + 1


def image_size(cam, scale):
    """(width, height) of camera `cam`'s images at `scale` of the full size."""
    width, height = SIDE_SIZE if cam.startswith('SIDE') else FRONT_SIZE
    return int(round(width * scale)), int(round(height * scale))


def camera_intrinsic(cam, scale):
    """3x3 K of camera `cam` for images of image_size(cam, scale) (integer pixel coordinates = pixel centres)."""
    f, cx, cy = _RIG[cam][4:]
    width, height = image_size(cam, scale)
    full_w, full_h = SIDE_SIZE if cam.startswith('SIDE') else FRONT_SIZE
    sx, sy = width / full_w, height / full_h
    return np.array([[f * sx, 0.0, (cx + 0.5) * sx - 0.5], [0.0, f * sy, (cy + 0.5) * sy - 0.5], [0.0, 0.0, 1.0]])


def camera_to_ego(cam):
    """4x4 camera (OpenCV axes) -> vehicle frame."""
    translation, yaw, pitch, roll = _RIG[cam][:4]
    rotation = rot_z(np.deg2rad(yaw)) @ rot_y(np.deg2rad(pitch)) @ rot_x(np.deg2rad(roll)) @ _CAM_TO_EGO_AXES
    return rigid_transform(rotation, translation)


def lidar_to_ego():
    return rigid_transform(np.eye(3), OCC3D_WAYMO.lidar_position)


@dataclass
class WaymoScene:
    """One sequence: its split prefix (0 training, 1 validation), scene number, and the street it drives."""
    prefix: int
    scene: int
    seed: int
    world_index: int
    num_frames: int
    scale: float
    speed: float
    origin: tuple

    def street(self):
        """The nuScenes-layout scene of the same street: world and ego poses come from it (writer.SceneConfig)."""
        key_frames = int(np.ceil((self.num_frames - 1) * FRAME_INTERVAL_US * 1e-6 / KEY_INTERVAL)) + 1
        return SceneConfig(index=self.world_index, name=f'{self.prefix}{self.scene:03d}', seed=self.seed,
                           num_keyframes=key_frames, num_sweeps=0, scale=self.scale, speed=self.speed,
                           origin=self.origin)

    @property
    def split(self):
        return 'training' if self.prefix == 0 else 'validation'

    def image_idx(self, frame):
        return self.prefix * 1_000_000 + self.scene * 1000 + frame

    def frame_time(self, street, frame):
        return street.t0() + frame * FRAME_INTERVAL_US


def image_path(scene, cam, frame):
    """The image's path relative to the KITTI-format root (validation frames live in training/, as in the export)."""
    return f'training/{IMAGE_FOLDERS[cam]}/{scene.image_idx(frame):07d}.png'


def label_path(scene, frame):
    """The label file's path relative to the Occ3D-Waymo folder."""
    return f'{scene.split}/{scene.scene:03d}/{frame:03d}_04.npz'


def render_frame(task):
    """Render and write the five images and the label file of one frame.

    Args:
        task: (root, WaymoScene, frame).
    Returns:
        (WaymoScene, frame, info dict of waymo_infos_*.pkl, the pose file's 5 camera dicts, release-id histogram).
    """
    root, scene, frame = task
    street = scene.street()
    ground = street.world()
    t_frame = scene.frame_time(street, frame)
    ego2global = street.ego_pose(t_frame, ground)
    poses, cam_views, fov_views = {}, [], []
    for cam in CAMERA_NAMES:
        t = t_frame + int(round(CAMERA_TIME_OFFSETS[cam] * 1e6))
        cam_ego2global = street.ego_pose(t, ground)
        cam2global = cam_ego2global @ camera_to_ego(cam)
        intrinsic = camera_intrinsic(cam, scene.scale)
        width, height = image_size(cam, scene.scale)
        rgb, dist, _ = render(ground, cam2global, intrinsic, width, height)
        Image.fromarray(rgb).save(osp.join(root, 'kitti_format', image_path(scene, cam, frame)))
        if scene.scale < MASK_MIN_SCALE:
            # tiny images give too coarse a visibility test: a finer depth-only render for the masks
            intrinsic = camera_intrinsic(cam, MASK_MIN_SCALE)
            _, dist, _ = render(ground, cam2global, intrinsic, *image_size(cam, MASK_MIN_SCALE), shade=False)
        cam_views.append((cam2global, intrinsic, dist))
        fov_views.append((cam2global, intrinsic, np.full_like(dist, np.inf)))
        poses[cam] = dict(intrinsics=pad_intrinsic(camera_intrinsic(cam, scene.scale)), sensor2ego=camera_to_ego(cam),
                          ego2global=cam_ego2global)
    lidar2global = ego2global @ lidar_to_ego()
    _, panorama = occupancy.lidar_scan(ground, lidar2global)
    voxel_label = NUSCENES_TO_WAYMO[occupancy.semantics(ground, ego2global)]
    path = osp.join(root, 'occ3d_waymo', label_path(scene, frame))
    os.makedirs(osp.dirname(path), exist_ok=True)
    np.savez_compressed(path, voxel_label=voxel_label,
                        origin_voxel_state=occupancy.lidar_mask(panorama, lidar2global, ego2global).astype(np.uint8),
                        final_voxel_state=occupancy.camera_mask(cam_views, ego2global).astype(np.uint8),
                        infov=occupancy.camera_mask(fov_views, ego2global).astype(np.uint8))
    image_idx = scene.image_idx(frame)
    front_from_ego = rigid_inverse(camera_to_ego('FRONT'))
    info = dict(
        image=dict(image_idx=image_idx, image_path=image_path(scene, 'FRONT', frame),
                   image_shape=np.array(image_size('FRONT', scene.scale)[::-1])),
        point_cloud=dict(num_features=6, velodyne_path=f'training/velodyne/{image_idx:07d}.bin'),
        # KITTI-style calibration of the export: P<k> = camera k's padded K, velo (= vehicle) -> FRONT camera
        calib={**{f'P{k}': pad_intrinsic(camera_intrinsic(cam, scene.scale)) for k, cam in enumerate(CAMERA_NAMES)},
               'R0_rect': np.eye(4), 'Tr_velo_to_cam': front_from_ego},
        pose=ego2global, timestamp=t_frame, sweeps=[])
    return scene, frame, info, [poses[cam] for cam in POSE_FILE_CAMERAS], np.bincount(voxel_label.ravel(),
                                                                                       minlength=RELEASE_FREE_ID + 1)
