"""The Occ3D-Waymo chain: the release's info and pose files (synthetic world) -> WaymoOccDataset + pipelines.

Geometry is checked against the world's ground truth (the poses and rig of tools/synthetic/waymo.py): 3D points
seen at known pixels of the current and the history frames' images project, through the dataset's lidar2img and
ego2lidar, onto those pixels; the loaded PNGs show the rendered colours; the labels are the files' arrays remapped;
the RayIoU origins are the frames' roof-LiDAR positions."""
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmcv.parallel import collate

from core.benchmarks import OCC3D_WAYMO, LabelFileError
from evaluation.ray_origins import RayOrigins
from loaders.pipelines.loading import LoadOccFromFile
from loaders.waymo_occ_dataset import IMAGE_FOLDERS, POSE_FILE_CAMERAS, WaymoOccDataset, split_camera_projection
from tools.synthetic import waymo
from tools.synthetic.render import pixel_rays, render
from waymo_world import FRONT_HW, SIDE_HW, waymo_world

CAMS = OCC3D_WAYMO.camera_names


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return waymo_world(tmp_path_factory)


def dataset(world, split='val', pipeline=None, **kwargs):
    ann, poses = (world.val, world.val_poses) if split == 'val' else (world.train, world.train_poses)
    return WaymoOccDataset(ann, poses, pipeline=pipeline, data_root=world.data_root, test_mode=split == 'val',
                           **kwargs)


def scene_of(world, info):
    """The WaymoScene (ground truth) of an info, its street and world."""
    prefix = 0 if info['split'] == 'training' else 1
    scene = next(s for s in world.scenes if (s.prefix, s.scene) == (prefix, info['scene_idx']))
    street = scene.street()
    return scene, street, street.world()


def test_the_release_layout_constants():
    """Independent values: mmdetection3d's export writes Waymo camera id c (FRONT=1 .. SIDE_RIGHT=5) to image_<c-1>;
    the reference loader (CVT-Occ) reads pose-file entries 2 and 3 with image_3 and image_2."""
    assert IMAGE_FOLDERS == {'FRONT': 'image_0', 'FRONT_LEFT': 'image_1', 'FRONT_RIGHT': 'image_2',
                             'SIDE_LEFT': 'image_3', 'SIDE_RIGHT': 'image_4'}
    assert [IMAGE_FOLDERS[c] for c in POSE_FILE_CAMERAS] == ['image_0', 'image_1', 'image_3', 'image_2', 'image_4']


def test_infos_follow_the_release_files(world):
    ds = dataset(world)
    with open(world.val, 'rb') as f:
        raw = pickle.load(f)
    assert len(ds) == len(raw) == 4 and len(ds.CLASSES) == 15 and ds.occ_root == world.occ_root
    assert [i['token'] for i in ds.data_infos] == ['1000000', '1000001', '1000002', '1000003']
    for frame, info in enumerate(ds.data_infos):
        assert (info['split'], info['scene_idx'], info['frame_idx'], info['scene_name']) == \
            ('validation', 0, frame, '1000')
        assert info['occ_path'] == osp.join(world.occ_root, 'validation', '000', f'{frame:03d}_04.npz')
        assert osp.isfile(info['occ_path'])
        for cam in CAMS:
            path = info['cams'][cam]['data_path']
            assert path == osp.join(world.data_root, 'training', IMAGE_FOLDERS[cam], f'{info["token"]}.png')
            assert osp.isfile(path)
    # every 2nd frame: samples 0 and 2, the history still every frame
    half = dataset(world, load_interval=2)
    assert [i['token'] for i in half.data_infos] == ['1000000', '1000002']
    history = half.get_data_info(1)['cam_sweeps']['prev']
    assert [h['FRONT']['data_path'][-11:] for h in history] == ['1000001.png', '1000000.png']
    # the frames between two samples are their `cam_sweeps` (what the data check reads): every image is checked
    assert [[s['FRONT']['data_path'][-11:] for s in i['cam_sweeps']] for i in half.data_infos] == [[], ['1000001.png']]
    from loaders.data_check import info_files
    checked = info_files(half.data_infos, labels=False)
    assert sorted(checked) == sorted(osp.join(world.data_root, 'training', IMAGE_FOLDERS[c], f'100000{f}.png')
                                     for c in CAMS for f in range(3))


