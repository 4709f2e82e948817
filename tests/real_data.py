"""The real nuScenes / Occ3D files of ``../shared/data`` (relative to the repository root) for the tests.

Paths, the skip rule, readers of the files, and `write_nuscenes_tables`, which turns the keyframe's
mmdet3d "info v1.1" calibration into the minimal nuScenes tables (devkit JSON layout) of that one
sample in a temporary folder, so that gen_sweep_info.py and the dataset can run on it.

The files are read in place or linked into pytest's temporary folders; nothing made from them is
written into the repository. A test that needs them calls `require(...)` (or uses the conftest
fixtures `real_keyframe` / `real_occ3d`), which skips with a reason naming ../shared/data when the
folder is absent (CI without the shared data).
"""
import hashlib
import json
import os
import os.path as osp
import pickle
import types

import numpy as np
import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED_DATA = osp.normpath(osp.join(REPO_ROOT, '..', 'shared', 'data'))
KEYFRAME_DIR = osp.join(SHARED_DATA, 'nuscenes-keyframe')
KEYFRAME_PKL = osp.join(KEYFRAME_DIR, 'n015-2018-07-24-11-22-45+0800.pkl')
OCC3D_LABELS = osp.join(SHARED_DATA, 'occ3d-sample', 'labels.npz')

# what the README of ../shared/data says about the keyframe
SCENE_NAME = 'scene-0061'
LOG_NAME = 'n015-2018-07-24-11-22-45+0800'
LOCATION = 'singapore-onenorth'
SAMPLE_TOKEN = 'ca9a282c9e77460f8360f564131a8af5'
CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
IMAGE_WH = (1600, 900)


def skip_reason(path):
    return (f'real nuScenes data not found: ../shared/data (expected {osp.relpath(path, SHARED_DATA)} in '
            f'{SHARED_DATA}); these tests need the shared data folder beside the repository')


def require(*paths):
    """Skip the calling test unless every path exists (default: the keyframe and the Occ3D grid)."""
    for path in paths or (KEYFRAME_PKL, OCC3D_LABELS):
        if not osp.exists(path):
            pytest.skip(skip_reason(path))


def load_keyframe():
    """SimpleNamespace(info, metainfo, dir, image_paths {cam: path}, lidar_path): the v1.1 pickle."""
    require(KEYFRAME_PKL)
    with open(KEYFRAME_PKL, 'rb') as f:
        data = pickle.load(f)
    info = data['data_list'][0]
    images = {cam: osp.join(KEYFRAME_DIR, info['images'][cam]['img_path']) for cam in CAMERAS}
    lidar = osp.join(KEYFRAME_DIR, info['lidar_points']['lidar_path'])
    require(lidar, *images.values())
    return types.SimpleNamespace(info=info, metainfo=data['metainfo'], dir=KEYFRAME_DIR, image_paths=images,
                                 lidar_path=lidar)


def load_occ3d():
    """dict of the real Occ3D grid's arrays: semantics uint8, mask_lidar, mask_camera (bool), [200, 200, 16]."""
    require(OCC3D_LABELS)
    with np.load(OCC3D_LABELS) as f:
        return dict(semantics=f['semantics'].astype(np.uint8), mask_lidar=f['mask_lidar'].astype(bool),
                    mask_camera=f['mask_camera'].astype(bool))


# ---------------------------------------------------------------------------------- geometry helpers
def reference_lidar2img(info, cam):
    """float64 4x4 pad(cam2img) @ lidar2cam of the keyframe's own calibration (the v1.1 numbers)."""
    k = np.eye(4)
    k[:3, :3] = np.asarray(info['images'][cam]['cam2img'], dtype=np.float64)
    return k @ np.asarray(info['images'][cam]['lidar2cam'], dtype=np.float64)


def camera_ego2global(info, cam):
    """The camera's ego pose (README formula): ego2global @ lidar2ego @ inv(lidar2cam) @ inv(cam2ego)."""
    e2g = np.asarray(info['ego2global'], dtype=np.float64)
    l2e = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
    l2c = np.asarray(info['images'][cam]['lidar2cam'], dtype=np.float64)
    c2e = np.asarray(info['images'][cam]['cam2ego'], dtype=np.float64)
    return e2g @ l2e @ np.linalg.inv(l2c) @ np.linalg.inv(c2e)


