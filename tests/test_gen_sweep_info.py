"""gen_sweep_info.py on the synthetic world: every field against the world's ground-truth poses, the
camera-sweep chains, the devkit split, extension of mmdet3d pickles and the error messages."""
import os
import os.path as osp
import pickle
import shutil

import numpy as np
import pytest

import gen_sweep_info
from tools.synthetic import calib, writer

CAMS = calib.CAMERA_NAMES
SWEEP_DT = 1e6 / 12  # microseconds between camera images
EPS = np.finfo(np.float64).eps
# Poses travel through the tables as quaternions (Shepperd's method, normalisation, back to a matrix: ~13 float64
# roundings of O(1) numbers, ~7 EPS per rotation entry) and gen_sweep_info multiplies and inverts up to four of
# them: <= ~30 EPS on rotation entries
ROT_ATOL = 64 * EPS
# Translations are global positions (<= 200 m in this world) run through the same products and a 4x4 inverse:
# the same few dozen roundings, on numbers up to 200 m
TRANS_ATOL = 64 * EPS * 200


def load(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def gt_poses(scene_cfg, world, cam, t_us, t_key_us):
    """Ground truth: camera -> global at the image time, LiDAR -> global at the key frame."""
    cam2global = scene_cfg.ego_pose(t_us, world) @ writer.sensor2ego(cam)
    lidar2global = scene_cfg.ego_pose(t_key_us, world) @ writer.sensor2ego('LIDAR_TOP')
    return cam2global, lidar2global


def test_splits_follow_the_devkit_mini_lists(synthetic_infos):
    train, val = load(synthetic_infos.train), load(synthetic_infos.val)
    assert train['metadata'] == dict(version='v1.0-mini') == val['metadata']
    assert [i['scene_name'] for i in train['infos']] == ['scene-0061'] * 3
    assert [i['scene_name'] for i in val['infos']] == ['scene-0103'] * 3
    assert osp.basename(synthetic_infos.train) == 'nuscenes_infos_train_mini_sweep.pkl'


@pytest.mark.parametrize('split', ['train', 'val'])
def test_key_frame_fields_match_the_ground_truth(synthetic_infos, split):
    world_ns = synthetic_infos.world
    scene_idx = 0 if split == 'train' else 1
    scene_cfg, world = world_ns.scenes[scene_idx], world_ns.worlds[scene_idx]
    infos = load(getattr(synthetic_infos, split))['infos']
    for k, info in enumerate(infos):
        t_key = scene_cfg.key_time(k)
        assert info['token'] == writer.token(scene_cfg.seed, scene_cfg.name, 'sample', k)
        assert info['timestamp'] == t_key
        assert info['occ_path'] == osp.join(world_ns.root, 'gts', scene_cfg.name, info['token'], 'labels.npz')
        assert osp.isfile(info['occ_path'])
        ego = scene_cfg.ego_pose(t_key, world)
        # copied from the tables, which hold the writer's float64 values (JSON round-trips them exactly): equal
        np.testing.assert_array_equal(info['ego2global_translation'], ego[:3, 3])
        np.testing.assert_array_equal(info['lidar2ego_translation'], calib.lidar_translation())
        assert list(info['cams']) == list(CAMS)
        for cam, entry in info['cams'].items():
            t_cam = t_key + int(round(calib.CAMERA_TIME_OFFSETS[cam] * 1e6))
            cam2global, lidar2global = gt_poses(scene_cfg, world, cam, t_cam, t_key)
            cam2lidar = np.linalg.inv(lidar2global) @ cam2global
            assert entry['timestamp'] == t_cam and entry['type'] == cam
            assert entry['data_path'] == osp.join(world_ns.root, writer.image_filename(scene_cfg, cam, t_cam, True))
            np.testing.assert_allclose(entry['sensor2lidar_rotation'], cam2lidar[:3, :3], atol=ROT_ATOL)
            np.testing.assert_allclose(entry['sensor2lidar_translation'], cam2lidar[:3, 3], atol=TRANS_ATOL)
            # row convention: the transpose of camera -> global
            np.testing.assert_allclose(entry['sensor2global_rotation'], cam2global[:3, :3].T, atol=ROT_ATOL)
            np.testing.assert_allclose(entry['sensor2global_translation'], cam2global[:3, 3], atol=TRANS_ATOL)
            # copied from the tables (JSON round-trips float64 exactly)
            np.testing.assert_array_equal(entry['cam_intrinsic'], calib.camera_intrinsic(cam, scene_cfg.scale))
            assert not {'sample_data_token', 'sensor2ego_rotation', 'ego2global_rotation'} & set(entry)


def test_camera_sweeps_are_the_five_previous_images_of_each_camera(synthetic_infos):
    world_ns = synthetic_infos.world
    scene_cfg, world = world_ns.scenes[0], world_ns.worlds[0]
    infos = load(synthetic_infos.train)['infos']
    assert infos[0]['cam_sweeps'] == []  # first sample of the scene
    for k in (1, 2):
        sweeps = infos[k]['cam_sweeps']
        assert len(sweeps) == 5
        for j, entry in enumerate(sweeps):
            assert list(entry) == list(CAMS)
            for cam, e in entry.items():
                t_expected = scene_cfg.key_time(k) + calib.CAMERA_TIME_OFFSETS[cam] * 1e6 - (j + 1) * SWEEP_DT
                # the writer rounds each stamp to whole microseconds (<= 0.5 us); t_expected is float64 arithmetic
                # at 1.6e15 us (spacing 0.25 us: three operations, <= 0.375 us)
                assert abs(e['timestamp'] - t_expected) <= 1
                assert e['data_path'] == osp.join(world_ns.root,
                                                  writer.image_filename(scene_cfg, cam, e['timestamp'], False))
                cam2global = scene_cfg.ego_pose(e['timestamp'], world) @ writer.sensor2ego(cam)
                np.testing.assert_allclose(e['sensor2global_rotation'], cam2global[:3, :3].T, atol=ROT_ATOL)
                np.testing.assert_allclose(e['sensor2global_translation'], cam2global[:3, 3], atol=TRANS_ATOL)
                assert set(e) == {'data_path', 'sensor2global_rotation', 'sensor2global_translation',
                                  'cam_intrinsic', 'timestamp'}
    # LiDAR sweeps: only key-frame scans exist in the synthetic world
    assert [len(i['lidar_sweeps']) for i in infos] == [0, 1, 2]
    assert infos[2]['lidar_sweeps'][0]['timestamp'] == scene_cfg.key_time(1)


def copy_tables(src_root, dst_root, version='v1.0-mini'):
    shutil.copytree(osp.join(src_root, version), osp.join(dst_root, version))


def run(argv):
    return gen_sweep_info.main(argv + ['--quiet'])


def test_missing_table_is_named(synthetic_world, tmp_path):
    copy_tables(synthetic_world.root, tmp_path)
    os.remove(tmp_path / 'v1.0-mini' / 'sample_data.json')
    with pytest.raises(SystemExit, match=r'table\(s\) missing .*sample_data\.json'):
        run(['--data-root', str(tmp_path), '--version', 'v1.0-mini'])
    with pytest.raises(SystemExit, match='v1.0-trainval is not a directory'):
        run(['--data-root', str(tmp_path), '--version', 'v1.0-trainval'])


def test_missing_image_and_label_files_are_named(synthetic_world, tmp_path):
    copy_tables(synthetic_world.root, tmp_path)
    os.symlink(osp.join(synthetic_world.root, 'maps'), tmp_path / 'maps')
    os.symlink(osp.join(synthetic_world.root, 'gts'), tmp_path / 'gts')
    with pytest.raises(SystemExit, match=r'file listed in the nuScenes tables is missing: .*samples/CAM_FRONT/.*\.jpg'):
        run(['--data-root', str(tmp_path), '--version', 'v1.0-mini'])
    for d in ('samples', 'sweeps'):
        os.symlink(osp.join(synthetic_world.root, d), tmp_path / d)
    os.remove(tmp_path / 'gts')
    with pytest.raises(SystemExit, match='Occ3D-nuScenes labels folder not found'):
        run(['--data-root', str(tmp_path), '--version', 'v1.0-mini'])
    shutil.copytree(osp.join(synthetic_world.root, 'gts'), tmp_path / 'gts')
    victim = sorted(os.listdir(tmp_path / 'gts' / 'scene-0103'))[0]
    os.remove(tmp_path / 'gts' / 'scene-0103' / victim / 'labels.npz')
    with pytest.raises(SystemExit, match=f'Occ3D-nuScenes label file missing: .*{victim}/labels.npz'):
        run(['--data-root', str(tmp_path), '--version', 'v1.0-mini'])
    # the checks can be skipped (e.g. to prepare infos before the files are extracted)
    written = run(['--data-root', str(tmp_path), '--version', 'v1.0-mini', '--no-check-files'])
    assert written['val_mini'][1] == 3


def test_extends_existing_mmdet3d_pickles_keeping_order_and_extra_fields(synthetic_infos, tmp_path):
    ours = load(synthetic_infos.train)['infos']
    # an mmdet3d-style pickle: other order, box fields, lidar sweeps under `sweeps`
    old = [dict(token=i['token'], timestamp=i['timestamp'], gt_boxes=np.full((2, 7), n, np.float32),
                gt_names=np.array(['car', 'pedestrian']), sweeps=[dict(marker=n)]) for n, i in enumerate(ours)][::-1]
    with open(tmp_path / 'nuscenes_infos_train.pkl', 'wb') as f:
        pickle.dump(dict(infos=old, metadata=dict(version='v1.0-mini')), f)
    written = run(['--data-root', synthetic_infos.root, '--version', 'v1.0-mini', '--out-dir', str(tmp_path)])
    extended = load(written['train_mini'][0])['infos']
    assert [i['token'] for i in extended] == [i['token'] for i in ours][::-1]
    for e, o in zip(extended, old):
        assert e['gt_boxes'] is not None and np.array_equal(e['gt_boxes'], o['gt_boxes'])
        assert e['lidar_sweeps'] == o['sweeps'] and 'sweeps' not in e
    by_token = {i['token']: i for i in ours}
    for e in extended:
        ref = by_token[e['token']]
        assert e['scene_name'] == ref['scene_name'] and len(e['cam_sweeps']) == len(ref['cam_sweeps'])
        # the same computation on the same tables: equal
        np.testing.assert_array_equal(e['cams']['CAM_BACK']['sensor2lidar_rotation'],
                                      ref['cams']['CAM_BACK']['sensor2lidar_rotation'])
    # the val split had no mmdet3d pickle: built from the tables
    assert len(load(written['val_mini'][0])['infos']) == 3