def world_points(scene, street, ground, cam, frame, count, rng):
    """`count` pixels (u, v) of camera `cam` in `frame` that see a surface, their global points and rendered colours."""
    t = scene.frame_time(street, frame) + int(round(waymo.CAMERA_TIME_OFFSETS[cam] * 1e6))
    cam2global = street.ego_pose(t, ground) @ waymo.camera_to_ego(cam)
    intrinsic = waymo.camera_intrinsic(cam, scene.scale)
    width, height = waymo.image_size(cam, scene.scale)
    rgb, dist, _ = render(ground, cam2global, intrinsic, width, height)
    dirs, origin = pixel_rays(cam2global, intrinsic, width, height)
    v, u = np.nonzero(np.isfinite(dist) & (dist < 60))
    pick = rng.choice(len(u), count, replace=False)
    u, v = u[pick], v[pick]
    points = origin + dirs[v, u] * dist[v, u, None].astype(np.float64)
    return np.stack([u, v], 1), points, rgb


def project(lidar2img, ego2lidar, points_ego):
    m = np.asarray(lidar2img, np.float64) @ np.asarray(ego2lidar, np.float64)
    p = np.c_[points_ego, np.ones(len(points_ego))] @ m.T
    return p[:, :2] / p[:, 2:3]


def test_current_and_history_frames_project_world_points_onto_their_pixels(world):
    """Frame 3 of the validation sequence with 2 history frames (test_interval 1: frames 2 and 1)."""
    pipeline = [dict(type='LoadMultiViewImageFromFiles'),
                dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=2, test_mode=True, test_interval=1)]
    ds = dataset(world, pipeline=pipeline)
    out = ds[3]
    info = ds.data_infos[3]
    scene, street, ground = scene_of(world, info)
    global2ego = np.linalg.inv(street.ego_pose(scene.frame_time(street, 3), ground))
    assert len(out['img']) == len(out['lidar2img']) == 15
    rng = np.random.default_rng(0)
    for t, frame in enumerate((3, 2, 1)):
        for n, cam in enumerate(CAMS):
            view = t * len(CAMS) + n
            assert out['filename'][view].endswith(f'{IMAGE_FOLDERS[cam]}/{scene.image_idx(frame):07d}.png')
            pixels, points, rgb = world_points(scene, street, ground, cam, frame, 25, rng)
            image = out['img'][view]
            assert image.shape[:2] == (SIDE_HW if cam.startswith('SIDE') else FRONT_HW)
            np.testing.assert_array_equal(image, rgb[..., ::-1])          # PNG: lossless, BGR in the pipeline
            points_ego = points @ global2ego[:3, :3].T + global2ego[:3, 3]
            # float32 lidar2img (~1e-7 relative) on coordinates below 100 px: 1e-3 px is 100x that rounding
            np.testing.assert_allclose(project(out['lidar2img'][view], out['ego2lidar'], points_ego), pixels,
                                       atol=1e-3)


def test_labels_are_the_files_arrays_remapped(world):
    ds = dataset(world)
    step = LoadOccFromFile(occ_root=world.occ_root, benchmark='occ3d-waymo')
    for index, info in enumerate(ds.data_infos):
        out = step(ds.get_data_info(index))
        # no root in the step: the path the dataset stored (its occ_root, the info file's folder)
        assert LoadOccFromFile(benchmark='occ3d-waymo').label_path(ds.get_data_info(index)) == info['occ_path']
        with np.load(info['occ_path']) as raw:
            np.testing.assert_array_equal(out['voxel_semantics'], np.where(raw['voxel_label'] == 23, 15,
                                                                           raw['voxel_label']))
            np.testing.assert_array_equal(out['mask_camera'], (raw['final_voxel_state'] > 0) & (raw['infov'] > 0))
            np.testing.assert_array_equal(out['mask_lidar'], raw['origin_voxel_state'] > 0)
            np.testing.assert_array_equal(out['mask_fov'], raw['infov'] > 0)
        assert out['voxel_semantics'].dtype == np.uint8 and out['voxel_semantics'].max() <= 15
        assert (out['voxel_semantics'] < 15).sum() > 1000          # the street: road, buildings, vehicles
        # the camera mask lies in the field of view, and sees more than nothing
        assert out['mask_camera'].sum() > 0 and not (out['mask_camera'] & ~out['mask_fov']).any()


def test_a_training_batch_of_five_cameras_of_two_sizes(world):
    ida = dict(resize_lim=(0.9, 1.1), final_dim=(64, 96), bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), H=64, W=96,
               rand_flip=True)
    pipeline = [dict(type='LoadMultiViewImageFromFiles'), dict(type='LoadMultiViewImageFromMultiSweeps', sweeps_num=1),
                dict(type='LoadOccFromFile', benchmark='occ3d-waymo'),
                dict(type='PadViewsToSize', size=(64, 96), align='bottom'),
                dict(type='RandomTransformImage', ida_aug_conf=ida, training=True),
                dict(type='DefaultFormatBundle3D'),
                dict(type='Collect3D', keys=['img', 'voxel_semantics', 'mask_camera'])]
    ds = dataset(world, split='train', pipeline=pipeline)
    np.random.seed(0)
    batch = collate([ds[0], ds[3]], samples_per_gpu=2)
    assert tuple(batch['img'].data[0].shape) == (2, 10, 3, 64, 96)
    assert tuple(batch['voxel_semantics'].shape) == (2, 200, 200, 16) and batch['mask_camera'].dtype == torch.bool
    metas = batch['img_metas'].data[0]
    assert [len(m['lidar2img']) for m in metas] == [10, 10]


