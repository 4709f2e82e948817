"""core/benchmarks/nuscenes_occupancy.py: the nuScenes-Occupancy description and its sparse label reader.

The reference for the reader is the OPUS-V2 authors' code (github.com/w1394945493/OPUS at 216dc53):
loaders/pipelines/loading.py (`LoadOccupancyFromFile`: rows (z, y, x, class), 'noise' mapped to the empty
label, classes 1..16 -> 0..15) and loaders/nuscenes_occupancy_dataset.py (`evaluate`: mask = release label != 0).
The expected grids here are built independently: row by row in plain Python (a dict of voxels, the last row of
a voxel winning as the authors' numpy assignment does), or by hand.
"""
import numpy as np
import pytest

from core.benchmarks import LabelFileError, get_benchmark
from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY, RELEASE_CLASS_NAMES

GRID = (512, 512, 40)


def test_the_description_has_the_published_protocol():
    """Independent values: OpenOccupancy docs/prepare_data.md and the OPUS-V2 nusc-occupancy configs."""
    b = get_benchmark('nuscenes-occupancy')
    assert b is NUSCENES_OCCUPANCY and b.title == 'nuScenes-Occupancy'
    assert b.class_names == ('barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
                             'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk',
                             'terrain', 'manmade', 'vegetation')
    assert b.num_classes == 16 and b.free_label == 16 and b.label_names[-1] == 'free'
    assert b.grid_shape == GRID and b.voxel_size == (0.2, 0.2, 0.2)
    assert b.point_cloud_range == (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    assert b.camera_names == get_benchmark('occ3d-nuscenes').camera_names
    assert (b.camera_mask, b.ray_iou, b.geometry_iou, b.eval_mask, b.label_frame) == \
        (False, False, True, 'mask_valid', 'lidar')
    assert b.label_layout == 'occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy'
    assert RELEASE_CLASS_NAMES[0] == 'noise' and RELEASE_CLASS_NAMES[1:] == b.class_names


def test_label_path_uses_the_scene_and_lidar_tokens():
    info = dict(token='s1', scene_name='scene-0001', scene_token='abc', lidar_token='def', occ_path='/stored.npy')
    assert NUSCENES_OCCUPANCY.label_path(info, '/data/occupancy') == '/data/occupancy/scene_abc/occupancy/def.npy'
    assert NUSCENES_OCCUPANCY.label_path(info) == '/stored.npy'
    without_lidar_token = {k: v for k, v in info.items() if k != 'lidar_token'}
    with pytest.raises(ValueError, match=r"lacks \['lidar_token'\]"):
        NUSCENES_OCCUPANCY.label_path(without_lidar_token, '/data/occupancy')


def test_a_hand_built_file_reads_in_x_y_z_order_with_the_ids_remapped(tmp_path):
    rows = np.array([[3, 2, 1, 4],      # z=3, y=2, x=1: car (release 4) -> 3
                     [0, 0, 511, 1],    # x=511: barrier (release 1) -> 0
                     [39, 511, 0, 16],  # vegetation (16) -> 15
                     [5, 6, 7, 0]],     # noise -> free (16), not counted by the metric
                    dtype=np.int64)
    path = tmp_path / 'labels.npy'
    np.save(path, rows)
    out = NUSCENES_OCCUPANCY.read_labels(str(path))
    sem, valid = out['semantics'], out['mask_valid']
    assert sem.shape == GRID and sem.dtype == np.uint8 and valid.dtype == np.bool_
    assert sem[1, 2, 3] == 3 and sem[511, 0, 0] == 0 and sem[0, 511, 39] == 15 and sem[7, 6, 5] == 16
    assert np.count_nonzero(sem != 16) == 3                    # everything else is free
    assert not valid[7, 6, 5] and np.count_nonzero(~valid) == 1  # only the noise voxel is left out
    assert set(NUSCENES_OCCUPANCY.read_labels(str(path), ['mask_valid'])) == {'mask_valid'}


@pytest.mark.parametrize('dtype', [np.int64, np.uint16, np.int32])
def test_random_files_equal_a_row_by_row_densification(tmp_path, dtype):
    """The authors' semantics written out per row in plain Python, on random rows with repeated voxels."""
    rng = np.random.default_rng(0)
    n = 3000
    rows = np.stack([rng.integers(0, 40, n), rng.integers(0, 512, n), rng.integers(0, 512, n),
                     rng.integers(0, 17, n)], axis=1)
    rows[n // 2:n // 2 + 50, :3] = rows[:50, :3]               # 50 voxels listed twice, with other classes
    path = tmp_path / 'labels.npy'
    np.save(path, rows.astype(dtype))
    voxels = {}
    for z, y, x, c in rows.tolist():
        voxels[(x, y, z)] = c                                  # the last row of a voxel wins
    out = NUSCENES_OCCUPANCY.read_labels(str(path))
    sem, valid = out['semantics'], out['mask_valid']
    occupied = np.argwhere(sem != 16)
    expect_occupied = {v for v, c in voxels.items() if c != 0}
    assert {tuple(v) for v in occupied.tolist()} == expect_occupied
    for (x, y, z), c in voxels.items():
        assert sem[x, y, z] == (16 if c == 0 else c - 1)
        assert valid[x, y, z] == (c != 0)
    assert np.count_nonzero(~valid) == sum(c == 0 for c in voxels.values())


@pytest.mark.parametrize('content, problem', [
    (np.zeros((5, 3), dtype=np.int64), 'integer [N, 4]'),
    (np.zeros((5, 4), dtype=np.float32), 'float32'),
    (np.zeros(4, dtype=np.int64), 'integer [N, 4]'),
    (np.array([[0, 0, 512, 1]]), 'column 2 (x)'),
    (np.array([[40, 0, 0, 1]]), 'column 0 (z)'),
    (np.array([[0, -1, 0, 1]]), 'column 1 (y)'),
    (np.array([[0, 0, 0, 17]]), 'column 3 (class id)'),
])
def test_bad_files_name_the_file_the_problem_and_the_fix(tmp_path, content, problem):
    path = tmp_path / 'bad.npy'
    np.save(path, content)
    with pytest.raises(LabelFileError) as err:
        NUSCENES_OCCUPANCY.read_labels(str(path))
    message = str(err.value)
    assert message.startswith(str(path)) and problem in message and 'nuScenes-Occupancy v0.1 release' in message
    assert err.value.user_error


def test_a_truncated_or_foreign_file_is_a_label_file_error(tmp_path):
    path = tmp_path / 'trunc.npy'
    np.save(path, np.zeros((100, 4), dtype=np.int64))
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:200])
    with pytest.raises(LabelFileError, match=r'not a readable \.npy array \(200 bytes'):
        NUSCENES_OCCUPANCY.read_labels(str(path))
    foreign = tmp_path / 'labels.npz'
    np.savez(foreign, semantics=np.zeros(3))
    with pytest.raises(LabelFileError, match=r'holds NpzFile; nuScenes-Occupancy label files are integer \[N, 4\]'):
        NUSCENES_OCCUPANCY.read_labels(str(foreign))
    with pytest.raises(LabelFileError, match=r"not \['mask_camera'\]"):
        NUSCENES_OCCUPANCY.read_labels(str(path), ['mask_camera'])
