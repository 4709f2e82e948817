"""core/occ3d.py: the protocol constants are consistent, the published configs restate them (and select their
benchmark, core/benchmarks/), and the one reader of labels.npz names what is wrong with a bad file."""
import os.path as osp

import numpy as np
import pytest

from core import occ3d

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_constants_are_consistent():
    assert occ3d.NUM_CLASSES == 17 and occ3d.FREE_LABEL == 17 and occ3d.NUM_LABELS == 18
    assert occ3d.LABEL_NAMES[:17] == occ3d.CLASS_NAMES and occ3d.LABEL_NAMES[occ3d.FREE_LABEL] == 'free'
    assert occ3d.CLASS_NAMES[11] == 'driveable_surface' and occ3d.CLASS_NAMES[16] == 'vegetation'
    lo, hi = occ3d.POINT_CLOUD_RANGE[:3], occ3d.POINT_CLOUD_RANGE[3:]
    # round(): (b - a) / v of the decimal constants is a whole number up to float64 rounding (~1e-14 of it)
    assert tuple(round((b - a) / v) for a, b, v in zip(lo, hi, occ3d.VOXEL_SIZE)) == occ3d.GRID_SHAPE == (200, 200, 16)
    assert occ3d.CAMERA_NAMES[0] == 'CAM_FRONT' and occ3d.NUM_VIEWS == len(set(occ3d.CAMERA_NAMES)) == 6


@pytest.mark.parametrize('config', ['configs/ops-t_r50_704x256_8f_100e.py', 'configs/ops-demo_synthetic.py',
                                    'configs/opusv2-t_r50_704x256_8f_100e.py', 'configs/opusv2-demo_synthetic.py'])
def test_configs_restate_the_protocol(config):
    from mmcv import Config
    cfg = Config.fromfile(osp.join(ROOT, config))
    bench = occ3d.BENCHMARK
    # the config selects the benchmark, and every dataset and the label loader take it by name
    assert cfg.benchmark == bench.name == 'occ3d-nuscenes'
    for split in ('train', 'val', 'test'):
        assert cfg.data[split].get('benchmark', 'occ3d-nuscenes') == bench.name
    loaders = [s for s in cfg.data.train.pipeline if s['type'] in ('LoadOccFromFile', 'LoadOcc3DFromFile')]
    assert len(loaders) == 1 and loaders[0].get('benchmark', 'occ3d-nuscenes') == bench.name
    head = cfg.model.pts_bbox_head
    assert tuple(cfg.point_cloud_range) == tuple(head.pc_range) == occ3d.POINT_CLOUD_RANGE == bench.point_cloud_range
    assert tuple(head.transformer.pc_range) == occ3d.POINT_CLOUD_RANGE
    assert tuple(cfg.voxel_size) == tuple(head.voxel_size) == occ3d.VOXEL_SIZE == bench.voxel_size
    assert tuple(cfg.occ_names) == occ3d.CLASS_NAMES == bench.class_names
    assert head.num_classes == cfg.num_classes == occ3d.NUM_CLASSES == bench.num_classes
    assert head.get('empty_label', bench.free_label) == bench.free_label


def test_the_synthetic_world_uses_the_protocol():
    from tools.synthetic import calib, occupancy, world
    assert calib.CAMERA_NAMES == occ3d.CAMERA_NAMES
    assert occupancy.GRID == occ3d.GRID_SHAPE and world.FREE == occ3d.FREE_LABEL
    assert tuple(occupancy.PC_RANGE) == occ3d.POINT_CLOUD_RANGE and occupancy.VOXEL == occ3d.VOXEL_SIZE[0]
    # the world's named class ids are the protocol's
    for i, name in enumerate(occ3d.CLASS_NAMES):
        assert getattr(world, name.upper()) == i, name


def write_labels(path, shape=(200, 200, 16), arrays=('semantics', 'mask_lidar', 'mask_camera')):
    g = np.random.RandomState(0)
    data = {k: g.randint(0, 18 if k == 'semantics' else 2, shape).astype(np.uint8) for k in arrays}
    np.savez_compressed(path, **data)
    return data


def test_read_labels_returns_the_arrays(tmp_path):
    from core.occ3d import read_labels
    path = str(tmp_path / 'labels.npz')
    data = write_labels(path)
    got = read_labels(path)
    assert list(got) == ['semantics', 'mask_lidar', 'mask_camera']
    for key in got:
        assert np.array_equal(got[key], data[key])
    assert list(read_labels(path, ('mask_camera',))) == ['mask_camera']


def test_bad_label_files_name_the_file_and_the_fix(tmp_path):
    from core.occ3d import LabelFileError, read_labels
    from evaluation.evaluator import load_occ_gt
    from loaders.pipelines.loading import LoadOccFromFile
    good = str(tmp_path / 'good.npz')
    write_labels(good)
    truncated = tmp_path / 'truncated.npz'
    truncated.write_bytes(open(good, 'rb').read()[:300])
    text = tmp_path / 'text.npz'
    text.write_text('not a zip')
    no_mask = str(tmp_path / 'no_mask.npz')
    write_labels(no_mask, arrays=('semantics',))
    small = str(tmp_path / 'small.npz')
    write_labels(small, shape=(100, 100, 16))
    cases = [(str(truncated), r'truncated.npz: not a readable labels.npz \(300 bytes; '),
             (str(text), r'text.npz: not a readable labels.npz \(9 bytes; '),
             (no_mask, r"no_mask.npz: lacks the array\(s\) \['mask_lidar', 'mask_camera'\] "
                       r"\(it holds \['semantics'\]\)"),
             (small, r'small.npz: semantics has shape \(100, 100, 16\), expected \(200, 200, 16\)')]
    for path, message in cases:
        with pytest.raises(LabelFileError, match=message + '.*Occ3D-nuScenes download'):
            read_labels(path)
        with pytest.raises(LabelFileError, match=message):       # the training pipeline's step
            LoadOccFromFile()(dict(occ_path=path))
        if 'no_mask' not in path:                                 # the evaluator reads semantics + mask_camera only
            with pytest.raises(LabelFileError, match=message):
                load_occ_gt(path)
    assert LabelFileError.user_error
