"""Writes the synthetic world in the nuScenes (v1.0 JSON tables, samples/, sweeps/, maps/) and Occ3D
(gts/<scene>/<sample_token>/labels.npz) on-disk layout.

Timeline of a scene: key frames (samples) every 0.5 s (2 Hz) at the LiDAR timestamp; each camera's
key-frame image is a few ms off it (calib.CAMERA_TIME_OFFSETS) and `sweeps` camera images lie evenly
between consecutive key frames (5 -> 12 Hz like nuScenes), as do `num_lidar_sweeps` LiDAR scans
(sweeps/LIDAR_TOP; 9 -> 20 Hz like nuScenes; 0 by default: key-frame scans only). The ego drives along
the road's right lane at a constant speed; every image and scan is rendered from the ego pose at its
own timestamp.
"""
import hashlib
import os
import os.path as osp
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from core.geometry import rigid_transform

from . import calib, occupancy
from .geometry import mat_to_quat, rot_z
from .layout import generate_world
from .render import render

try:  # the devkit's split lists name the scenes; fall back to a copy of the two mini lists
    from nuscenes.utils.splits import mini_train as MINI_TRAIN
    from nuscenes.utils.splits import mini_val as MINI_VAL
except ImportError:  # pragma: no cover - nuscenes-devkit is a runtime requirement
    MINI_TRAIN = ['scene-0061', 'scene-0553', 'scene-0655', 'scene-0757', 'scene-0796', 'scene-1077',
                  'scene-1094', 'scene-1100']
    MINI_VAL = ['scene-0103', 'scene-0916']

VERSION = 'v1.0-mini'
KEY_INTERVAL = 0.5             # s between key frames (2 Hz)
BASE_TIMESTAMP = 1_600_000_000_000_000  # microseconds; scenes start 1000 s apart
MASK_MIN_SCALE = 0.1           # camera masks use depth maps of at least 160x90 pixels
LIDAR = 'LIDAR_TOP'


@dataclass
class SceneConfig:
    """Everything that determines one scene (picklable, so frames can render in worker processes)."""
    index: int
    name: str
    seed: int
    num_keyframes: int
    num_sweeps: int
    scale: float
    speed: float
    origin: tuple
    num_lidar_sweeps: int = 0
    log_name: str = ''
    travel: float = field(init=False)

    def __post_init__(self):
        self.travel = self.speed * KEY_INTERVAL * (self.num_keyframes - 1) + 5.0
        self.log_name = f'synthetic-{self.seed:04d}-{self.index:02d}'

    def world(self):
        return generate_world(self.seed, self.index, self.travel, self.origin)

    def t0(self):
        return BASE_TIMESTAMP + self.index * 1_000_000_000

    def ego_pose(self, timestamp_us, world):
        """4x4 ego -> global at a timestamp (planar: the road is flat)."""
        s = self.speed * (timestamp_us - self.t0()) * 1e-6
        xy, psi = world.road.point(s, -1.75)
        return rigid_transform(rot_z(float(psi)), [float(xy[0]), float(xy[1]), 0.0])

    def key_time(self, k):
        return self.t0() + int(round(k * KEY_INTERVAL * 1e6))

    def camera_times(self, cam):
        """[(timestamp_us, is_key_frame, key index it belongs to)] of camera `cam`, in time order."""
        out = []
        off = calib.CAMERA_TIME_OFFSETS[cam]
        for k in range(self.num_keyframes):
            if k > 0:
                for j in range(1, self.num_sweeps + 1):
                    t = self.key_time(k - 1) + int(round((off + j * KEY_INTERVAL / (self.num_sweeps + 1)) * 1e6))
                    out.append((t, False, k))
            out.append((self.key_time(k) + int(round(off * 1e6)), True, k))
        return out

    def lidar_times(self):
        """[(timestamp_us, is_key_frame, key index it belongs to)] of the LiDAR, in time order."""
        out = []
        for k in range(self.num_keyframes):
            if k > 0:
                for j in range(1, self.num_lidar_sweeps + 1):
                    out.append((self.key_time(k - 1) + int(round(j * KEY_INTERVAL / (self.num_lidar_sweeps + 1) * 1e6)),
                                False, k))
            out.append((self.key_time(k), True, k))
        return out


def token(*parts):
    """Deterministic 32-hex token (nuScenes tokens are 32 hex characters)."""
    return hashlib.md5('/'.join(str(p) for p in parts).encode()).hexdigest()


def image_filename(scene: SceneConfig, cam, timestamp, key):
    folder = 'samples' if key else 'sweeps'
    return f'{folder}/{cam}/{scene.log_name}__{cam}__{timestamp}.jpg'


