"""The full chain: synthetic world -> gen_sweep_info.py -> NuScenesOccDataset + pipelines -> batches.

Geometry is checked against the world's ground truth: 3D points seen at known pixels of each of the
T*N images project, through the pipeline's (augmented) lidar2img, onto pixels of the loaded images
that show the same colour; occupancy voxels project through lidar2img @ ego2lidar onto pixels that
show their class."""
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmcv.parallel import DataContainer
from mmdet.datasets import build_dataset

import gen_sweep_info
import loaders  # noqa: F401  (registers the dataset and the pipeline steps)
from core.occ3d import CAMERA_NAMES
from loaders import build_dataloader
from tools.synthetic import calib, writer
from tools.synthetic.render import pixel_rays, render
from tools.synthetic.world import FREE

H, W = 90, 160
IDA = dict(resize_lim=(0.75, 0.95), final_dim=(64, 128), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), H=H, W=W,
           rand_flip=True)
META_KEYS = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'lidar2img', 'img_timestamp', 'ego2lidar')


def train_pipeline(sweeps_num=7):
    return [dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
            dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=sweeps_num),
            dict(type='LoadOccFromFile', occ_root=None),
            dict(type='RandomTransformImage', ida_aug_conf=IDA, training=True),
            dict(type='DefaultFormatBundle3D'),
            dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'], meta_keys=META_KEYS)]


def eval_pipeline(online):
    return [dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
            dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=7, test_mode=True, online=online),
            dict(type='RandomTransformImage', ida_aug_conf=IDA, training=False),
            dict(type='MultiScaleFlipAug3D', transforms=[
                dict(type='DefaultFormatBundle3D'),
                dict(type='Collect3D', keys=['img'], meta_keys=META_KEYS)])]


def make_dataset(infos, split='train', pipeline='train', **kwargs):
    pipe = train_pipeline() if pipeline == 'train' else pipeline
    return build_dataset(dict(type='NuScenesOccDataset', ann_file=getattr(infos, split), pipeline=pipe,
                              data_root=infos.root, test_mode=split == 'val', **kwargs))


def ground_truth(infos, scene_name):
    ns = infos.world
    i = [s.name for s in ns.scenes].index(scene_name)
    return ns.scenes[i], ns.worlds[i]


def test_dataset_infos_and_key_frame_projection(synthetic_infos):
    ds = make_dataset(synthetic_infos, pipeline=None)
    assert len(ds) == 3 and np.all(ds.flag == 0) and len(ds.CLASSES) == 17
    assert [i['timestamp'] for i in ds.data_infos] == sorted(i['timestamp'] for i in ds.data_infos)
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion
    for idx in range(3):
        d = ds.get_data_info(idx)
        info = ds.data_infos[idx]
        # two float64 quaternion -> matrix formulas (<= 16 EPS apart, tests/core/test_geometry.py) times
        # |t| (2.07 m) plus each side's 3-term dot product: <= ~55 EPS = 1.2e-14
        np.testing.assert_allclose(d['ego2lidar'], transform_matrix(
            info['lidar2ego_translation'], Quaternion(info['lidar2ego_rotation']), inverse=True), atol=1e-13)
        assert d['timestamp'] == info['timestamp'] / 1e6 and d['sample_idx'] == info['token']
        assert len(d['img_filename']) == len(d['lidar2img']) == len(d['img_timestamp']) == 6
        scene_cfg, world = ground_truth(synthetic_infos, d['scene_name'])
        lidar2global = scene_cfg.ego_pose(info['timestamp'], world) @ writer.sensor2ego('LIDAR_TOP')
        for n, cam in enumerate(CAMERA_NAMES):
            t_us = round(d['img_timestamp'][n] * 1e6)
            cam2global = scene_cfg.ego_pose(t_us, world) @ writer.sensor2ego(cam)
            dirs, origin = pixel_rays(cam2global, calib.camera_intrinsic(cam, scene_cfg.scale), W, H)
            pts = origin + dirs[::9, ::16] * 12.0  # points 12 m along rays of a pixel grid
            p = np.c_[pts.reshape(-1, 3), np.ones(pts[..., 0].size)] @ np.linalg.inv(lidar2global).T
            uvd = p @ d['lidar2img'][n].astype(np.float64).T
            uv = uvd[:, :2] / uvd[:, 2:3]
            v, u = np.mgrid[0:H:9, 0:W:16]
            # lidar2img is stored in float32 (each entry within 2^-24 of itself); with |row|_1 <= 300 px (u, v) and
            # <= 1.8 (d), LiDAR-frame points <= 13 m and depths >= 10 m: u d moves by <= 2^-24 x 4e3 px m, d by
            # <= 2^-24 x 24 m, so u (<= 160 px) by <= 5e-5 px; the float64 poses add ~1e-12
            np.testing.assert_allclose(uv, np.c_[u.ravel(), v.ravel()], atol=1e-4)


