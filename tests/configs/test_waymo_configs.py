"""The Occ3D-Waymo configs (OPS T..L, OPUS-V2 T..L, the synthetic demo): the project's checker accepts them, they
carry the benchmark's values and the choices their comments state, and their models are the Occ3D-nuScenes models
with 15 classes and 5 views."""
import os

import pytest
import torch
from mmcv import Config
from mmdet.models import build_detector

import models  # noqa: F401  (registers the detectors)
from core.benchmarks import OCC3D_WAYMO
from engine.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = {'t': (600, 4, [1, 4, 16, 32, 64, 128]), 's': (1200, 2, [1, 4, 8, 16, 32, 64]),
       'm': (2400, 2, [1, 2, 4, 8, 16, 32]), 'l': (4800, 2, [1, 2, 4, 8, 16, 16])}
OPUSV2 = {'t': (600, 4, [8, 16, 32, 64, 128]), 's': (1200, 2, [4, 8, 16, 32, 64]),
          'm': (2400, 2, [2, 4, 8, 16, 32]), 'l': (4800, 2, [1, 2, 4, 8, 16])}


def path(name):
    return os.path.join(ROOT, 'configs', name)


def ops(variant):
    return path(f'ops-{variant}_waymo_r50_704x320_8f_24e.py')


def opusv2(variant):
    return path(f'opusv2-{variant}_waymo_r50_704x320_8f_50e.py')


@pytest.mark.parametrize('variant', list(OPS))
def test_ops_variants(variant):
    cfg = load_config(ops(variant))               # the checker: benchmark values, nested keys of every dataset/step
    head = cfg.model.pts_bbox_head
    assert (head.num_query, head.transformer.num_points, head.transformer.num_refines) == OPS[variant]
    assert cfg.model.type == 'OPS' and cfg.total_epochs == 24 and cfg.eval_config.interval == 24


@pytest.mark.parametrize('variant', list(OPUSV2))
def test_opusv2_variants(variant):
    cfg = load_config(opusv2(variant))
    head = cfg.model.pts_bbox_head
    assert (head.num_query, head.transformer.num_points, head.transformer.num_refines) == OPUSV2[variant]
    assert cfg.model.type == 'OPUSV2' and head.type == 'OPUSV2Head' and head.transformer.num_layers == 5
    assert cfg.total_epochs == 50 and cfg.eval_config.interval == 50
    assert [s.type for s in cfg.train_pipeline] == [
        'LoadMultiViewImageFromFiles', 'LoadMultiViewImageFromMultiSweeps', 'LoadOcc3DFromFile', 'PadViewsToSize',
        'RandomTransformImage', 'RandomTransformOcc', 'ComposeEgo2Img', 'DefaultFormatBundle3D', 'Collect3D']


