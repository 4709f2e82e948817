"""tools/make_synthetic_waymo.py: the files of the Occ3D-Waymo layout, their formats, the rig's geometry in the pose
file, the label conventions (23 = free, the three masks), determinism and argument errors."""
import filecmp
import os
import os.path as osp
import pickle

import numpy as np
import pytest
from PIL import Image

from tools import make_synthetic_waymo as maker
from waymo_world import FRONT_HW, SIDE_HW, waymo_world


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return waymo_world(tmp_path_factory)


def load(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def test_the_layout_and_the_info_files(world):
    assert sorted(os.listdir(world.occ_root)) == ['cam_infos.pkl', 'cam_infos_vali.pkl', 'training', 'validation',
                                                 'waymo_infos_train.pkl', 'waymo_infos_val.pkl']
    for prefix, infos, poses in ((0, load(world.train), load(world.train_poses)),
                                 (1, load(world.val), load(world.val_poses))):
        assert isinstance(infos, list) and [i['image']['image_idx'] for i in infos] == \
            [prefix * 1_000_000 + f for f in range(4)]
        for frame, info in enumerate(infos):
            idx = info['image']['image_idx']
            assert info['image']['image_path'] == f'training/image_0/{idx:07d}.png'
            assert tuple(info['image']['image_shape']) == FRONT_HW
            assert info['pose'].shape == (4, 4) and info['timestamp'] - infos[0]['timestamp'] == frame * 100_000
            assert sorted(info['calib']) == ['P0', 'P1', 'P2', 'P3', 'P4', 'R0_rect', 'Tr_velo_to_cam']
            for k in range(5):
                hw = SIDE_HW if k >= 3 else FRONT_HW
                assert Image.open(osp.join(world.data_root, 'training', f'image_{k}', f'{idx:07d}.png')).size == \
                    hw[::-1]
        assert list(poses) == [0] and sorted(poses[0]) == [0, 1, 2, 3]
        for cams in poses[0].values():
            assert len(cams) == 5 and all(sorted(c) == ['ego2global', 'intrinsics', 'sensor2ego'] for c in cams)


def test_the_pose_file_lists_the_cameras_in_the_releases_order(world):
    """Entry 2 is SIDE_LEFT (its optical axis points left, +y), entry 3 FRONT_RIGHT (45 degrees right): the order
    the reference loader reads (FRONT, FRONT_LEFT, SIDE_LEFT, FRONT_RIGHT, SIDE_RIGHT)."""
    cams = load(world.val_poses)[0][0]
    yaws = []
    for cam in cams:
        axis = np.asarray(cam['sensor2ego'])[:3, 2]            # the optical axis (camera z) in the vehicle frame
        yaws.append(round(float(np.degrees(np.arctan2(axis[1], axis[0])))))
    # the rig's pitch and roll (< 1 degree) tilt the axis a little: the yaw rounds to the rig's
    assert yaws == [0, 45, 90, -45, -90]
    # intrinsics: the padded K of the written image size (FRONT's 2055 px focal length scaled to 96 of 1920 px)
    k = np.asarray(cams[0]['intrinsics'])
    assert k.shape == (4, 4) and k[0, 0] == 2055 * (96 / 1920) and k[3].tolist() == [0, 0, 0, 1]


def test_labels_use_the_release_conventions(world):
    path = osp.join(world.occ_root, 'validation', '000', '002_04.npz')
    with np.load(path) as data:
        assert sorted(data.files) == ['final_voxel_state', 'infov', 'origin_voxel_state', 'voxel_label']
        label, final, infov, lidar = (data[k] for k in ('voxel_label', 'final_voxel_state', 'infov',
                                                        'origin_voxel_state'))
    assert label.dtype == np.uint8 and label.shape == (200, 200, 16)
    assert set(np.unique(label).tolist()) <= set(range(15)) | {23} and (label == 23).mean() > 0.5
    # the camera sees only what lies in some camera's field of view
    assert final.any() and not (final.astype(bool) & ~infov.astype(bool)).any() and lidar.any()

    def voxel(x, y, z):
        return tuple(int(np.floor((v - lo) / 0.4)) for v, lo in zip((x, y, z), (-40.0, -40.0, -1.0)))
    # hand-picked voxel centres: ahead and to the left are in a camera's view; straight behind no camera looks
    assert infov[voxel(20.2, 0.2, 1.0)] and infov[voxel(0.2, 20.2, 1.0)] and not infov[voxel(-20.2, 0.2, 1.0)]


def test_generation_is_deterministic_and_checks_its_arguments(tmp_path):
    args = ['--train-scenes', '1', '--val-scenes', '0', '--frames', '1', '--scale', '0.05', '--workers', '1',
            '--quiet']
    one = maker.main(args + ['--out', str(tmp_path / 'a')])
    two = maker.main(args + ['--out', str(tmp_path / 'b')])
    assert one['samples'] == two['samples'] == 1 and one['images'] == 5
    for rel in ('occ3d_waymo/training/000/000_04.npz', 'occ3d_waymo/waymo_infos_train.pkl',
                'occ3d_waymo/cam_infos.pkl', 'kitti_format/training/image_3/0000000.png'):
        assert filecmp.cmp(tmp_path / 'a' / rel, tmp_path / 'b' / rel, shallow=False), rel
    assert not (tmp_path / 'a' / 'occ3d_waymo' / 'waymo_infos_val.pkl').exists()   # no validation sequence asked
    with pytest.raises(SystemExit, match='exists; pass --force'):
        maker.main(args + ['--out', str(tmp_path / 'a')])
    for bad, message in ((['--train-scenes', '0'], '--train-scenes must be >= 1'),
                         (['--frames', '1001'], '--frames must be <= 1000'),
                         (['--scale', '2'], r'--scale must be in \[0.01, 1\]')):
        with pytest.raises(SystemExit, match=message):
            maker.main(args + bad + ['--out', str(tmp_path / 'c')])