def nearest_rotation(m):
    """The rotation closest to a 3x3 matrix (the pickle's matrices are float32-rounded)."""
    u, _, vt = np.linalg.svd(np.asarray(m, dtype=np.float64))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def rotation_to_quaternion(m):
    """3x3 rotation -> unit quaternion [w, x, y, z] with w >= 0 (Shepperd's method, float64)."""
    r = nearest_rotation(m)
    tr = np.trace(r)
    cands = np.array([1 + tr, 1 + 2 * r[0, 0] - tr, 1 + 2 * r[1, 1] - tr, 1 + 2 * r[2, 2] - tr])
    i = int(np.argmax(cands))
    s = 2 * np.sqrt(cands[i])  # = 4 * |q_i|
    if i == 0:
        q = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif i == 1:
        q = [(r[2, 1] - r[1, 2]) / s, s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif i == 2:
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s]
    else:
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def timestamp_us(path):
    """nuScenes file names end in __<timestamp in microseconds>.<ext>."""
    return int(osp.basename(path).split('__')[-1].split('.')[0])


def _token(*parts):
    return hashlib.md5('/'.join(('ops-real-keyframe',) + parts).encode()).hexdigest()


# ---------------------------------------------------------------------------------- nuScenes tables
def write_nuscenes_tables(kf, root, version='v1.0-mini', occ_labels=OCC3D_LABELS):
    """Write the nuScenes tables of the one keyframe sample into `root` (a temporary folder).

    `root/<version>/*.json`: the 13 tables the devkit loads (scene, log, sample, sample_data,
    calibrated_sensor, ego_pose, sensor, map with one tiny mask PNG; category, attribute, visibility,
    instance and sample_annotation empty). Camera ego poses follow from the README formula. The images
    and the LiDAR file are symbolic links to ../shared/data under `samples/<channel>/`; `occ_labels`
    (default: the real Occ3D grid of another sample, the pipeline only needs *a* labels file) is
    linked as `gts/scene-0061/<token>/labels.npz`.

    Returns:
        SimpleNamespace(root, version, sample_token, scene_name, filenames {channel: relative path},
        occ_path, tables {name: records}).
    """
    info = kf.info
    os.makedirs(osp.join(root, version), exist_ok=True)
    os.makedirs(osp.join(root, 'maps'), exist_ok=True)
    e2g = np.asarray(info['ego2global'], dtype=np.float64)
    l2e = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
    log_token, scene_token, map_token = _token('log'), _token('scene'), _token('map')
    lidar_sd_token = _token('sample_data', 'LIDAR_TOP')
    lidar_ts = timestamp_us(kf.lidar_path)
    # seconds in float64 (spacing 0.24 us at 1.5e9 s) times 1e6 (spacing 0.25 us): within ~0.25 us of whole
    # microseconds; 1 us is the stamps' resolution
    if abs(lidar_ts - info['timestamp'] * 1e6) > 1:
        raise AssertionError(f'LiDAR file name stamp {lidar_ts} differs from the info timestamp {info["timestamp"]}')
    tables = {name: [] for name in ('category', 'attribute', 'visibility', 'instance', 'sample_annotation')}
    tables['log'] = [dict(token=log_token, logfile=LOG_NAME, vehicle=LOG_NAME.split('-')[0],
                          date_captured='2018-07-24', location=LOCATION)]
    tables['map'] = [dict(token=map_token, log_tokens=[log_token], category='semantic_prior',
                          filename=f'maps/{map_token}.png')]
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(osp.join(root, 'maps', f'{map_token}.png'))
    tables['scene'] = [dict(token=scene_token, log_token=log_token, nbr_samples=1, first_sample_token=SAMPLE_TOKEN,
                            last_sample_token=SAMPLE_TOKEN, name=SCENE_NAME,
                            description='one keyframe of nuScenes v1.0-mini (OPS tests)')]
    tables['sample'] = [dict(token=info['token'], timestamp=lidar_ts, scene_token=scene_token, prev='', next='')]
    tables['sensor'], tables['calibrated_sensor'], tables['ego_pose'], tables['sample_data'] = [], [], [], []
    filenames = {}

    def add(channel, modality, sd_token, sensor2ego, ego2global, ts, src, intrinsic, hw):
        filename = f'samples/{channel}/{osp.basename(src)}'
        os.makedirs(osp.join(root, 'samples', channel), exist_ok=True)
        dst = osp.join(root, filename)
        if not osp.lexists(dst):
            os.symlink(src, dst)
        filenames[channel] = filename
        sensor_token, cs_token = _token('sensor', channel), _token('calibrated_sensor', channel)
        tables['sensor'].append(dict(token=sensor_token, channel=channel, modality=modality))
        tables['calibrated_sensor'].append(dict(
            token=cs_token, sensor_token=sensor_token, translation=sensor2ego[:3, 3].tolist(),
            rotation=rotation_to_quaternion(sensor2ego[:3, :3]).tolist(), camera_intrinsic=intrinsic))
        tables['ego_pose'].append(dict(token=sd_token, timestamp=ts, translation=ego2global[:3, 3].tolist(),
                                       rotation=rotation_to_quaternion(ego2global[:3, :3]).tolist()))
        tables['sample_data'].append(dict(
            token=sd_token, sample_token=info['token'], ego_pose_token=sd_token, calibrated_sensor_token=cs_token,
            timestamp=ts, fileformat='pcd' if modality == 'lidar' else 'jpg', is_key_frame=True, height=hw[0],
            width=hw[1], filename=filename, prev='', next=''))

    add('LIDAR_TOP', 'lidar', lidar_sd_token, l2e, e2g, lidar_ts, kf.lidar_path, [], (0, 0))
    for cam in CAMERAS:
        im = info['images'][cam]
        ts = timestamp_us(kf.image_paths[cam])
        if abs(ts - im['timestamp'] * 1e6) > 1:  # as for the LiDAR stamp above
            raise AssertionError(f'{cam}: file name stamp {ts} differs from the info timestamp {im["timestamp"]}')
        add(cam, 'camera', im['sample_data_token'], np.asarray(im['cam2ego'], dtype=np.float64),
            camera_ego2global(info, cam), ts, kf.image_paths[cam],
            np.asarray(im['cam2img'], dtype=np.float64).tolist(), IMAGE_WH[::-1])
    for name, records in tables.items():
        with open(osp.join(root, version, f'{name}.json'), 'w') as f:
            json.dump(records, f, indent=1)
    occ_path = osp.join(root, 'gts', SCENE_NAME, info['token'], 'labels.npz')
    os.makedirs(osp.dirname(occ_path), exist_ok=True)
    if occ_labels is not None and not osp.lexists(occ_path):
        os.symlink(occ_labels, occ_path)
    return types.SimpleNamespace(root=root, version=version, sample_token=info['token'], scene_name=SCENE_NAME,
                                 filenames=filenames, occ_path=occ_path, tables=tables)


