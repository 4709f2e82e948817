"""NuScenesOccupancyDataset and the nuScenes-Occupancy pipeline steps on the synthetic world in that layout.

The frame is checked against the world's ground truth: voxels of the loaded grid (LiDAR frame, flipped by the
OPUS-V2 GT flips as the authors' `RandomTransformOcc` does: loaders/pipelines/transforms.py of
github.com/w1394945493/OPUS at 216dc53, grid reversed along x / y, `ego2occ <- bda @ ego2occ`) project through
the pipeline's `ego2img @ inverse(ego2occ)` onto pixels that show their class, in the key frame and in a past
frame; the voxel centres' distances come from the world's own poses, not from the pipeline's matrices.
"""
import numpy as np
import pytest
from mmdet.datasets import build_dataset

import loaders  # noqa: F401  (registers the Occ3D dataset and the shared steps)
import loaders.nuscenes_occupancy_dataset  # noqa: F401  (registers NuScenesOccupancyDataset, FullCameraMask)
from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY
from core.occ3d import CAMERA_NAMES
from core.occ3d import CLASS_NAMES as OCC3D_CLASS_NAMES
from nusc_occupancy_world import nusc_occupancy_world
from tools.synthetic import calib, writer
from tools.synthetic.render import pixel_rays, render
from tools.synthetic.world import FREE

H, W = 90, 160
BENCH = 'nuscenes-occupancy'
LO = np.array(NUSCENES_OCCUPANCY.point_cloud_range[:3])
# our label (0..15) -> the world's Occ3D id (same class names), free -> the world's free
TO_WORLD_ID = np.array([OCC3D_CLASS_NAMES.index(n) for n in NUSCENES_OCCUPANCY.class_names] + [FREE])


@pytest.fixture(scope='module')
def occ_world(synthetic_world, tmp_path_factory):
    return nusc_occupancy_world(synthetic_world, tmp_path_factory)


def make_dataset(world, pipeline=None, split='val', **kwargs):
    return build_dataset(dict(type='NuScenesOccupancyDataset', ann_file=getattr(world, split), pipeline=pipeline,
                              data_root=world.root, test_mode=True, **kwargs))


def test_input_dict_is_the_occ3d_one_in_the_lidar_frame(occ_world):
    ds = make_dataset(occ_world)
    base = build_dataset(dict(type='NuScenesOccDataset', ann_file=occ_world.val, data_root=occ_world.root,
                              test_mode=True))
    assert ds.occ_root == occ_world.occ_root and ds.CLASSES == NUSCENES_OCCUPANCY.class_names
    for idx in range(len(ds)):
        d, ref, info = ds.get_data_info(idx), base.get_data_info(idx), ds.data_infos[idx]
        assert (d['scene_token'], d['lidar_token']) == (info['scene_token'], info['lidar_token'])
        np.testing.assert_array_equal(d['ego2lidar'], np.eye(4))        # grid frame = LiDAR frame
        assert set(d) == set(ref) | {'scene_token', 'lidar_token'}
        for key in set(ref) - {'ego2lidar', 'cam_sweeps'}:
            assert np.all(np.asarray(d[key]) == np.asarray(ref[key])) if key != 'lidar2img' else \
                all(np.array_equal(a, b) for a, b in zip(d[key], ref[key]))
        paths = [[{c: e['data_path'] for c, e in sweep.items()} for sweep in x['cam_sweeps']['prev']] for x in (d, ref)]
        assert paths[0] == paths[1]
        assert NUSCENES_OCCUPANCY.label_path(d, ds.occ_root) == info['occ_path']