def test_camera_history_list(synthetic_infos):
    ds = make_dataset(synthetic_infos, pipeline=None)
    assert ds.collect_cam_sweeps(0) == []
    prev = ds.collect_cam_sweeps(2)
    assert len(prev) == 12  # two key-frame intervals of 5 sweeps + the previous key frame
    assert prev[5] is ds.data_infos[1]['cams'] and prev[11] is ds.data_infos[0]['cams']
    for cam in CAMERA_NAMES:
        stamps = [e[cam]['timestamp'] for e in prev]
        assert np.all(np.diff(stamps) < 0)  # newest first
        # whole-microsecond stamps of a 12 Hz clock: two roundings of <= 0.5 us each
        assert np.allclose(np.diff(stamps), -1e6 / 12, rtol=0, atol=1)


def test_train_batch_shapes_and_values(synthetic_infos):
    ds = make_dataset(synthetic_infos)
    loader = build_dataloader(ds, samples_per_gpu=2, workers_per_gpu=0, shuffle=False, seed=0)
    batch = next(iter(loader))
    assert isinstance(batch['img'], DataContainer) and isinstance(batch['img_metas'], DataContainer)
    img = batch['img'].data[0]
    assert img.shape == (2, 48, 3, 64, 128) and img.dtype == torch.uint8
    assert batch['voxel_semantics'].shape == (2, 200, 200, 16) and batch['voxel_semantics'].dtype == torch.uint8
    assert batch['mask_camera'].dtype == torch.bool
    metas = batch['img_metas'].data[0]
    assert len(metas) == 2 and set(metas[0]) == set(META_KEYS)
    for b, meta in enumerate(metas):
        info = ds.data_infos[b]
        labels = np.load(info['occ_path'])
        assert np.array_equal(batch['voxel_semantics'][b].numpy(), labels['semantics'])
        assert np.array_equal(batch['mask_camera'][b].numpy(), labels['mask_camera'].astype(bool))
        assert len(meta['filename']) == len(meta['lidar2img']) == len(meta['img_timestamp']) == 48
        assert meta['img_shape'] == [(64, 128, 3)] * 48
        assert all(m.shape == (4, 4) and m.dtype == np.float32 for m in meta['lidar2img'])
        assert meta['filename'][:6] == [info['cams'][c]['data_path'] for c in CAMERA_NAMES]
        stamps = np.array(meta['img_timestamp']).reshape(8, 6)
        assert np.all(np.diff(stamps, axis=0) <= 0)  # frame-major, newer first
        if b == 0:  # first key frame of the scene: the current frame stands in for the history
            assert np.all(stamps == stamps[0])


