"""loaders/pipelines/points.py: the LiDAR loading steps of OPUS-Fusion on the real nuScenes sweep of ../shared/data
(and on small files written here for the bad inputs), against independent float64 / numpy computations:

* the key sweep: N = file size / 20 bytes, the file's values;
* padding when a key frame has no sweeps: the key points plus 9 copies without the points of the 2 m square
  around the sensor, counted with numpy;
* a sweep taken 50 ms earlier from a pose 0.6 m behind (its `sensor2lidar` built as gen_sweep_info.py does, through
  the global frame): its points in the key frame's ego frame equal, within float32 rounding, the float64 chain
  `inv(ego2global_key) @ ego2global_sweep @ lidar2ego @ p` (another path through the same poses);
* the range filter: strict inequalities as mmdet3d.
"""
import os.path as osp

import numpy as np
import pytest
from mmcv.utils import build_from_cfg
from mmdet.datasets.builder import PIPELINES

from core.geometry import rigid_transform
from lidar_reference import float32_bound
from loaders.pipelines.points import (
    LiDARToOccSpace,
    LoadPointsFromFile,
    LoadPointsFromMultiSweeps,
    PointCloudError,
    PointsRangeFilter,
    lidar_input_dict,
    read_points,
)

POINT_CLOUD_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
# the authors' config (T/S/M/L), restated
AUTHORS_STEPS = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=9, use_dim=[0, 1, 2, 3, 4], pad_empty_sweeps=True,
         remove_close=True),
    dict(type='LiDARToOccSpace'),
    dict(type='PointsRangeFilter', point_cloud_range=POINT_CLOUD_RANGE)]


def run(steps, results):
    for step in steps:
        results = step(results)
    return results


def keyframe_input(kf, sweeps=()):
    info = kf.info
    lidar2ego = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
    return dict(sample_idx='kf', pts_filename=kf.lidar_path, lidar_sweeps=dict(prev=list(sweeps), next=[]),
                timestamp=info['timestamp'], ego2lidar=np.linalg.inv(lidar2ego))


def test_key_sweep_and_padding_on_the_real_sweep(real_keyframe):
    steps = [build_from_cfg(cfg, PIPELINES) for cfg in AUTHORS_STEPS]
    raw = np.fromfile(real_keyframe.lidar_path, dtype=np.float32)
    n = osp.getsize(real_keyframe.lidar_path) // 20
    assert n == 34688 == raw.size // 5
    loaded = steps[0](keyframe_input(real_keyframe))['points']
    assert loaded.dtype == np.float32 and np.array_equal(loaded, raw.reshape(-1, 5))

    results = run(steps[:2], keyframe_input(real_keyframe))
    key = raw.reshape(-1, 5).copy()
    close = (np.abs(key[:, 0]) < 1.0) & (np.abs(key[:, 1]) < 1.0)
    assert 0 < close.sum() < n                           # the car's own returns
    stacked = results['points']
    assert stacked.shape == (n + 9 * (n - close.sum()), 5)
    key[:, 4] = 0.0
    assert np.array_equal(stacked[:n], key)              # the key sweep, close points kept, time lag 0
    for k in range(9):
        block = stacked[n + k * (n - close.sum()):n + (k + 1) * (n - close.sum())]
        assert np.array_equal(block, key[~close])

    # into the ego frame: float64 lidar2ego @ p, within float32 rounding; then the range filter
    results = steps[2](results)
    lidar2ego = np.linalg.inv(results['ego2lidar'])
    ego = results['points'][:n, :3].astype(np.float64)
    want = key[:, :3].astype(np.float64) @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
    assert (np.abs(ego - want) <= float32_bound(lidar2ego, key[:, :3])).all()
    assert np.array_equal(results['ego2points'], np.eye(4)) and results['points'].dtype == np.float32
    before = results['points']
    results = steps[3](results)
    lo, hi = np.float32(POINT_CLOUD_RANGE[:3]), np.float32(POINT_CLOUD_RANGE[3:])
    inside = ((before[:, :3] > lo) & (before[:, :3] < hi)).all(axis=1)
    assert np.array_equal(results['points'], before[inside]) and 0 < inside.sum() < len(before)