def test_ray_origins_are_the_frames_roof_lidar_positions(world):
    """Independent: the world's ego poses and the benchmark's LiDAR position, RayOrigins' float32 rounding of the
    LiDAR-frame position (|p| < 10 m: 1e-6 m) allowed."""
    ds = dataset(world)
    origins = RayOrigins(ds.data_infos)
    lidar = np.append(OCC3D_WAYMO.lidar_position, 1.0)
    for index, info in enumerate(ds.data_infos):
        scene, street, ground = scene_of(world, info)
        global2ego = np.linalg.inv(street.ego_pose(scene.frame_time(street, index), ground))
        expected = [(global2ego @ street.ego_pose(scene.frame_time(street, j), ground) @ lidar)[:3] for j in range(4)]
        np.testing.assert_allclose(origins[index], expected, atol=1e-6)
        np.testing.assert_array_equal(origins[index][index], OCC3D_WAYMO.lidar_position)


def test_split_camera_projection_recovers_k_from_either_form():
    k = np.array([[2055.0, 0.3, 955.0], [0.0, 2050.0, 642.0], [0.0, 0.0, 1.0]])
    got_k, cam2opt = split_camera_projection(k)
    assert np.array_equal(got_k, k) and np.array_equal(cam2opt, np.eye(4))
    # a camera frame with Waymo's axes (x forward, y left, z up) and an offset: intrinsics = K @ [R | t]
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    rigid = np.eye(4)
    rigid[:3, :3], rigid[:3, 3] = axes, (0.1, -0.2, 0.05)
    m = np.eye(4)
    m[:3] = k @ rigid[:3]
    got_k, cam2opt = split_camera_projection(m)
    # float64 QR of entries up to 2e3: 1e-9 relative is a million times the rounding
    np.testing.assert_allclose(got_k, k, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cam2opt, rigid, atol=1e-12)
    reflection = np.eye(4)
    reflection[:3, :3] = k @ np.diag([1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match='reflection'):
        split_camera_projection(reflection)
    with pytest.raises(ValueError, match=r'last row \(0, 0, 0, 1\)'):
        split_camera_projection(np.ones((4, 4)))


def test_bad_release_files_name_the_file_and_the_fix(world, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'Occ3D-Waymo pose file not found: .*missing\.pkl; the Occ3D-Waymo '
                                                r'download ships'):
        WaymoOccDataset(world.val, str(tmp_path / 'missing.pkl'))
    with pytest.raises(FileNotFoundError, match='Occ3D-Waymo info file not found'):
        WaymoOccDataset(str(tmp_path / 'none.pkl'), world.val_poses)
    with open(world.val_poses, 'rb') as f:
        poses = pickle.load(f)
    del poses[0][2]
    short = tmp_path / 'short.pkl'
    short.write_bytes(pickle.dumps(poses))
    with pytest.raises(KeyError, match=r'short\.pkl: no entry \[0\]\[2\] \(scene, frame of image_idx 1000002\)'):
        WaymoOccDataset(world.val, str(short))
    with open(world.val, 'rb') as f:
        infos = pickle.load(f)
    infos[0]['image'] = dict(infos[0]['image'], image_path='training/image_3/1000000.png')
    moved = tmp_path / 'moved.pkl'
    moved.write_bytes(pickle.dumps(infos))
    with pytest.raises(ValueError, match=r"image_path 'training/image_3/1000000.png' of frame 1000000 is not in an "
                                         r"image_0/ folder"):
        WaymoOccDataset(str(moved), world.val_poses)
    nuscenes_like = tmp_path / 'nuscenes_infos.pkl'
    nuscenes_like.write_bytes(pickle.dumps(dict(infos=[dict(token='x')])))
    with pytest.raises(KeyError, match=r"infos lack \['image', 'timestamp'\]"):
        WaymoOccDataset(str(nuscenes_like), world.val_poses)
    with pytest.raises(LabelFileError, match=r'cam_infos_vali\.pkl: not a readable \.npz archive'):
        OCC3D_WAYMO.read_labels(world.val_poses)   # a pose file given as a label file
