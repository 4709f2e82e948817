"""Loading steps: history frame choice, compose_lidar2img against the row-convention formula of the
original (docs/method.md, "Camera history"), online mode, Occ3D label loading."""
import os
import os.path as osp

import numpy as np
import pytest

from core.geometry import quaternion_to_matrix
from core.occ3d import CAMERA_NAMES, LabelFileError
from loaders.pipelines import loading
from loaders.pipelines.loading import LoadMultiViewImageFromMultiSweeps, LoadOccFromFile, compose_lidar2img


def random_rotation(rng):
    return quaternion_to_matrix(rng.normal(size=4))


def test_compose_lidar2img_matches_the_original_row_convention_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r_e2g, r_l2e, r_c2g = random_rotation(rng), random_rotation(rng), random_rotation(rng)
        t_e2g, t_l2e, t_past = rng.normal(size=3) * 500, rng.normal(size=3), rng.normal(size=3) * 500
        s_past = r_c2g.T  # stored row convention
        K = np.array([[1260.0, 0, 800], [0, 1260, 450], [0, 0, 1]])
        # the original's row convention, float64
        R = s_past @ r_e2g @ r_l2e
        T = t_past @ r_e2g @ r_l2e - t_e2g @ r_e2g @ r_l2e - t_l2e @ r_l2e
        r_lc = np.linalg.inv(R.T)
        ext = np.eye(4)
        ext[:3, :3], ext[:3, 3] = r_lc, -r_lc @ T
        k_pad = np.eye(4)
        k_pad[:3, :3] = K
        expected = k_pad @ ext
        got = compose_lidar2img(t_e2g, r_e2g, t_l2e, r_l2e, t_past, s_past, K)
        assert got.dtype == np.float32
        # both sides float64 up to `got`'s float32 storage (<= half an ulp: rtol float32 eps); the float64 paths
        # (LAPACK inverse vs transposes) differ by ~a dozen roundings of terms <= 2000 px x 1700 m: ~1e-8 (atol)
        np.testing.assert_allclose(got, expected, rtol=float(np.finfo(np.float32).eps), atol=1e-7)


@pytest.mark.parametrize('test_mode, sweeps_num, length, expected', [
    (True, 7, 30, [5, 11, 17, 23, 29, 29, 29]),     # previous key frames, clamped to the history
    (True, 7, 150, [5, 11, 17, 23, 29, 35, 41]),
    (True, 1, 12, [5]),
    (False, 7, 5, [0, 1, 2, 3, 4, 4, 4]),           # short history: all of it, last repeated
    (False, 7, 20, [1, 3, 5, 7, 9, 11, 13]),        # max interval 20 // 7 = 2 < 4: interval 2
    (False, 3, 0, []),
])
def test_history_frame_choice(test_mode, sweeps_num, length, expected):
    step = LoadMultiViewImageFromMultiSweeps(sweeps_num=sweeps_num, test_mode=test_mode, online=False)
    assert step.choose(length) == expected


def test_training_interval_is_drawn_in_4_to_8():
    step = LoadMultiViewImageFromMultiSweeps(sweeps_num=7, test_mode=False)
    np.random.seed(0)
    seen = set()
    for _ in range(200):
        c = step.choose(150)
        interval = c[0] + 1
        assert c == [(k + 1) * interval - 1 for k in range(7)]
        seen.add(interval)
    assert seen == {4, 5, 6, 7, 8}


def fake_results(num_history, num_cams=6, short_entry=None):
    """Key-frame results as the dataset makes them, with a history of `num_history` entries whose
    images are tiny files named after their (entry, camera)."""
    rng = np.random.default_rng(1)
    cams = CAMERA_NAMES[:num_cams]
    results = dict(img=[np.full((4, 6, 3), 100 + j, np.uint8) for j in range(num_cams)],
                   img_timestamp=[10.0 + j for j in range(num_cams)], filename=[f'cur{j}.jpg' for j in range(num_cams)],
                   lidar2img=[np.eye(4, dtype=np.float32) * (j + 1) for j in range(num_cams)],
                   img_filename=[f'cur{j}.jpg' for j in range(num_cams)],
                   ego2global_translation=rng.normal(size=3), ego2global_rotation=random_rotation(rng),
                   lidar2ego_translation=rng.normal(size=3), lidar2ego_rotation=random_rotation(rng))
    history = []
    for i in range(num_history):
        entry = {cam: dict(data_path=f'h{i}_{cam}.jpg', timestamp=(9.0 - i) * 1e6, cam_intrinsic=np.eye(3),
                           sensor2global_rotation=random_rotation(rng), sensor2global_translation=rng.normal(size=3))
                 for cam in cams}
        if i == short_entry:
            entry.pop(cams[-1])
        history.append(entry)
    results['cam_sweeps'] = dict(prev=history, next=[])
    return results