@pytest.mark.parametrize('config', [ops('t'), opusv2('t')])
def test_the_benchmark_values_and_the_stated_choices(config):
    cfg = Config.fromfile(config)
    b = OCC3D_WAYMO
    assert cfg.benchmark == 'occ3d-waymo' and tuple(cfg.occ_names) == b.class_names and cfg.num_classes == 15
    head = cfg.model.pts_bbox_head
    assert head.num_classes == 15 and head.empty_label == b.free_label == 15
    assert head.transformer.num_views == b.num_views == 5 and head.transformer.num_frames == 8
    assert tuple(head.transformer.pc_range) == b.point_cloud_range and tuple(cfg.voxel_size) == b.voxel_size
    pts = cfg.model.train_cfg.pts
    assert pts.cls_weights == [10, 5, 5, 10, 10, 10, 5, 10, 10, 10, 2, 1, 5, 1, 1] and pts.rare_classes == [0, 4, 8, 9]
    assert 'custom_imports' not in cfg and cfg.model.cache_size == 36     # the dataset registers with loaders/
    # the canvas holds both camera sizes (1920x1280 front, 1920x886 side); the crop is 704 wide, 320 high
    ida = cfg.ida_aug_conf
    assert (ida['H'], ida['W']) == (1280, 1920) and ida['final_dim'] == (320, 704)
    assert ida['resize_lim'] == (0.32, 0.46)
    for pipeline in (cfg.train_pipeline, cfg.test_pipeline):
        pad = next(s for s in pipeline if s.type == 'PadViewsToSize')
        assert tuple(pad.size) == (1280, 1920) and pad.align == 'bottom'
        types = [s.type for s in pipeline]
        assert types.index('PadViewsToSize') == types.index('RandomTransformImage') - 1
    occ = next(s for s in cfg.train_pipeline if s.type in ('LoadOccFromFile', 'LoadOcc3DFromFile'))
    assert occ.arrays == ['semantics', 'mask_camera'] and occ.benchmark == 'occ3d-waymo'
    sweeps = [s for s in cfg.train_pipeline + cfg.test_pipeline if s.type == 'LoadMultiViewImageFromMultiSweeps']
    assert [s.sweeps_num for s in sweeps] == [7, 7] and sweeps[0].train_interval == (3, 7)
    assert sweeps[1].test_mode is True and sweeps[1].test_interval == 5
    occ = 'data/waymo/occ3d_waymo/'
    assert cfg.data.train.type == 'WaymoOccDataset' and cfg.data.train.load_interval == 5
    assert (cfg.data.train.ann_file, cfg.data.train.pose_file) == (occ + 'waymo_infos_train.pkl', occ + 'cam_infos.pkl')
    for split in ('val', 'test'):
        d = cfg.data[split]
        assert (d.ann_file, d.pose_file, d.test_mode) == (occ + 'waymo_infos_val.pkl', occ + 'cam_infos_vali.pkl', True)
        assert d.get('load_interval', 1) == 1 and d.data_root == 'data/waymo/kitti_format/' and d.occ_root == occ


def test_the_demo_config():
    cfg = load_config(path('ops-demo_waymo_synthetic.py'))
    head = cfg.model.pts_bbox_head
    assert cfg.benchmark == 'occ3d-waymo' and head.num_classes == 15 and head.empty_label == 15
    assert head.transformer.num_views == 5 and head.transformer.num_frames == 1 and head.num_query == 400
    assert cfg.model.img_backbone.depth == 18
    assert (cfg.ida_aug_conf['H'], cfg.ida_aug_conf['W']) == (160, 240)       # tools/make_synthetic_waymo.py's front
    assert cfg.data.train.ann_file == 'data/synthetic_waymo/occ3d_waymo/waymo_infos_train.pkl'


def test_a_config_mixing_benchmarks_is_refused():
    with pytest.raises(ConfigError, match=r"model\.pts_bbox_head\.empty_label = 17 disagrees with benchmark "
                                          r"'occ3d-waymo', whose value is 15"):
        load_config(ops('t'), cfg_options={'model.pts_bbox_head.empty_label': 17})
    with pytest.raises(ConfigError, match=r"occ_names = \['GENERALOBJECT', .* disagrees with benchmark "
                                          r"'occ3d-nuscenes'"):
        load_config(ops('t'), cfg_options={'benchmark': 'occ3d-nuscenes'})


@pytest.mark.parametrize('waymo, nuscenes', [(ops('t'), path('ops-t_r50_704x256_8f_24e.py')),
                                             (opusv2('t'), path('opusv2-t_r50_704x256_8f_50e.py'))])
def test_the_model_is_the_nuscenes_one_with_15_classes(waymo, nuscenes):
    """Same parameter names; shapes differ only in the first dimension of the class outputs: 15 instead of 17 class
    scores (per query point: 15 k against 17 k)."""
    torch.manual_seed(0)
    ours = {k: tuple(v.shape) for k, v in build_detector(Config.fromfile(waymo).model).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in build_detector(Config.fromfile(nuscenes).model).state_dict().items()}
    assert set(ours) == set(theirs)
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ   # the class branches
    for key in differ:
        a, b = ours[key], theirs[key]
        assert len(a) == len(b) and [i for i in range(len(a)) if a[i] != b[i]] == [0] and a[0] * 17 == b[0] * 15, key
