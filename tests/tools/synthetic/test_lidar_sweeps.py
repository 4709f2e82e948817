"""The synthetic world's LiDAR sweeps (tools/make_synthetic_nuscenes.py --lidar-sweeps): the nuScenes timeline
(sweeps/LIDAR_TOP between the key-frame scans, chained by prev/next), recorded by gen_sweep_info.py as
`lidar_sweeps`, and loaded by the OPUS-Fusion LiDAR steps into the key frame's ego frame where the world's own
poses (SceneConfig.ego_pose, independent of the tables and the infos) put them."""
import os.path as osp

import mmcv
import numpy as np
import pytest

from core.geometry import quaternion_to_matrix, rigid_inverse, rigid_transform
from lidar_reference import float32_bound
from loaders.pipelines.points import (
    LiDARToOccSpace,
    LoadPointsFromFile,
    LoadPointsFromMultiSweeps,
    lidar_input_dict,
    read_points,
)
from tools.synthetic import writer

LIDAR_SWEEPS = 2


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """One scene, two key frames, two LiDAR sweeps between them, tiny images; and its info pickle."""
    import gen_sweep_info
    from tools import make_synthetic_nuscenes as maker
    root = str(tmp_path_factory.mktemp('synthetic_lidar') / 'nuscenes')
    args = maker.parse_args(['--train-scenes', '1', '--val-scenes', '0', '--keyframes', '2', '--sweeps', '0',
                             '--lidar-sweeps', str(LIDAR_SWEEPS), '--scale', '0.05', '--workers', '1', '--quiet',
                             '--out', root])
    summary = maker.generate(args)
    written = gen_sweep_info.main(['--data-root', root, '--version', 'v1.0-mini', '--quiet'])
    infos = sorted(mmcv.load(written['train_mini'][0])['infos'], key=lambda i: i['timestamp'])
    return maker.make_scenes(args)[0], root, summary, infos, written['train_mini'][0]


def test_timeline_and_infos(world):
    scene, root, summary, infos, _ = world
    assert summary['params']['lidar_sweeps'] == LIDAR_SWEEPS
    times = scene.lidar_times()
    key0, key1 = scene.key_time(0), scene.key_time(1)
    # 20 Hz would be 9 sweeps; here 2, evenly spaced: whole microseconds of 0.5 s / 3
    assert [t for t, _, _ in times] == [key0, key0 + 166_667, key0 + 333_333, key1]
    assert [key for _, key, _ in times] == [True, False, False, True]
    for t, key, _ in times:
        path = osp.join(root, writer.lidar_filename(scene, t, key))
        assert path.split('/')[-3] == ('samples' if key else 'sweeps') and read_points(path, 5).shape[0] > 1000
    assert infos[0]['lidar_sweeps'] == []
    # newest first: the two sweeps, then the previous key frame's scan (up to 10 previous LiDAR records)
    assert [s['timestamp'] for s in infos[1]['lidar_sweeps']] == [key0 + 333_333, key0 + 166_667, key0]
    assert infos[1]['lidar_sweeps'][0]['data_path'].split('/')[-3] == 'sweeps'


def test_sweeps_land_where_the_world_poses_put_them(world):
    scene, _, _, infos, ann_file = world
    info = infos[1]
    world3d = scene.world()
    lidar2ego = rigid_transform(quaternion_to_matrix(info['lidar2ego_rotation']), info['lidar2ego_translation'])
    results = dict(sample_idx=info['token'], timestamp=info['timestamp'] / 1e6, ego2lidar=rigid_inverse(lidar2ego),
                   **lidar_input_dict(info, ann_file))
    steps = [LoadPointsFromFile(load_dim=5, use_dim=5),
             LoadPointsFromMultiSweeps(sweeps_num=9, use_dim=[0, 1, 2, 3, 4], pad_empty_sweeps=True,
                                       remove_close=True),
             LiDARToOccSpace()]
    for step in steps:
        results = step(results)
    points = results['points']
    key_pose = scene.ego_pose(info['timestamp'], world3d)
    start = len(read_points(info['lidar_path'], 5))
    for sweep in info['lidar_sweeps']:                     # fewer than 9: all three, no padding
        raw = read_points(sweep['data_path'], 5)
        far = raw[~((np.abs(raw[:, 0]) < 1.0) & (np.abs(raw[:, 1]) < 1.0))]
        got = points[start:start + len(far)]
        start += len(far)
        # the world's truth: sweep LiDAR -> global at the sweep's time -> key frame's ego (float64)
        chain = rigid_inverse(key_pose) @ scene.ego_pose(sweep['timestamp'], world3d) @ writer.sensor2ego('LIDAR_TOP')
        p = far[:, :3].astype(np.float64)
        want = p @ chain[:3, :3].T + chain[:3, 3]
        s2l = np.asarray(sweep['sensor2lidar_translation'])
        assert (np.abs(got[:, :3] - want) <= float32_bound(lidar2ego, p, s2l)).all()
        assert (got[:, 4] == np.float32(info['timestamp'] / 1e6 - sweep['timestamp'] / 1e6)).all()
        # the ground (intensity 8 in the synthetic scans) is the plane z = 0 of every ego frame
        ground = got[:, 3] == 8.0
        assert ground.sum() > 100 and np.abs(got[ground, 2]).max() < 1e-4
    assert start == len(points)