# ---------------------------------------------------------------------------------- boxes
def match_cam_instances(info, cam):
    """Index into `info['instances']` of every `cam_instances[cam]` entry.

    Matched by class label and box size (a LiDAR-frame box (dx, dy, dz) is (dx, dz, dy) = (l, h, w) in
    the camera frame), which involves no projection; raises if a match is not unique.
    """
    boxes = np.array([i['bbox_3d'] for i in info['instances']], dtype=np.float64)
    labels = np.array([i['bbox_label_3d'] for i in info['instances']])
    out = []
    for ci in info['cam_instances'][cam]:
        dims = np.asarray(ci['bbox_3d'][3:6], dtype=np.float64)
        # the same annotation sizes, stored in both lists as the same float32 values: compared exactly
        cand = np.nonzero((labels == ci['bbox_label_3d']) & np.all(boxes[:, [3, 5, 4]] == dims, 1))[0]
        if len(cand) != 1:
            raise AssertionError(f'{cam}: {len(cand)} instances match a camera box of size {dims}')
        out.append(int(cand[0]))
    return out


# ---------------------------------------------------------------------------------- dataset
def keyframe_dataset(infos, cfg, pipeline='test_pipeline', test_mode=True):
    """NuScenesOccDataset over the keyframe infos (`real_keyframe_infos`) with a pipeline of `cfg`
    (an mmcv Config, e.g. configs/_base_/ops_r50_704x256_8f.py): `pipeline` is a key of the config
    ('train_pipeline', 'test_pipeline') or a list of steps. LoadOccFromFile reads the temp gts/."""
    import copy

    from mmdet.datasets import build_dataset

    import loaders  # noqa: F401  (registers the dataset and the pipeline steps)
    occ_root = osp.join(infos.root, 'gts')
    steps = cfg[pipeline] if isinstance(pipeline, str) else pipeline
    pipe = [dict(copy.deepcopy(step)) for step in steps]
    for step in pipe:
        if step['type'] == 'LoadOccFromFile':
            step['occ_root'] = occ_root
    return build_dataset(dict(type='NuScenesOccDataset', ann_file=infos.ann_file, pipeline=pipe, data_root=infos.root,
                              occ_root=occ_root, test_mode=test_mode))
