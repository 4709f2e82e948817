"""tools/synthetic/writer.py: the world in the real nuScenes layout (the devkit reads it, the timeline is
nuScenes-like) with a calibration that reproduces the renders."""
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from tools.synthetic import calib, writer
from tools.synthetic.render import render

CAMS = calib.CAMERA_NAMES
EPS = np.finfo(np.float64).eps


@pytest.fixture(scope='module')
def nusc(synthetic_world):
    from nuscenes.nuscenes import NuScenes
    return NuScenes('v1.0-mini', synthetic_world.root, verbose=False)


def scene_samples(nusc, scene):
    out, t = [], scene['first_sample_token']
    while t:
        out.append(nusc.get('sample', t))
        t = out[-1]['next']
    return out


def devkit_pose(nusc, sd_token):
    """sensor -> global 4x4 from the tables, with the devkit's own helpers."""
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion
    sd = nusc.get('sample_data', sd_token)
    cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
    ep = nusc.get('ego_pose', sd['ego_pose_token'])
    return transform_matrix(ep['translation'], Quaternion(ep['rotation'])) @ \
        transform_matrix(cs['translation'], Quaternion(cs['rotation'])), np.array(cs['camera_intrinsic'] or np.eye(3))


def test_devkit_reads_the_tables_and_the_timeline_is_nuscenes_like(synthetic_world, nusc):
    assert [s['name'] for s in nusc.scene] == ['scene-0061', 'scene-0103']
    h, w = synthetic_world.image_hw
    for scene in nusc.scene:
        samples = scene_samples(nusc, scene)
        assert len(samples) == 3 == scene['nbr_samples']
        assert np.all(np.diff([s['timestamp'] for s in samples]) == 500_000)  # 2 Hz key frames
        for cam in CAMS:
            chain, t = [], samples[0]['data'][cam]
            while t:
                chain.append(nusc.get('sample_data', t))
                t = chain[-1]['next']
            # key, 5 sweeps, key, 5 sweeps, key (12 Hz camera)
            assert [sd['is_key_frame'] for sd in chain] == [True] + ([False] * 5 + [True]) * 2
            stamps = np.array([sd['timestamp'] for sd in chain])
            # whole-microsecond stamps of a 12 Hz clock: two roundings of <= 0.5 us each
            assert np.all(np.diff(stamps) > 0) and np.allclose(np.diff(stamps), 1e6 / 12, rtol=0, atol=1)
            for sd in chain:
                assert sd['filename'].startswith('samples/' if sd['is_key_frame'] else 'sweeps/')
                with Image.open(osp.join(synthetic_world.root, sd['filename'])) as im:
                    assert im.size == (w, h) == (sd['width'], sd['height']) and im.format == 'JPEG'
            # the key-frame image of each sample is the one the sample points to
            assert [sd['token'] for sd in chain if sd['is_key_frame']] == [s['data'][cam] for s in samples]
    assert osp.isfile(osp.join(synthetic_world.root, 'README_SYNTHETIC.txt'))
    assert nusc.map[0]['mask'].mask().max() == 255  # the driveable-area map loads


def test_table_calibration_projects_world_points_onto_the_pixels_that_show_them(synthetic_world, nusc):
    """Exact 3D points of the world (ray hits of the ground-truth camera) projected with the calibration
    and ego pose read from the tables land on their pixel, and the JPEG shows the rendered colour."""
    from nuscenes.utils.geometry_utils import view_points
    rng = np.random.default_rng(0)
    h, w = synthetic_world.image_hw
    for scene_cfg, world in zip(synthetic_world.scenes, synthetic_world.worlds):
        scene = next(s for s in nusc.scene if s['name'] == scene_cfg.name)
        for sample in scene_samples(nusc, scene)[::2]:
            for cam in CAMS[::2]:
                sd = nusc.get('sample_data', sample['data'][cam])
                gt_pose = scene_cfg.ego_pose(sd['timestamp'], world) @ writer.sensor2ego(cam)
                cam2global, intrinsic = devkit_pose(nusc, sd['token'])
                # quaternion round trips through the tables (~7 EPS per rotation entry each) and one 4x4 product, on
                # translations <= 200 m: a few dozen roundings of numbers <= 200 m
                np.testing.assert_allclose(cam2global, gt_pose, atol=64 * EPS * 200)
                u = rng.integers(0, w, 200)
                v = rng.integers(0, h, 200)
                rays = np.stack([u, v, np.ones_like(u)], axis=1) @ np.linalg.inv(intrinsic).T @ gt_pose[:3, :3].T
                rays /= np.linalg.norm(rays, axis=1, keepdims=True)
                t, sid, _ = world.cast(gt_pose[:3, 3], rays)
                hit = np.isfinite(t)
                pts = gt_pose[:3, 3] + rays[hit] * t[hit, None]
                in_cam = np.linalg.inv(cam2global) @ np.vstack([pts.T, np.ones(len(pts))])
                uv = view_points(in_cam[:3], intrinsic, normalize=True)[:2]
                # float64 throughout: the hits lie on their rays up to rounding of global coordinates (<= 200 m,
                # ~1e-13 m), the two poses agree to ~1e-14 rad; f = 126 px over depths >= 2 m: <= ~3e-11 px
                np.testing.assert_allclose(uv[0], u[hit], atol=1e-9)
                np.testing.assert_allclose(uv[1], v[hit], atol=1e-9)
                rgb, _, _ = render(world, gt_pose, intrinsic, w, h)
                jpeg = np.asarray(Image.open(osp.join(synthetic_world.root, sd['filename'])).convert('RGB'))
                # quality 92 quantisation (steps of ~1-10 levels) and 4:2:0 chroma at the world's colour edges cost a
                # few levels on average; an image of another pose or camera is off by tens of levels at every edge
                assert np.abs(jpeg.astype(int) - rgb).mean() < 6.0