def lidar_filename(scene: SceneConfig, timestamp, key=True):
    folder = 'samples' if key else 'sweeps'
    return f'{folder}/{LIDAR}/{scene.log_name}__{LIDAR}__{timestamp}.pcd.bin'


def sensor2ego(cam):
    if cam == LIDAR:
        return rigid_transform(calib.lidar_rotation(), calib.lidar_translation())
    return rigid_transform(calib.camera_rotation(cam), calib.camera_translation(cam))


def render_frame(task):
    """Render and write everything of key frame k of a scene (and the sweeps just before it).

    Args:
        task: (root, SceneConfig, k, jpeg_quality).
    Returns:
        (scene index, k, number of images written, occupancy class histogram [18]).
    """
    root, scene, k, quality = task
    world = scene.world()
    width, height = calib.image_size(scene.scale)
    n_images = 0
    cam_views = []
    for cam in calib.CAMERA_NAMES:
        intrinsic = calib.camera_intrinsic(cam, scene.scale)
        c2e = sensor2ego(cam)
        for t, key, kk in scene.camera_times(cam):
            if kk != k:
                continue
            cam2global = scene.ego_pose(t, world) @ c2e
            rgb, dist, _ = render(world, cam2global, intrinsic, width, height)
            path = osp.join(root, image_filename(scene, cam, t, key))
            Image.fromarray(rgb).save(path, quality=quality)
            n_images += 1
            if key:
                if scene.scale < MASK_MIN_SCALE:
                    # tiny images give too coarse a visibility test: use a finer depth-only render
                    mk = calib.camera_intrinsic(cam, MASK_MIN_SCALE)
                    mw, mh = calib.image_size(MASK_MIN_SCALE)
                    _, dist, _ = render(world, cam2global, mk, mw, mh, shade=False)
                    cam_views.append((cam2global, mk, dist))
                else:
                    cam_views.append((cam2global, intrinsic, dist))
    for t, key, kk in scene.lidar_times():
        if kk == k and not key:   # the LiDAR sweeps just before key frame k
            points, _ = occupancy.lidar_scan(world, scene.ego_pose(t, world) @ sensor2ego(LIDAR))
            points.tofile(osp.join(root, lidar_filename(scene, t, key=False)))
    t_key = scene.key_time(k)
    ego2global = scene.ego_pose(t_key, world)
    lidar2global = ego2global @ sensor2ego(LIDAR)
    points, panorama = occupancy.lidar_scan(world, lidar2global)
    points.tofile(osp.join(root, lidar_filename(scene, t_key)))
    sem = occupancy.semantics(world, ego2global)
    mask_lidar = occupancy.lidar_mask(panorama, lidar2global, ego2global)
    mask_camera = occupancy.camera_mask(cam_views, ego2global)
    gt_dir = osp.join(root, 'gts', scene.name, token(scene.seed, scene.name, 'sample', k))
    os.makedirs(gt_dir, exist_ok=True)
    np.savez_compressed(osp.join(gt_dir, 'labels.npz'), semantics=sem,
                        mask_lidar=mask_lidar.astype(np.uint8), mask_camera=mask_camera.astype(np.uint8))
    return scene.index, k, n_images, np.bincount(sem.ravel(), minlength=18)