def test_train_sample_images_and_matrices_agree_with_the_world(synthetic_infos):
    """For every one of the 48 images: points seen at known pixels of the ground-truth camera project
    through the augmented lidar2img onto pixels of the loaded, augmented image with the same colour."""
    ds = make_dataset(synthetic_infos)
    rng = np.random.default_rng(0)
    for seed in (0, 1):  # two augmentation draws (one of them flips)
        np.random.seed(seed)
        data = ds[2]
        imgs = data['img'].data.numpy()
        meta = data['img_metas'].data
        info = ds.data_infos[2]
        scene_cfg, world = ground_truth(synthetic_infos, info['scene_name'])
        lidar2global = scene_cfg.ego_pose(info['timestamp'], world) @ writer.sensor2ego('LIDAR_TOP')
        assert len({round(t, 6) for t in meta['img_timestamp']}) > 6  # real history frames
        errors = []
        for i in range(48):
            cam = CAMERA_NAMES[i % 6]
            t_us = round(meta['img_timestamp'][i] * 1e6)
            assert meta['filename'][i].endswith(f'__{cam}__{t_us}.jpg')
            cam2global = scene_cfg.ego_pose(t_us, world) @ writer.sensor2ego(cam)
            intrinsic = calib.camera_intrinsic(cam, scene_cfg.scale)
            rgb, dist, _ = render(world, cam2global, intrinsic, W, H)
            dirs, origin = pixel_rays(cam2global, intrinsic, W, H)
            # pixels in flat-coloured regions (resampling and JPEG blur edges)
            pad = np.pad(rgb.astype(int), ((2, 2), (2, 2), (0, 0)), mode='edge')
            win = np.stack([pad[dy:dy + H, dx:dx + W] for dy in range(5) for dx in range(5)])
            flat = (win.max(0) - win.min(0)).max(-1) < 12
            cand = np.argwhere(flat & np.isfinite(dist))
            v, u = cand[rng.choice(len(cand), min(60, len(cand)), replace=False)].T
            pts = origin + dirs[v, u] * dist[v, u, None]
            p = np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(lidar2global).T
            uvd = p @ meta['lidar2img'][i].astype(np.float64).T
            uv = np.round(uvd[:, :2] / uvd[:, 2:3]).astype(int)
            ok = (uv[:, 0] >= 1) & (uv[:, 0] < 127) & (uv[:, 1] >= 1) & (uv[:, 1] < 63)
            got = imgs[i][:, uv[ok, 1], uv[ok, 0]].T.astype(int)    # BGR
            errors.append(np.abs(got - rgb[v[ok], u[ok]][:, ::-1]).mean(1))
        errors = np.concatenate(errors)
        assert len(errors) > 1000
        # per point: the flat window's spread (< 12 levels), which the nearest-pixel rounding (<= 0.67 source px)
        # stays inside, the JPEG loss in flat regions (~1 level at quality 92) and bicubic lobes reaching an edge
        # just outside the window (<= ~7% of its contrast); a wrong matrix lands points on other surfaces
        assert np.median(errors) < 6 and np.mean(errors < 25) > 0.95, (np.median(errors), np.mean(errors < 25))


def test_occupancy_labels_agree_with_the_images_through_ego2lidar(synthetic_infos):
    """Camera-visible occupied voxels (ego frame) projected with lidar2img @ ego2lidar land on pixels
    whose rendered class is the voxel's class."""
    ds = make_dataset(synthetic_infos, pipeline=None)
    d = ds.get_data_info(1)
    labels = np.load(d['occ_path'])
    sem, vis = labels['semantics'], labels['mask_camera'].astype(bool)
    idx = np.argwhere((sem != FREE) & vis)
    centres = idx * 0.4 + 0.2 + np.array([-40.0, -40.0, -1.0])
    scene_cfg, world = ground_truth(synthetic_infos, d['scene_name'])
    hits = total = 0
    object_hits = object_total = 0
    for n, cam in enumerate(CAMERA_NAMES):
        t_us = round(d['img_timestamp'][n] * 1e6)
        cam2global = scene_cfg.ego_pose(t_us, world) @ writer.sensor2ego(cam)
        _, dist, sid = render(world, cam2global, calib.camera_intrinsic(cam, scene_cfg.scale), W, H, shade=False)
        dirs, origin = pixel_rays(cam2global, calib.camera_intrinsic(cam, scene_cfg.scale), W, H)
        occ2img = d['lidar2img'][n].astype(np.float64) @ d['ego2lidar']
        uvd = np.c_[centres, np.ones(len(centres))] @ occ2img.T
        front = uvd[:, 2] > 0.5
        uv = np.round(uvd[front, :2] / uvd[front, 2:3]).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        u, v = uv[ok, 0], uv[ok, 1]
        s = sid[v, u]
        hit_pts = origin + dirs[v, u] * dist[v, u, None]
        pix_label = np.where(s >= 0, world.label[np.maximum(s, 0)],
                             np.where(s == -2, world.ground_class(hit_pts[:, 0], hit_pts[:, 1]), FREE))
        vox_label = sem[tuple(idx[front][ok].T)]
        hits += (pix_label == vox_label).sum()
        total += len(vox_label)
        objects = vox_label < 11
        object_hits += (pix_label[objects] == vox_label[objects]).sum()
        object_total += objects.sum()
    assert total > 2000 and object_total > 100
    # A voxel centre lies up to 0.35 m from the surface it labels, so near silhouettes and occlusion edges its pixel
    # shows the surface beside or in front of it: the agreement is a geometric property of this fixed world (float64
    # rendering, seed 0), lower for the small objects, whose voxels are mostly edge voxels
    assert hits / total > 0.85, hits / total
    assert object_hits / object_total > 0.6, object_hits / object_total