def voxel_class_agreement(sem, flips, metas, scene_cfg, world, key_us, samples=20000, frame=None):
    """Fraction of sampled surface voxels of `sem` (grid frame, flipped by `flips`) whose pixel, through each
    view's `ego2img @ inverse(ego2occ)` (or `frame(view)`), shows their class; and the number compared.

    A voxel is compared where its centre lies within 0.3 m of the rendered surface along its pixel's ray
    (the surface it labels is visible there); its distance comes from the world: grid frame -> (unflip) LiDAR
    frame of the key frame -> global by the world's pose."""
    rng = np.random.default_rng(0)
    occupied = np.argwhere(sem != NUSCENES_OCCUPANCY.free_label)
    idx = occupied[rng.choice(len(occupied), min(samples, len(occupied)), replace=False)]
    centres = idx * 0.2 + 0.1 + LO                                   # float64 metres, grid frame
    unflipped = centres * np.array([-1.0 if flips[0] else 1.0, -1.0 if flips[1] else 1.0, 1.0])
    lidar2global = scene_cfg.ego_pose(key_us, world) @ writer.sensor2ego(writer.LIDAR)
    glob = unflipped @ lidar2global[:3, :3].T + lidar2global[:3, 3]
    labels = TO_WORLD_ID[sem[tuple(idx.T)]]
    hits = total = 0
    for view, (ego2img, t) in enumerate(zip(metas['ego2img'], metas['img_timestamp'])):
        cam = CAMERA_NAMES[view % 6]
        cam2global = scene_cfg.ego_pose(round(t * 1e6), world) @ writer.sensor2ego(cam)
        intrinsic = calib.camera_intrinsic(cam, scene_cfg.scale)
        _, dist, sid = render(world, cam2global, intrinsic, W, H, shade=False)
        dirs, origin = pixel_rays(cam2global, intrinsic, W, H)
        occ2img = frame(view) if frame else \
            np.asarray(ego2img, np.float64) @ np.linalg.inv(np.asarray(metas['ego2occ'], np.float64))
        uvd = np.c_[centres, np.ones(len(centres))] @ occ2img.T
        front = uvd[:, 2] > 0.5
        uv = np.full((len(centres), 2), -1)
        uv[front] = np.round(uvd[front, :2] / uvd[front, 2:3]).astype(int)
        ok = front & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        u, v = uv[ok, 0], uv[ok, 1]
        ok_idx = np.nonzero(ok)[0]
        surface = np.abs(np.linalg.norm(glob[ok] - origin, axis=1) - dist[v, u]) < 0.3
        u, v, ok_idx = u[surface], v[surface], ok_idx[surface]
        s = sid[v, u]
        hit = origin + dirs[v, u] * dist[v, u, None]
        pixel = np.where(s >= 0, world.label[np.maximum(s, 0)],
                         np.where(s == -2, world.ground_class(hit[:, 0], hit[:, 1]), FREE))
        hits += (pixel == labels[ok_idx]).sum()
        total += len(ok_idx)
    return hits / max(total, 1), total


def test_flipped_grids_project_onto_their_classes_in_the_key_and_past_frames(occ_world):
    pipeline = [dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
                dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=1, test_mode=True),
                dict(type='LoadOccFromFile', occ_root=occ_world.occ_root, benchmark=BENCH, arrays=['semantics']),
                dict(type='RandomTransformOcc', bda_aug_conf=dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5)),
                dict(type='ComposeEgo2Img'),
                dict(type='DefaultFormatBundle3D'),
                dict(type='Collect3D', keys=['img', 'voxel_semantics'],
                     meta_keys=('filename', 'img_timestamp', 'ego2img', 'ego2occ', 'ego2lidar', 'lidar2img'))]
    ds = make_dataset(occ_world, pipeline)
    index = 1                                                        # has a past key frame
    info = ds.data_infos[index]
    raw = NUSCENES_OCCUPANCY.read_labels(info['occ_path'])['semantics']
    scene_cfg, world = next((s, w) for s, w in zip(occ_world.world.scenes, occ_world.world.worlds)
                            if s.name == info['scene_name'])
    seen, samples = {}, {}
    for seed in range(16):
        np.random.seed(seed)
        sample = ds[index]
        metas = sample['img_metas'].data
        ego2occ = np.asarray(metas['ego2occ'])
        flips = (bool(ego2occ[0, 0] < 0), bool(ego2occ[1, 1] < 0))
        # the authors' flip: the grid reversed along x and/or y, the matrix diag(+-1, +-1, 1, 1)
        np.testing.assert_array_equal(ego2occ, np.diag([-1.0 if flips[0] else 1.0, -1.0 if flips[1] else 1.0, 1, 1]))
        want = raw[::-1] if flips[0] else raw
        want = want[:, ::-1] if flips[1] else want
        sem = np.asarray(sample['voxel_semantics'])
        assert np.array_equal(sem, want)
        # ego2img = lidar2img (ego2lidar = I): the projection starts in the LiDAR frame
        assert all(np.array_equal(a, b) for a, b in zip(metas['ego2img'], metas['lidar2img']))
        if flips not in seen:
            seen[flips] = voxel_class_agreement(sem, flips, metas, scene_cfg, world, info['timestamp'])
            samples[flips] = (sem, flips, metas)
        if len(seen) == 4:
            break
    assert len(seen) == 4
    # A voxel centre lies up to 0.17 m from the surface it labels and is rounded to a 160 x 90 pixel (about
    # 0.1 m at 10 m), so near silhouettes its pixel shows the neighbouring surface: the agreement is a geometric
    # property of this fixed world (seed 0); every flip state must see the same geometry
    for flips, (agreement, total) in seen.items():
        assert total > 1000 and agreement > 0.85, (flips, agreement, total)
    # the Occ3D reading of the same grid (queries in the vehicle's ego frame: lidar2img @ ego2lidar of the vehicle)
    # puts every voxel 0.94 m forward and 90 degrees around; it must stay clearly below the bound above
    # (0.6 < 0.85), or this check could not tell the frames apart
    vehicle_ego2lidar = build_dataset(dict(type='NuScenesOccDataset', ann_file=occ_world.val,
                                           data_root=occ_world.root)).get_data_info(index)['ego2lidar']
    sem, flips, metas = next(iter(samples.values()))
    occ2ego = np.linalg.inv(np.asarray(metas['ego2occ'], np.float64))
    wrong, _ = voxel_class_agreement(
        sem, flips, metas, scene_cfg, world, info['timestamp'],
        frame=lambda view: np.asarray(metas['lidar2img'][view], np.float64) @ vehicle_ego2lidar @ occ2ego)
    assert wrong < 0.6, wrong