def test_a_sweep_from_another_pose_lands_in_the_key_ego_frame(real_keyframe, tmp_path):
    info = real_keyframe.info
    ego2global = np.asarray(info['ego2global'], dtype=np.float64)
    lidar2ego = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
    # the car 0.6 m further back and turned by -0.3 degrees, 50 ms before the key frame
    yaw = np.deg2rad(-0.3)
    motion = rigid_transform(np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]),
                             [-0.6, 0.02, 0.0])
    ego2global_sweep = ego2global @ motion
    # gen_sweep_info.py's sensor2lidar: inv(lidar2global of the key frame) @ lidar2global of the sweep
    sensor2lidar = np.linalg.inv(ego2global @ lidar2ego) @ (ego2global_sweep @ lidar2ego)
    sweep_path = str(tmp_path / 'sweep.pcd.bin')
    raw = np.fromfile(real_keyframe.lidar_path, dtype=np.float32).reshape(-1, 5)
    raw.tofile(sweep_path)
    key_ts_us = int(round(info['timestamp'] * 1e6))
    sweep = dict(data_path=sweep_path, timestamp=key_ts_us - 50_000, sensor2lidar_rotation=sensor2lidar[:3, :3],
                 sensor2lidar_translation=sensor2lidar[:3, 3])
    steps = [build_from_cfg(cfg, PIPELINES) for cfg in AUTHORS_STEPS[:3]]
    results = run(steps, keyframe_input(real_keyframe, [sweep]))
    n = len(raw)
    far = raw[~((np.abs(raw[:, 0]) < 1.0) & (np.abs(raw[:, 1]) < 1.0))]
    pts = results['points']
    assert pts.shape == (n + len(far), 5)                # one sweep: no padding
    got = pts[n:, :3].astype(np.float64)
    p = far[:, :3].astype(np.float64)
    # the other path: sweep LiDAR -> sweep ego -> global -> key ego, float64
    want = (np.linalg.inv(ego2global) @ ego2global_sweep @ lidar2ego @ np.c_[p, np.ones(len(p))].T).T[:, :3]
    bound = float32_bound(lidar2ego, p, sensor2lidar[:3, 3])
    assert (np.abs(got - want) <= bound).all() and bound.max() < 1e-4   # metres
    assert np.abs(want - (p @ lidar2ego[:3, :3].T + lidar2ego[:3, 3])).max() > 0.5   # the motion is visible
    assert np.array_equal(pts[n:, 3], far[:, 3])
    # time lag: float64 seconds, rounded to float32 once
    assert (pts[n:, 4] == np.float32(info['timestamp'] - (key_ts_us - 50_000) / 1e6)).all()
    assert abs(float(pts[n, 4]) - 0.05) < 1e-6


def test_sweeps_num_takes_the_newest_and_does_not_pad_a_short_list(tmp_path):
    path = str(tmp_path / 'p.pcd.bin')
    np.array([[5.0, 0.0, 0.0, 1.0, 7.0], [0.5, 0.5, 0.0, 2.0, 3.0]], dtype=np.float32).tofile(path)
    sweeps = [dict(data_path=path, timestamp=1_000_000 - 50_000 * (i + 1), sensor2lidar_rotation=np.eye(3),
                   sensor2lidar_translation=np.array([float(i), 0.0, 0.0])) for i in range(12)]
    base = dict(points=np.zeros((1, 5), np.float32), timestamp=1.0)
    step = LoadPointsFromMultiSweeps(sweeps_num=9, use_dim=[0, 1, 2, 3, 4], pad_empty_sweeps=True, remove_close=True)
    pts = step(dict(base, lidar_sweeps=dict(prev=sweeps)))['points']
    # 1 key point + 9 sweeps of one far point (the (0.5, 0.5) one is close), the newest first
    assert pts.shape == (10, 5)
    assert np.array_equal(pts[1:, 0], np.arange(9) + np.float32(5.0))
    assert np.allclose(pts[1:, 4], 0.05 * (np.arange(9) + 1), rtol=0, atol=1e-7)   # float32 of k * 0.05 s
    assert step(dict(base, lidar_sweeps=dict(prev=sweeps[:3])))['points'].shape == (4, 5)
    keep_close = LoadPointsFromMultiSweeps(sweeps_num=2, use_dim=[0, 1, 2, 4])
    pts = keep_close(dict(base, lidar_sweeps=dict(prev=sweeps)))['points']
    assert pts.shape == (5, 4) and np.array_equal(pts[1:3, 3], np.float32([0.05, 0.05]))


