"""The synthetic world: real nuScenes/Occ3D layout, calibration that reproduces the renders, labels and
masks that agree with exact ray casting against the world's shapes, determinism."""
import filecmp
import glob
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from tools import make_synthetic_nuscenes as maker
from tools.synthetic import calib, occupancy, writer
from tools.synthetic.render import render
from tools.synthetic.world import FREE

CAMS = calib.CAMERA_NAMES


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
            assert np.all(np.diff(stamps) > 0) and np.allclose(np.diff(stamps), 1e6 / 12, atol=2)
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
                np.testing.assert_allclose(cam2global, gt_pose, atol=1e-6)
                u = rng.integers(0, w, 200)
                v = rng.integers(0, h, 200)
                rays = np.stack([u, v, np.ones_like(u)], axis=1) @ np.linalg.inv(intrinsic).T @ gt_pose[:3, :3].T
                rays /= np.linalg.norm(rays, axis=1, keepdims=True)
                t, sid, _ = world.cast(gt_pose[:3, 3], rays)
                hit = np.isfinite(t)
                pts = gt_pose[:3, 3] + rays[hit] * t[hit, None]
                in_cam = np.linalg.inv(cam2global) @ np.vstack([pts.T, np.ones(len(pts))])
                uv = view_points(in_cam[:3], intrinsic, normalize=True)[:2]
                np.testing.assert_allclose(uv[0], u[hit], atol=1e-6)
                np.testing.assert_allclose(uv[1], v[hit], atol=1e-6)
                rgb, _, _ = render(world, gt_pose, intrinsic, w, h)
                jpeg = np.asarray(Image.open(osp.join(synthetic_world.root, sd['filename'])).convert('RGB'))
                assert np.abs(jpeg.astype(int) - rgb).mean() < 6.0


def test_semantics_match_a_brute_force_labelling(synthetic_world):
    """Random voxels: label == last (highest-priority) shape containing one of its 8 sample points,
    else the ground class in the ground layer, else free."""
    scene_cfg, world = synthetic_world.scenes[0], synthetic_world.worlds[0]
    tok = writer.token(scene_cfg.seed, scene_cfg.name, 'sample', 1)
    sem = np.load(osp.join(synthetic_world.root, 'gts', scene_cfg.name, tok, 'labels.npz'))['semantics']
    assert sem.shape == (200, 200, 16) and sem.dtype == np.uint8
    ego2global = scene_cfg.ego_pose(scene_cfg.key_time(1), world)
    rng = np.random.default_rng(1)
    occupied = np.argwhere(sem != FREE)
    picks = np.concatenate([occupied[rng.choice(len(occupied), 150, replace=False)],
                            rng.integers(0, (200, 200, 16), (150, 3))])
    offs = np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.1, 0.1) for z in (-0.1, 0.1)])
    prio = {15: 0, 16: 1, 1: 3, 2: 3, 7: 4, 8: 4}
    for i, j, k in picks:
        centre = np.array([i, j, k]) * 0.4 + 0.2 + np.array([-40, -40, -1.0])
        pts = (centre + offs) @ ego2global[:3, :3].T + ego2global[:3, 3]
        inside = [s for s in range(len(world)) if world.inside(s, pts).any()]
        if inside:
            best = max(inside, key=lambda s: (prio.get(int(world.label[s]), 2), s))
            expected = world.label[best]
        elif k == 2:  # the layer [-0.2, 0.2] m holds the ground (z = 0)
            c = centre @ ego2global[:3, :3].T + ego2global[:3, 3]
            expected = world.ground_class(np.array([c[0]]), np.array([c[1]]))[0]
        else:
            expected = FREE
        assert sem[i, j, k] == expected, (i, j, k)
    # a street world: road, sidewalk, terrain, buildings, vegetation, cars and pedestrians are all there
    present = set(np.unique(sem))
    assert {4, 7, 11, 13, 14, 15, 16, FREE} <= present


