"""core/occ3d.py: the protocol constants are consistent, and the published configs restate them."""
import os.path as osp

import pytest

from core import occ3d

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_constants_are_consistent():
    assert occ3d.NUM_CLASSES == 17 and occ3d.FREE_LABEL == 17 and occ3d.NUM_LABELS == 18
    assert occ3d.LABEL_NAMES[:17] == occ3d.CLASS_NAMES and occ3d.LABEL_NAMES[occ3d.FREE_LABEL] == 'free'
    assert occ3d.CLASS_NAMES[11] == 'driveable_surface' and occ3d.CLASS_NAMES[16] == 'vegetation'
    lo, hi = occ3d.POINT_CLOUD_RANGE[:3], occ3d.POINT_CLOUD_RANGE[3:]
    assert tuple(round((b - a) / v) for a, b, v in zip(lo, hi, occ3d.VOXEL_SIZE)) == occ3d.GRID_SHAPE == (200, 200, 16)
    assert occ3d.CAMERA_NAMES[0] == 'CAM_FRONT' and occ3d.NUM_VIEWS == len(set(occ3d.CAMERA_NAMES)) == 6


@pytest.mark.parametrize('config', ['configs/ops-t_r50_704x256_8f_100e.py', 'configs/ops-demo_synthetic.py'])
def test_configs_restate_the_protocol(config):
    from mmcv import Config
    cfg = Config.fromfile(osp.join(ROOT, config))
    head = cfg.model.pts_bbox_head
    assert tuple(cfg.point_cloud_range) == tuple(head.pc_range) == occ3d.POINT_CLOUD_RANGE
    assert tuple(head.transformer.pc_range) == occ3d.POINT_CLOUD_RANGE
    assert tuple(cfg.voxel_size) == tuple(head.voxel_size) == occ3d.VOXEL_SIZE
    assert tuple(cfg.occ_names) == occ3d.CLASS_NAMES and head.num_classes == occ3d.NUM_CLASSES


def test_the_synthetic_world_uses_the_protocol():
    from tools.synthetic import calib, occupancy, world
    assert calib.CAMERA_NAMES == occ3d.CAMERA_NAMES
    assert occupancy.GRID == occ3d.GRID_SHAPE and world.FREE == occ3d.FREE_LABEL
    assert tuple(occupancy.PC_RANGE) == occ3d.POINT_CLOUD_RANGE and occupancy.VOXEL == occ3d.VOXEL_SIZE[0]
    # the world's named class ids are the protocol's
    for i, name in enumerate(occ3d.CLASS_NAMES):
        assert getattr(world, name.upper()) == i, name