def test_lidar_input_dict_from_gen_sweep_info(real_keyframe_infos):
    import mmcv
    info = mmcv.load(real_keyframe_infos.ann_file)['infos'][0]
    inputs = lidar_input_dict(info, real_keyframe_infos.ann_file)
    assert inputs['lidar_sweeps'] == dict(prev=[], next=[])   # the first sample of its scene
    assert read_points(inputs['pts_filename'], 5).shape == (34688, 5)
    with pytest.raises(PointCloudError, match=r'sample tok has no lidar_path; write the infos with gen_sweep_info'):
        lidar_input_dict(dict(token='tok'), 'x.pkl')
    with pytest.raises(PointCloudError, match=r'x.pkl: sample tok has no lidar_sweeps \(an mmdet3d pickle'):
        lidar_input_dict(dict(token='tok', lidar_path='a.bin', sweeps=[]), 'x.pkl')


def test_bad_files_and_inputs(tmp_path):
    empty, truncated, four = (str(tmp_path / f) for f in ('empty.bin', 'truncated.bin', 'four.bin'))
    open(empty, 'wb').close()
    np.zeros(21, np.float32)[:5].tofile(truncated)
    with open(truncated, 'ab') as f:
        f.write(b'\0')                                  # 21 bytes
    np.zeros((3, 4), np.float32).tofile(four)           # 48 bytes: 3 points of 4 values
    with pytest.raises(PointCloudError, match='LiDAR file is empty: .*empty.bin. Extract it again'):
        read_points(empty, 5)
    with pytest.raises(PointCloudError, match='has 21 bytes, not a whole number of 5-value float32 points'):
        read_points(truncated, 5)
    with pytest.raises(PointCloudError, match='48 bytes.*another dimension'):
        read_points(four, 5)
    with pytest.raises(FileNotFoundError, match='file not found'):
        read_points(str(tmp_path / 'missing.bin'), 5)
    with pytest.raises(PointCloudError, match='has no pts_filename'):
        LoadPointsFromFile()(dict(sample_idx='s'))
    with pytest.raises(PointCloudError, match=r'are \(3, 4\), not \[N, 5\] like the sweeps'):
        LoadPointsFromMultiSweeps()(dict(points=np.zeros((3, 4), np.float32), lidar_sweeps=dict(prev=[])))
    with pytest.raises(PointCloudError, match='has no lidar_sweeps'):
        LoadPointsFromMultiSweeps()(dict(points=np.zeros((3, 5), np.float32)))
    with pytest.raises(ValueError, match='use_dim'):
        LoadPointsFromFile(use_dim=[0, 5])
    with pytest.raises(ValueError, match="coord_type='DEPTH'"):
        LoadPointsFromFile(coord_type='DEPTH')
    with pytest.raises(ValueError, match='max > min'):
        PointsRangeFilter([0, 0, 0, 1, 1])
    with pytest.raises(PointCloudError, match='ego2lidar'):
        LiDARToOccSpace()(dict(points=np.zeros((1, 5), np.float32)))