def test_first_sample_repeats_the_current_frame():
    step = LoadMultiViewImageFromMultiSweeps(sweeps_num=3, test_mode=False, online=False)
    out = step(fake_results(0))
    assert len(out['img']) == len(out['filename']) == len(out['lidar2img']) == len(out['img_timestamp']) == 24
    for t in range(4):
        for j in range(6):
            assert out['img'][t * 6 + j][0, 0, 0] == 100 + j
            assert out['filename'][t * 6 + j] == f'cur{j}.jpg'
            np.testing.assert_array_equal(out['lidar2img'][t * 6 + j], np.eye(4) * (j + 1))


def test_history_frames_are_frame_major_and_short_entries_fall_back(monkeypatch):
    loaded = []
    monkeypatch.setattr(loading, 'imread_bgr',
                        lambda path, backend: loaded.append(path) or np.zeros((4, 6, 3), np.uint8))
    step = LoadMultiViewImageFromMultiSweeps(sweeps_num=2, test_mode=True, online=False)
    out = step(fake_results(12, short_entry=11))
    # test mode: entries 5 and 11; entry 11 lacks a camera -> entry 10 is used
    expected = [f'h{i}_{cam}.jpg' for i in (5, 10) for cam in CAMERA_NAMES]
    assert loaded == expected and out['filename'][6:] == expected
    assert out['img_timestamp'][6:] == [9.0 - 5] * 6 + [9.0 - 10] * 6
    assert len(out['img']) == 18
    results = fake_results(12, short_entry=11)
    e = results['cam_sweeps']['prev'][5]['CAM_BACK']
    ref = compose_lidar2img(results['ego2global_translation'], results['ego2global_rotation'],
                            results['lidar2ego_translation'], results['lidar2ego_rotation'],
                            e['sensor2global_translation'], e['sensor2global_rotation'], e['cam_intrinsic'])
    np.testing.assert_array_equal(out['lidar2img'][6 + CAMERA_NAMES.index('CAM_BACK')], ref)


def test_history_cameras_follow_the_benchmarks_camera_order(monkeypatch):
    """The dataset passes its benchmark's camera order (`camera_names`); a two-camera rig in another order."""
    monkeypatch.setattr(loading, 'imread_bgr', lambda path, backend: np.zeros((4, 6, 3), np.uint8))
    results = fake_results(12, num_cams=2)      # history entries hold CAM_FRONT and CAM_FRONT_RIGHT
    results['camera_names'] = ('CAM_FRONT_RIGHT', 'CAM_FRONT')
    out = LoadMultiViewImageFromMultiSweeps(sweeps_num=1, test_mode=True)(results)
    assert out['filename'][2:] == ['h5_CAM_FRONT_RIGHT.jpg', 'h5_CAM_FRONT.jpg']


def test_online_mode_loads_only_current_images(monkeypatch, tmp_path):
    results = fake_results(12)
    for entry in results['cam_sweeps']['prev']:
        for cam in entry:
            entry[cam]['data_path'] = str(tmp_path / entry[cam]['data_path'])
            open(entry[cam]['data_path'], 'w').close()
    monkeypatch.setattr(loading, 'imread_bgr', lambda *a: pytest.fail('online mode must not decode history images'))
    out = LoadMultiViewImageFromMultiSweeps(sweeps_num=7, test_mode=True, online=True)(results)
    assert len(out['img']) == 6
    assert len(out['lidar2img']) == len(out['filename']) == len(out['img_timestamp']) == 48


def test_online_is_chosen_explicitly_and_set_test_mode_sets_it(monkeypatch):
    # no global state: the default is offline, whatever the process group says
    assert LoadMultiViewImageFromMultiSweeps(test_mode=True).online is False
    assert LoadMultiViewImageFromMultiSweeps(test_mode=False).online is False
    assert LoadMultiViewImageFromMultiSweeps(test_mode=True, online=True).online is True
    with pytest.raises(ValueError, match='online=True only exists in test mode'):
        LoadMultiViewImageFromMultiSweeps(test_mode=False, online=True)
    with pytest.raises(ValueError, match='multiple of 6'):
        LoadMultiViewImageFromMultiSweeps(test_mode=True, online=True, test_interval=4)
    # one history entry per sample (Occ3D-Waymo): any whole number of samples back is cached
    assert LoadMultiViewImageFromMultiSweeps(test_mode=True, online=True, test_interval=5, history_per_sample=1).online
    # the entry points' one decision reaches the model and every multi-frame loading step
    from engine.build import set_test_mode
    from engine.config import load_config
    cfg = load_config('configs/ops-t_r50_704x256_8f_12e.py')
    set_test_mode(cfg, online=True)
    assert cfg.model.online is True and set(cfg.model.test_cfg) == {'pts'}     # the method's settings only
    steps = [s for s in cfg.data.val.pipeline + cfg.data.test.pipeline
             if s['type'] == 'LoadMultiViewImageFromMultiSweeps']
    assert len(steps) == 2 and all(s['online'] is True for s in steps)
    assert 'online' not in [s for s in cfg.data.train.pipeline if s['type'] == 'LoadMultiViewImageFromMultiSweeps'][0]
    set_test_mode(cfg, online=False)
    assert cfg.model.online is False
    assert all(s['online'] is False for s in steps)


