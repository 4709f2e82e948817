"""core/benchmarks/occ3d_waymo.py: the Occ3D-Waymo description and its reader of the release's `*_04.npz` files
(ids remapped, free 23 -> 15, the camera mask = final_voxel_state AND infov), against hand-built files."""
import dataclasses
import os.path as osp

import numpy as np
import pytest

from core.benchmarks import LabelFileError, get_benchmark
from core.benchmarks.occ3d_waymo import OCC3D_WAYMO, release_semantics

GRID = (200, 200, 16)


def write_release_file(path, voxel_label, origin=None, final=None, infov=None, **extra):
    """A file with the release's four arrays (masks default to all true, stored as the release's uint8 0/1)."""
    ones = np.ones(GRID, np.uint8)
    arrays = dict(voxel_label=voxel_label, origin_voxel_state=ones if origin is None else origin,
                  final_voxel_state=ones if final is None else final, infov=ones if infov is None else infov)
    arrays.update(extra)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_the_description_is_the_releases_protocol():
    """Independent values: the Occ3D README's Occ3D-Waymo table and class list (ids 0..14, 23 = free)."""
    b = get_benchmark('occ3d-waymo')
    assert b is OCC3D_WAYMO and b.title == 'Occ3D-Waymo'
    assert b.class_names == ('GENERALOBJECT', 'VEHICLE', 'PEDESTRIAN', 'SIGN', 'CYCLIST', 'TRAFFIC_LIGHT', 'POLE',
                             'CONSTRUCTION_CONE', 'BICYCLE', 'MOTORCYCLE', 'BUILDING', 'VEGETATION', 'TREE_TRUNK',
                             'ROAD', 'WALKABLE')
    assert b.num_classes == 15 and b.free_label == 15 and b.num_labels == 16 and b.label_names[-1] == 'free'
    assert b.grid_shape == GRID and b.voxel_size == (0.4, 0.4, 0.4)
    assert b.point_cloud_range == (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
    assert b.camera_names == ('FRONT', 'FRONT_LEFT', 'FRONT_RIGHT', 'SIDE_LEFT', 'SIDE_RIGHT') and b.num_views == 5
    assert b.label_array_names == ('semantics', 'mask_lidar', 'mask_camera', 'mask_fov')
    assert b.camera_mask is True and b.ray_iou is True and b.lidar_position == (1.43, 0.0, 2.18)
    assert b.label_layout == 'occ3d_waymo/<split>/<scene_idx>/<frame_idx>_04.npz'


def test_label_path_follows_the_release_layout():
    info = dict(split='validation', scene_idx=7, frame_idx=123, occ_path='/stored/x.npz')
    assert OCC3D_WAYMO.label_path(info, '/data/occ3d_waymo') == osp.join('/data/occ3d_waymo', 'validation', '007',
                                                                        '123_04.npz')
    assert OCC3D_WAYMO.label_path(info, None) == '/stored/x.npz'
    with pytest.raises(ValueError, match=r"lacks \['scene_idx'\], which the Occ3D-Waymo label path"):
        OCC3D_WAYMO.label_path(dict(split='training', frame_idx=1), '/r')


def test_read_labels_remaps_free_and_combines_the_masks(tmp_path):
    rng = np.random.default_rng(0)
    # every release id of the 15 classes plus free, at random voxels
    ids = np.array(list(range(15)) + [23], dtype=np.uint8)
    voxel_label = rng.choice(ids, size=GRID).astype(np.uint8)
    origin, final, infov = (rng.integers(0, 2, GRID, dtype=np.uint8) for _ in range(3))
    path = write_release_file(tmp_path / '000_04.npz', voxel_label, origin, final, infov)
    labels = OCC3D_WAYMO.read_labels(path)
    assert set(labels) == {'semantics', 'mask_lidar', 'mask_camera', 'mask_fov'}
    sem = labels['semantics']
    assert sem.dtype == np.uint8 and sem.shape == GRID
    # written out by hand: 23 becomes 15, every other id stays
    expected = np.where(voxel_label == 23, 15, voxel_label)
    np.testing.assert_array_equal(sem, expected)
    for name in ('mask_lidar', 'mask_camera', 'mask_fov'):
        assert labels[name].dtype == np.bool_
    np.testing.assert_array_equal(labels['mask_lidar'], origin == 1)
    np.testing.assert_array_equal(labels['mask_fov'], infov == 1)
    np.testing.assert_array_equal(labels['mask_camera'], (final == 1) & (infov == 1))
    # a subset reads only what it needs: a file without origin_voxel_state still gives semantics and the masks
    path2 = write_release_file(tmp_path / '001_04.npz', voxel_label, final=final, infov=infov, origin=None)
    sub = OCC3D_WAYMO.read_labels(path2, ('semantics', 'mask_camera'))
    assert set(sub) == {'semantics', 'mask_camera'}
    np.testing.assert_array_equal(sub['mask_camera'], labels['mask_camera'])


def test_release_semantics_reports_foreign_ids():
    grid = np.array([0, 14, 23, 15, 22, 255], dtype=np.uint8)
    sem, unexpected = release_semantics(grid, 15, 15)
    assert sem.tolist() == [0, 14, 15, 15, 22, 255] and unexpected == [15, 22, 255]


def test_bad_files_name_themselves_the_problem_and_the_fix(tmp_path):
    fix = 'replace it with the file of the Occ3D-Waymo download (voxel size 0.4 m) (occ3d_waymo/<split>/<scene_idx>/'
    label = np.full(GRID, 23, np.uint8)
    label[0, 0, 0] = 16
    path = write_release_file(tmp_path / 'foreign.npz', label)
    with pytest.raises(LabelFileError) as err:
        OCC3D_WAYMO.read_labels(path, ('semantics',))
    assert str(err.value).startswith(f'{path}: voxel_label holds ids [16]; Occ3D-Waymo ids are 0..14 and 23 (free); '
                                     f'{fix}')
    # the masks alone do not look at the labels
    assert OCC3D_WAYMO.read_labels(path, ('mask_fov',))['mask_fov'].all()
    nuscenes_style = tmp_path / 'labels.npz'
    np.savez(nuscenes_style, semantics=label, mask_camera=label > 0)
    with pytest.raises(LabelFileError, match=r"lacks the array\(s\) \['voxel_label', 'final_voxel_state', 'infov'\] "
                                             r"\(it holds \['mask_camera', 'semantics'\]\)"):
        OCC3D_WAYMO.read_labels(str(nuscenes_style), ('semantics', 'mask_camera'))
    # the 0.1 m release's grid is another shape (here a smaller stand-in of the same kind)
    fine = write_release_file(tmp_path / 'fine.npz', *(np.zeros((400, 400, 32), np.uint8),) * 4)
    with pytest.raises(LabelFileError, match=r'voxel_label has shape \(400, 400, 32\), expected \(200, 200, 16\)'):
        OCC3D_WAYMO.read_labels(fine)
    truncated = tmp_path / 'truncated.npz'
    truncated.write_bytes(open(path, 'rb').read()[:100])
    with pytest.raises(LabelFileError, match=r'truncated\.npz: not a readable \.npz archive \(100 bytes'):
        OCC3D_WAYMO.read_labels(str(truncated))
    with pytest.raises(LabelFileError, match=r"give \['semantics', 'mask_lidar', 'mask_camera', 'mask_fov'\], not "
                                             r"\['mask_valid'\]"):
        OCC3D_WAYMO.read_labels(path, ('mask_valid',))


def test_an_inconsistent_description_is_refused():
    with pytest.raises(ValueError, match=r"label_arrays must be among .* \(got \['labels'\]\)"):
        dataclasses.replace(OCC3D_WAYMO, label_arrays=(('semantics', 'uint8'), ('mask_camera', 'bool'),
                                                       ('labels', 'uint8')))
    with pytest.raises(ValueError, match=r'lidar_position 3 numbers \(got \(1\.0, 2\.0\)\)'):
        dataclasses.replace(OCC3D_WAYMO, lidar_position=(1, 2))