def build_tables(scenes):
    """All nuScenes tables (dict name -> list of records) for the given scenes."""
    categories = ['vehicle.car', 'vehicle.truck', 'vehicle.bus.rigid', 'vehicle.bicycle',
                  'human.pedestrian.adult', 'movable_object.trafficcone', 'movable_object.barrier']
    tables = {name: [] for name in ('category', 'attribute', 'visibility', 'instance', 'sensor',
                                    'calibrated_sensor', 'ego_pose', 'log', 'scene', 'sample',
                                    'sample_data', 'sample_annotation', 'map')}
    tables['category'] = [dict(token=token('category', c), name=c, description='synthetic world class')
                          for c in categories]
    tables['visibility'] = [dict(token=str(i + 1), level=lvl, description=f'visibility of whole object is {lvl}')
                            for i, lvl in enumerate(['v0-40', 'v40-60', 'v60-80', 'v80-100'])]
    channels = list(calib.CAMERA_NAMES) + [LIDAR]
    for ch in channels:
        tables['sensor'].append(dict(token=token('sensor', ch), channel=ch,
                                     modality='lidar' if ch == LIDAR else 'camera'))
    for scene in scenes:
        world = scene.world()
        log_token = token(scene.seed, scene.name, 'log')
        map_token = token(scene.seed, scene.name, 'map')
        tables['log'].append(dict(token=log_token, logfile=scene.log_name, vehicle='synthetic-car',
                                  date_captured='2020-09-13', location=f'synthetic-town-{scene.index}'))
        tables['map'].append(dict(token=map_token, log_tokens=[log_token], category='semantic_prior',
                                  filename=f'maps/{map_token}.png'))
        calib_tokens = {}
        for ch in channels:
            pose = sensor2ego(ch)
            calib_tokens[ch] = token(scene.seed, scene.name, 'calib', ch)
            intrinsic = [] if ch == LIDAR else calib.camera_intrinsic(ch, scene.scale).tolist()
            tables['calibrated_sensor'].append(dict(
                token=calib_tokens[ch], sensor_token=token('sensor', ch), translation=pose[:3, 3].tolist(),
                rotation=mat_to_quat(pose[:3, :3]).tolist(), camera_intrinsic=intrinsic))
        sample_tokens = [token(scene.seed, scene.name, 'sample', k) for k in range(scene.num_keyframes)]
        scene_token = token(scene.seed, scene.name, 'scene')
        tables['scene'].append(dict(token=scene_token, log_token=log_token, nbr_samples=scene.num_keyframes,
                                    first_sample_token=sample_tokens[0], last_sample_token=sample_tokens[-1],
                                    name=scene.name, description='synthetic street scene (test world)'))
        for k, st in enumerate(sample_tokens):
            tables['sample'].append(dict(token=st, timestamp=scene.key_time(k), scene_token=scene_token,
                                         prev=sample_tokens[k - 1] if k > 0 else '',
                                         next=sample_tokens[k + 1] if k + 1 < len(sample_tokens) else ''))
        width, height = calib.image_size(scene.scale)
        for ch in channels:
            if ch == LIDAR:
                frames = scene.lidar_times()
            else:
                frames = scene.camera_times(ch)
            sd_tokens = [token(scene.seed, scene.name, 'sd', ch, t) for t, _, _ in frames]
            for n, (t, key, k) in enumerate(frames):
                # a sweep belongs to the sample nearest in time
                nearest = int(np.argmin([abs(t - scene.key_time(j)) for j in range(scene.num_keyframes)]))
                pose = scene.ego_pose(t, world)
                tables['ego_pose'].append(dict(token=sd_tokens[n], timestamp=t,
                                               rotation=mat_to_quat(pose[:3, :3]).tolist(),
                                               translation=pose[:3, 3].tolist()))
                tables['sample_data'].append(dict(
                    token=sd_tokens[n], sample_token=sample_tokens[k if key else nearest],
                    ego_pose_token=sd_tokens[n], calibrated_sensor_token=calib_tokens[ch], timestamp=t,
                    fileformat='pcd' if ch == LIDAR else 'jpg', is_key_frame=key,
                    height=0 if ch == LIDAR else height, width=0 if ch == LIDAR else width,
                    filename=lidar_filename(scene, t, key) if ch == LIDAR else image_filename(scene, ch, t, key),
                    prev=sd_tokens[n - 1] if n > 0 else '', next=sd_tokens[n + 1] if n + 1 < len(frames) else ''))
    return tables


def write_map_mask(root, scene: SceneConfig, map_token):
    """Driveable-area mask PNG at the devkit's 0.1 m/pixel, covering global [0, extent]^2."""
    world = scene.world()
    extent = int(np.ceil(max(scene.origin) + scene.travel + 120.0))
    res = 0.1
    n = int(extent / res)
    mask = np.zeros((n, n), dtype=np.uint8)
    # rows run from north (top) to south, as the devkit's MapMask expects
    ys = (n - 1 - np.arange(n)) * res + res / 2
    for r0 in range(0, n, 512):
        yy, xx = np.meshgrid(ys[r0:r0 + 512], np.arange(n) * res + res / 2, indexing='ij')
        _, d = world.road.frenet(xx, yy)
        mask[r0:r0 + 512] = np.where(np.abs(d) < 5.0, 255, 0)
    Image.fromarray(mask).save(osp.join(root, 'maps', f'{map_token}.png'), optimize=False)


README = """SYNTHETIC TEST WORLD - NOT nuScenes DATA
=========================================

This folder was generated by tools/make_synthetic_nuscenes.py of the OPS project. It uses the
on-disk layout of nuScenes ({version}: JSON tables, samples/, sweeps/, maps/) and of Occ3D-nuScenes
(gts/<scene>/<sample_token>/labels.npz), but every image, LiDAR scan and label is rendered from a
small procedural world of boxes, cylinders and ellipsoids (a road, sidewalks, buildings, trees,
cars, trucks, pedestrians, cones, barriers...). Scene names are borrowed from the nuScenes mini
split only so that the devkit's split lists apply.

It exists to test the data pipeline end to end and to run a CPU demo. Numbers measured on it say
nothing about performance on nuScenes / Occ3D.

seed={seed} scenes={scenes} key frames per scene={keyframes} camera sweeps between key frames={sweeps}
image size={width}x{height} (scale {scale} of 1600x900)
"""