def test_label_steps_load_what_they_are_asked_for(occ_world):
    ds = make_dataset(occ_world)
    d = ds.get_data_info(0)
    from mmdet.datasets.pipelines import Compose
    everything = Compose([dict(type='LoadOccFromFile', occ_root=occ_world.occ_root, benchmark=BENCH)])(dict(d))
    labels = NUSCENES_OCCUPANCY.read_labels(d['occ_path'])
    assert np.array_equal(everything['voxel_semantics'], labels['semantics'])
    assert np.array_equal(everything['mask_valid'], labels['mask_valid'])
    only = Compose([dict(type='LoadOccFromFile', occ_root=occ_world.occ_root, benchmark=BENCH, arrays=['semantics']),
                    dict(type='FullCameraMask')])(dict(d))
    assert 'mask_valid' not in only and np.array_equal(only['voxel_semantics'], labels['semantics'])
    assert only['mask_camera'].dtype == np.bool_ and only['mask_camera'].shape == (512, 512, 40)
    assert only['mask_camera'].all()
    with pytest.raises(ValueError, match=r"arrays \['mask_camera'\] are not in nuscenes-occupancy label files"):
        Compose([dict(type='LoadOccFromFile', benchmark=BENCH, arrays=['mask_camera'])])
    from loaders.pipelines.occupancy_masks import FullCameraMask
    with pytest.raises(KeyError, match='place it after LoadOccFromFile'):
        FullCameraMask()(dict())
    with pytest.raises(ValueError, match='already carry a mask_camera'):
        FullCameraMask()(dict(voxel_semantics=np.zeros(3), mask_camera=np.zeros(3, bool)))


def test_infos_without_label_tokens_are_refused_with_the_fix(occ_world, tmp_path):
    import pickle
    with open(occ_world.val, 'rb') as f:
        data = pickle.load(f)
    for info in data['infos']:
        del info['lidar_token']
    old = tmp_path / 'old.pkl'
    with open(old, 'wb') as f:
        pickle.dump(data, f)
    from core.benchmarks import BenchmarkError
    with pytest.raises(BenchmarkError, match=r"lack \['lidar_token'\], which name the nuScenes-Occupancy label files; "
                                             r"regenerate them with `python gen_sweep_info.py --benchmark nuscenes"):
        build_dataset(dict(type='NuScenesOccupancyDataset', ann_file=str(old), data_root=occ_world.root))