def test_camera_mask_agrees_with_exact_ray_casting(synthetic_world):
    """mask_camera (depth-map test) vs casting the exact ray from each camera to the voxel centre."""
    scene_cfg, world = synthetic_world.scenes[0], synthetic_world.worlds[0]
    k = 2
    tok = writer.token(scene_cfg.seed, scene_cfg.name, 'sample', k)
    labels = np.load(osp.join(synthetic_world.root, 'gts', scene_cfg.name, tok, 'labels.npz'))
    mask = labels['mask_camera'].astype(bool)
    assert 0.05 < mask.mean() < 0.95
    ego2global = scene_cfg.ego_pose(scene_cfg.key_time(k), world)
    w, h = calib.image_size(scene_cfg.scale)
    rng = np.random.default_rng(2)
    picks = rng.integers(0, (200, 200, 16), (400, 3))
    centres = (picks * 0.4 + 0.2 + np.array([-40, -40, -1.0])) @ ego2global[:3, :3].T + ego2global[:3, 3]
    visible = np.zeros(len(picks), bool)
    for cam in CAMS:
        t_cam = scene_cfg.key_time(k) + int(round(calib.CAMERA_TIME_OFFSETS[cam] * 1e6))
        pose = scene_cfg.ego_pose(t_cam, world) @ writer.sensor2ego(cam)
        intrinsic = calib.camera_intrinsic(cam, scene_cfg.scale)
        pc = (centres - pose[:3, 3]) @ pose[:3, :3]
        uv = pc[:, :2] / pc[:, 2:] * intrinsic[[0, 1], [0, 1]] + intrinsic[[0, 1], [2, 2]]
        inside = (pc[:, 2] > 0.1) & (uv[:, 0] > -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < h - 0.5)
        d = centres[inside] - pose[:3, 3]
        dist = np.linalg.norm(d, axis=1)
        t, _, _ = world.cast(pose[:3, 3], d / dist[:, None])
        visible[np.nonzero(inside)[0][t >= dist - occupancy.VIS_TOL]] = True
    agreement = (visible == mask[tuple(picks.T)]).mean()
    assert agreement > 0.9, agreement


def test_lidar_points_lie_on_the_world_surfaces(synthetic_world):
    scene_cfg, world = synthetic_world.scenes[1], synthetic_world.worlds[1]
    t_key = scene_cfg.key_time(0)
    pts = np.fromfile(osp.join(synthetic_world.root, writer.lidar_filename(scene_cfg, t_key)), dtype=np.float32)
    pts = pts.reshape(-1, 5)
    assert len(pts) > 1000 and set(np.unique(pts[:, 4])) <= set(range(32))
    lidar2global = scene_cfg.ego_pose(t_key, world) @ writer.sensor2ego('LIDAR_TOP')
    sample = pts[np.random.default_rng(3).choice(len(pts), 300, replace=False), :3].astype(np.float64)
    g = sample @ lidar2global[:3, :3].T + lidar2global[:3, 3]
    d = g - lidar2global[:3, 3]
    dist = np.linalg.norm(d, axis=1)
    t, _, _ = world.cast(lidar2global[:3, 3], d / dist[:, None])
    np.testing.assert_allclose(t, dist, atol=2e-3)  # float32 storage


def test_generation_is_deterministic_and_seeded(tmp_path):
    common = ['--train-scenes', '1', '--val-scenes', '0', '--keyframes', '2', '--sweeps', '1', '--scale', '0.05',
              '--workers', '1', '--quiet']
    for name, seed in (('a', 5), ('b', 5), ('c', 6)):
        maker.main(common + ['--seed', str(seed), '--out', str(tmp_path / name)])
    files = sorted(osp.relpath(p, tmp_path / 'a') for p in glob.glob(str(tmp_path / 'a' / '**' / '*'), recursive=True)
                   if osp.isfile(p) and not p.endswith(maker.PARAMS_FILE))  # that one records timings
    assert any(f.endswith('labels.npz') for f in files) and any(f.endswith('.jpg') for f in files)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert not mismatch and not errors
    first_image = [sorted(glob.glob(str(tmp_path / d / 'samples' / 'CAM_FRONT' / '*.jpg')))[0] for d in 'ac']
    assert not filecmp.cmp(*first_image, shallow=False)  # another seed, another world


@pytest.mark.parametrize('argv, message', [
    (['--train-scenes', '9'], '--train-scenes must be in 1..8'),
    (['--val-scenes', '3'], '--val-scenes must be in 0..2'),
    (['--scale', '0'], '--scale must be in'),
    (['--keyframes', '0'], '--keyframes must be >= 1'),
])
def test_bad_arguments_are_refused_with_the_reason(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        maker.main(argv + ['--out', str(tmp_path / 'x'), '--quiet'])


def test_existing_output_needs_force(tmp_path):
    (tmp_path / 'x').mkdir()
    with pytest.raises(SystemExit, match='--force'):
        maker.main(['--out', str(tmp_path / 'x'), '--quiet'])


def test_skip_if_exists_reuses_only_an_identical_world(tmp_path):
    argv = ['--train-scenes', '1', '--val-scenes', '0', '--keyframes', '1', '--sweeps', '0', '--scale', '0.05',
            '--workers', '1', '--quiet', '--out', str(tmp_path / 'w')]
    first = maker.main(argv)
    assert not first.get('skipped') and first['samples'] == 1 and first['images'] == 6
    again = maker.main(argv + ['--skip-if-exists'])
    assert again['skipped'] and again['params'] == first['params']
    with pytest.raises(SystemExit, match='other arguments'):
        maker.main(argv + ['--skip-if-exists', '--seed', '3'])