@pytest.mark.parametrize('online', [True, False])
def test_test_pipeline_wraps_one_augmentation_and_online_mode_loads_six_images(synthetic_infos, online):
    ds = make_dataset(synthetic_infos, split='val', pipeline=eval_pipeline(online))
    data = ds[2]
    assert set(data) == {'img', 'img_metas'} and len(data['img']) == 1 and len(data['img_metas']) == 1
    img = data['img'][0].data
    meta = data['img_metas'][0].data
    assert img.shape == ((6 if online else 48), 3, 64, 128) and img.dtype == torch.uint8
    assert len(meta['lidar2img']) == len(meta['filename']) == 48 and set(meta) == set(META_KEYS)
    infos = ds.data_infos
    # test mode: history frames are the previous key frames (index 5, 11, then clamped)
    assert meta['filename'][6:12] == [infos[1]['cams'][c]['data_path'] for c in CAMERA_NAMES]
    assert meta['filename'][12:] == [infos[0]['cams'][c]['data_path'] for c in CAMERA_NAMES] * 6
    # test-time resize of 160x90 to 128x64: r = max(64/90, 128/160) = 0.8, centre crop rows 8..72
    ida = np.eye(4)
    ida[:2, :2] = np.eye(2) * 0.8
    ida[:2, 2] = (0, -8)
    raw = ds.get_data_info(2)['lidar2img'][0]
    # RandomTransformImage stores this same float64 product (ida is exact: 0.8 = 128 / 160, whole pixels) in
    # float32: <= half an ulp of each entry (rtol float32 eps; zeros stay exact)
    np.testing.assert_allclose(meta['lidar2img'][0], ida @ raw, rtol=float(np.finfo(np.float32).eps), atol=0)
    loader = build_dataloader(ds, 1, 0, shuffle=False)
    batch = next(iter(loader))
    assert batch['img'][0].data[0].shape == (1, 6 if online else 48, 3, 64, 128)


def test_one_history_frame_config(synthetic_infos):
    ds = make_dataset(synthetic_infos, pipeline=train_pipeline(sweeps_num=1))
    data = ds[2]
    assert data['img'].data.shape == (12, 3, 64, 128) and len(data['img_metas'].data['lidar2img']) == 12


def test_relative_data_root_resolves_against_the_working_directory(synthetic_world, tmp_path, in_dir):
    parent, name = osp.split(synthetic_world.root)
    with in_dir(parent):
        written = gen_sweep_info.main(['--data-root', name, '--version', 'v1.0-mini', '--out-dir', str(tmp_path),
                                       '--quiet'])
        with open(written['val_mini'][0], 'rb') as f:
            info = pickle.load(f)['infos'][0]
        assert info['cams']['CAM_FRONT']['data_path'].startswith(name + '/samples/CAM_FRONT/')
        ds = build_dataset(dict(type='NuScenesOccDataset', ann_file=written['val_mini'][0], test_mode=True,
                                pipeline=eval_pipeline(online=False)))
        assert ds[0]['img'][0].data.shape[0] == 48
    with in_dir(tmp_path):
        with pytest.raises(FileNotFoundError, match='resolved against the current directory'):
            ds[0]


def test_evaluate_delegates_to_the_evaluator(synthetic_infos, monkeypatch):
    import evaluation
    ds = make_dataset(synthetic_infos, split='val', pipeline=None)
    calls = []
    monkeypatch.setattr(evaluation, 'evaluate_occupancy',
                        lambda results, data_infos, occ_root, logger=None, benchmark=None, camera_mask=None, **kw:
                        calls.append((results, data_infos, occ_root, benchmark, camera_mask)) or dict(mIoU=1.0))
    results = [dict(sem_pred=np.zeros(0, np.int64), occ_loc=np.zeros((0, 3), np.int64))] * 3
    assert ds.evaluate(results, jsonfile_prefix='ignored') == dict(mIoU=1.0)
    assert calls[0][0] is results and calls[0][1] is ds.data_infos
    from core.benchmarks import get_benchmark
    assert calls[0][2] == osp.join(synthetic_infos.root, 'gts') and get_benchmark(calls[0][3]).name == 'occ3d-nuscenes'
    assert calls[0][4] is None                                   # the benchmark's own camera-mask rule