def test_set_test_mode_sets_online_on_the_steps_that_declare_history_frames():
    """set_test_mode finds the multi-frame loaders by their class attribute `loads_history_frames`, not by name."""
    from mmdet.datasets import PIPELINES

    from engine.build import set_test_mode
    from loaders.pipelines.gpu_decode import LoadMultiViewJpegFromMultiSweeps
    assert LoadMultiViewImageFromMultiSweeps.loads_history_frames is True
    assert LoadMultiViewJpegFromMultiSweeps.loads_history_frames is True       # the GPU-decode variant
    assert not getattr(loading.LoadMultiViewImageFromFiles, 'loads_history_frames', False)

    class HistoryProbe:              # a made-up multi-frame loader with another name
        loads_history_frames = True

        def __init__(self, online=False):
            self.online = online

    class MultiSweepsLookalike:      # 'MultiSweeps' in its name, but it declares nothing
        def __init__(self):
            pass

    names = ('HistoryProbeForSetTestMode', 'MultiSweepsLookalikeForSetTestMode')
    PIPELINES.register_module(name=names[0], module=HistoryProbe)
    PIPELINES.register_module(name=names[1], module=MultiSweepsLookalike)
    try:
        from mmcv import Config
        pipeline = [dict(type=names[0]), dict(type=names[1]), dict(type='MultiScaleFlipAug3D', transforms=[
            dict(type=names[0]), dict(type=HistoryProbe), dict(type='DefaultFormatBundle3D')])]
        cfg = Config(dict(model=dict(type='OPS'), data=dict(val=dict(pipeline=pipeline), test=dict(pipeline=[
            dict(type='LoadMultiViewJpegFromMultiSweeps')]))))
        set_test_mode(cfg, online=True)
        val = cfg.data.val.pipeline
        assert val[0]['online'] is True and 'online' not in val[1]
        inner = val[2]['transforms']
        assert inner[0]['online'] is True and inner[1]['online'] is True and 'online' not in inner[2]
        assert cfg.data.test.pipeline[0]['online'] is True
        set_test_mode(cfg, online=False)
        assert cfg.data.val.pipeline[0]['online'] is False and cfg.data.test.pipeline[0]['online'] is False
    finally:
        for name in names:
            PIPELINES.module_dict.pop(name, None)


def write_labels(folder, **arrays):
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(osp.join(folder, 'labels.npz'), **arrays)


def test_load_occ_from_file(tmp_path):
    rng = np.random.default_rng(0)
    sem = rng.integers(0, 18, (200, 200, 16)).astype(np.uint8)
    ml, mc = rng.integers(0, 2, (2, 200, 200, 16)).astype(np.uint8)
    write_labels(tmp_path / 'gts' / 'scene-0001' / 'tok', semantics=sem, mask_lidar=ml, mask_camera=mc)
    out = LoadOccFromFile(occ_root=str(tmp_path / 'gts'))(dict(scene_name='scene-0001', sample_idx='tok'))
    assert out['voxel_semantics'].dtype == np.uint8 and np.array_equal(out['voxel_semantics'], sem)
    assert out['mask_camera'].dtype == bool and np.array_equal(out['mask_camera'], mc.astype(bool))
    assert np.array_equal(out['mask_lidar'], ml.astype(bool))
    out = LoadOccFromFile()(dict(occ_path=str(tmp_path / 'gts' / 'scene-0001' / 'tok' / 'labels.npz')))
    assert np.array_equal(out['voxel_semantics'], sem)
    with pytest.raises(FileNotFoundError, match=r'Occ3D-nuScenes labels not found: .*scene-0001/other/labels.npz'):
        LoadOccFromFile(occ_root=str(tmp_path / 'gts'))(dict(scene_name='scene-0001', sample_idx='other'))
    write_labels(tmp_path / 'gts' / 'scene-0001' / 'bad', semantics=sem)
    with pytest.raises(LabelFileError, match=r"lacks the array\(s\) \['mask_lidar', 'mask_camera'\]"):
        LoadOccFromFile(occ_root=str(tmp_path / 'gts'))(dict(scene_name='scene-0001', sample_idx='bad'))
    with pytest.raises(ValueError, match='ignore_class_names'):
        LoadOccFromFile(occ_root='x', ignore_class_names=['car'])