def test_bad_dataset_inputs(synthetic_infos, tmp_path):
    with pytest.raises(FileNotFoundError, match='gen_sweep_info.py'):
        build_dataset(dict(type='NuScenesOccDataset', ann_file=str(tmp_path / 'nope.pkl'), pipeline=[]))
    with open(tmp_path / 'list.pkl', 'wb') as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match='expected a dict with "infos"'):
        build_dataset(dict(type='NuScenesOccDataset', ann_file=str(tmp_path / 'list.pkl'), pipeline=[]))
    with open(tmp_path / 'mm.pkl', 'wb') as f:
        pickle.dump(dict(infos=[dict(token='a', timestamp=0)]), f)
    with pytest.raises(KeyError, match='not written by gen_sweep_info.py'):
        build_dataset(dict(type='NuScenesOccDataset', ann_file=str(tmp_path / 'mm.pkl'), pipeline=[]))
    with pytest.raises(TypeError):
        build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.train, pipeline=[], bogus_option=1))
    # the original's 3D-box arguments do nothing here: they are refused, by name
    for option in (dict(classes=['car']), dict(modality=dict(use_camera=True)), dict(box_type_3d='LiDAR'),
                   dict(use_valid_flag=True), dict(filter_empty_gt=False), dict(file_client_args={})):
        with pytest.raises(TypeError, match=next(iter(option))):
            build_dataset(dict(type='NuScenesOccDataset', ann_file=synthetic_infos.train, pipeline=[], **option))


def test_the_dataset_takes_its_benchmark_by_name(synthetic_infos, monkeypatch):
    from toy_benchmark import register_toy
    ds = make_dataset(synthetic_infos, pipeline=None)
    assert ds.benchmark.name == 'occ3d-nuscenes' and ds.CLASSES == ds.benchmark.class_names
    assert ds.get_data_info(0)['camera_names'] == CAMERA_NAMES     # the sweep loader's camera order
    assert ds.occ_root == osp.join(synthetic_infos.root, 'gts')      # <data_root>/<the benchmark's label_root_dir>
    register_toy(monkeypatch)
    toy = make_dataset(synthetic_infos, pipeline=None, benchmark='toy-street')
    assert toy.CLASSES == ('car', 'road', 'tree') and toy.occ_root == osp.join(synthetic_infos.root, 'toy_labels')
    with pytest.raises(KeyError, match='has no CAM_LEFT in its infos'):   # the toy's camera order
        toy.get_data_info(0)
    from core.benchmarks import benchmark_names
    with pytest.raises(ValueError, match=f"unknown benchmark 'occ3d'; known: {', '.join(benchmark_names())}"):
        make_dataset(synthetic_infos, pipeline=None, benchmark='occ3d')


def test_use_lidar_hands_the_pipeline_the_key_sweep_and_names_infos_without_one(synthetic_infos, tmp_path):
    """use_lidar=True (OPUS-Fusion): the input dict carries the info's LiDAR file and its sweep list; infos
    without `lidar_path` are one error naming the pickle and the sample."""
    import pickle
    ds = make_dataset(synthetic_infos, 'val', pipeline=[], use_lidar=True)
    info, d = ds.data_infos[0], ds.get_data_info(0)
    assert d['pts_filename'] == info['lidar_path'] and d['lidar_sweeps']['prev'] == list(info['lidar_sweeps'])
    assert 'pts_filename' not in make_dataset(synthetic_infos, 'val', pipeline=[]).get_data_info(0)
    with open(synthetic_infos.val, 'rb') as f:
        data = pickle.load(f)
    for entry in data['infos']:
        entry.pop('lidar_path')
    stripped = tmp_path / 'no_lidar.pkl'
    with open(stripped, 'wb') as f:
        pickle.dump(data, f)
    ds = build_dataset(dict(type='NuScenesOccDataset', ann_file=str(stripped), pipeline=[],
                            data_root=synthetic_infos.root, test_mode=True, use_lidar=True))
    with pytest.raises(ValueError, match=f"{stripped}: sample {ds.data_infos[0]['token']} has no lidar_path; write the "
                                         f"infos with gen_sweep_info.py"):
        ds.get_data_info(0)
