"""The nuScenes-Occupancy configs: OPUS-V2 T/S/M/L with the authors' values (their
configs/opusv2_nusc-occupancy/opusv2-*_r50_704x256_8f_nusc-occupancy_50e.py, github.com/w1394945493/OPUS at
216dc53) and OPS T/S/M/L derived from the Occ3D ones. Each differs from its Occ3D counterpart in exactly the
benchmark's values (checked key by key), passes the project's config checker, and the T models build with the
benchmark's grid and class count.
"""
import os

import pytest
import torch
from mmcv import Config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = 'tsml'
# the authors' nuScenes-Occupancy values, written out from their config files
AUTHORS_V2 = {'t': (600, 4, [8, 16, 32, 64, 128]), 's': (1200, 2, [4, 8, 16, 32, 64]),
              'm': (2400, 2, [2, 4, 8, 16, 32]), 'l': (4800, 2, [1, 2, 4, 8, 16])}
AUTHORS_CLASSES = ['barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
                   'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
                   'manmade', 'vegetation']
AUTHORS_CLS_WEIGHTS = [5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1]
RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
# the model keys a benchmark sets (every other model key equals the Occ3D config's)
BENCHMARK_MODEL_KEYS = {'pts_bbox_head.empty_label', 'pts_bbox_head.num_classes', 'pts_bbox_head.pc_range',
                        'pts_bbox_head.voxel_size', 'pts_bbox_head.transformer.pc_range', 'train_cfg.pts.cls_weights'}
# the dataset keys (the pipelines are compared step by step below)
BENCHMARK_DATA_KEYS = {f'{split}.{key}' for split in ('train', 'val', 'test')
                       for key in ('type', 'benchmark', 'occ_root')} | {'train.pipeline'}


def v2_path(variant):
    return os.path.join(ROOT, 'configs', f'opusv2-{variant}_r50_704x256_8f_nusc-occupancy_50e.py')


def ops_path(variant):
    return os.path.join(ROOT, 'configs', f'ops-{variant}_r50_704x256_8f_nusc-occupancy_24e.py')


def occ3d_path(kind, variant):
    name = f'opusv2-{variant}_r50_704x256_8f_50e.py' if kind == 'v2' else f'ops-{variant}_r50_704x256_8f_24e.py'
    return os.path.join(ROOT, 'configs', name)


def differing_keys(a, b, prefix=''):
    """Dotted paths where two nested dicts differ (a key missing on one side counts)."""
    out = set()
    for key in set(a) | set(b):
        path = f'{prefix}{key}'
        if key not in a or key not in b:
            out.add(path)
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            out |= differing_keys(a[key], b[key], path + '.')
        elif a[key] != b[key]:
            out.add(path)
    return out


@pytest.mark.parametrize('kind', ['v2', 'ops'])
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_configs_differ_from_occ3d_in_the_benchmark_values_only(kind, variant):
    from engine.config import load_config
    path = v2_path(variant) if kind == 'v2' else ops_path(variant)
    cfg = load_config(path)                                  # the project's checker accepts it
    occ3d = Config.fromfile(occ3d_path(kind, variant))
    model_keys = BENCHMARK_MODEL_KEYS | ({'pts_bbox_head.transformer.num_classes'} if kind == 'ops' else set())
    assert differing_keys(cfg.model.to_dict(), occ3d.model.to_dict()) == model_keys
    assert differing_keys(cfg.data.to_dict(), occ3d.data.to_dict()) == BENCHMARK_DATA_KEYS
    for key in ('optimizer', 'optimizer_config', 'lr_config', 'total_epochs', 'batch_size', 'ida_aug_conf',
                'load_from', 'test_pipeline', 'auto_scale_lr'):
        assert cfg[key] == occ3d[key], key
    # the benchmark's values
    head = cfg.model.pts_bbox_head
    assert cfg.benchmark == 'nuscenes-occupancy' and cfg.occ_names == AUTHORS_CLASSES and cfg.num_classes == 16
    assert head.num_classes == 16 and head.empty_label == 16
    assert head.pc_range == RANGE == head.transformer.pc_range and head.voxel_size == [0.2, 0.2, 0.2]
    assert cfg.model.train_cfg.pts.cls_weights == AUTHORS_CLS_WEIGHTS
    for split in ('train', 'val', 'test'):
        d = cfg.data[split]
        assert (d.type, d.benchmark, d.occ_root) == ('NuScenesOccupancyDataset', 'nuscenes-occupancy',
                                                     'data/nuscenes/occupancy/')
    assert 'custom_imports' not in cfg                                   # the dataset registers with loaders/
    # the training pipeline: the Occ3D one with the labels' step replaced (and, for OPS, the full camera mask)
    train = [dict(s) for s in cfg.data.train.pipeline]
    old = [dict(s) for s in occ3d.data.train.pipeline]
    label_step = dict(type='LoadOccFromFile', occ_root='data/nuscenes/occupancy/', benchmark='nuscenes-occupancy',
                      arrays=['semantics'])
    if kind == 'v2':
        assert train[2] == label_step and old[2]['type'] == 'LoadOcc3DFromFile'
        assert train[4] == dict(type='RandomTransformOcc', bda_aug_conf=dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5))
        assert train[-1]['keys'] == ['img', 'voxel_semantics']                 # no camera mask (the authors')
        assert train[:2] + train[3:-1] == old[:2] + old[3:-1]
        assert cfg.model.test_cfg.pts.score_thr == 0.25 and cfg.total_epochs == 50
        assert (head.num_query, head.transformer.num_points, head.transformer.num_refines) == AUTHORS_V2[variant]
    else:
        assert train[2:4] == [label_step, dict(type='FullCameraMask')] and old[2]['type'] == 'LoadOccFromFile'
        assert train[:2] + train[4:] == old[:2] + old[3:]
        assert head.transformer.num_classes == 16 and cfg.total_epochs == 24


@pytest.fixture(scope='module')
def built():
    """kind -> (nuScenes-Occupancy T model, Occ3D T model), built once (about 1 s each)."""
    from mmdet.models import build_detector

    import models  # noqa: F401
    cache = {}

    def get(kind):
        if kind not in cache:
            path = v2_path('t') if kind == 'v2' else ops_path('t')
            cache[kind] = tuple(build_detector(Config.fromfile(p).model) for p in (path, occ3d_path(kind, 't')))
        return cache[kind]
    yield get
    cache.clear()


@pytest.mark.parametrize('kind', ['v2', 'ops'])
def test_the_t_models_build_on_the_benchmark_grid(kind, built, tmp_path):
    """Same parameters as the Occ3D model except the class dimension (16 logits per point instead of 17); the grid
    buffers hold the benchmark's range and 512 x 512 x 40."""
    model, occ3d = built(kind)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in occ3d.state_dict().items()}
    assert got.keys() == ref.keys()
    changed = {k for k in got if got[k] != ref[k]}
    # the class logits: 16 per point instead of 17 (OPS's class branch gives C x points per query)
    assert changed and all(len(got[k]) == len(ref[k]) and
                           all(g == r or g * 17 == r * 16 for g, r in zip(got[k], ref[k])) for k in changed), \
        {k: (got[k], ref[k]) for k in changed}
    assert all('cls_branch' in k for k in changed)
    if kind == 'v2':
        # the authors' OPUS-V2-T layout (tests/data/checkpoint-keys/opusv2-t.txt, their Occ3D checkpoint's keys): the
        # same names; the nuScenes-Occupancy configs of their V2 commit build the same modules with 16 classes
        from checkpoint_keys import official_keys
        assert set(got) == set(official_keys('opusv2-t'))
        from models.weights import load_checkpoint_strict
        path = tmp_path / 'nusc-occupancy-v2-t.pth'
        torch.save({'state_dict': {k: v.clone() for k, v in model.state_dict().items()}}, path)
        load_checkpoint_strict(model, str(path))          # a checkpoint of that layout loads with strict=True
    head = model.pts_bbox_head
    assert head.voxel_num.tolist() == [512, 512, 40] and head.empty_label == 16 and head.num_classes == 16
    torch.testing.assert_close(head.pc_range, torch.tensor(RANGE))   # float32 of the same decimals
    if kind == 'v2':
        assert all(d.voxel_num.tolist() == [512, 512, 40] and d.num_classes == 16 for d in head.densifiers)


def test_the_demo_config_is_the_v2_t_config_shrunk():
    """configs/opusv2-demo_nusc-occupancy_synthetic.py: the checker accepts it; the benchmark's values are V2-T's."""
    from engine.config import load_config
    demo = load_config(os.path.join(ROOT, 'configs', 'opusv2-demo_nusc-occupancy_synthetic.py'))
    full = Config.fromfile(v2_path('t'))
    changed = differing_keys(demo.model.to_dict(), full.model.to_dict())
    assert not changed & BENCHMARK_MODEL_KEYS
    head = demo.model.pts_bbox_head
    assert (head.num_query, head.transformer.num_layers, head.transformer.num_frames) == (100, 3, 1)
    assert demo.data.train.type == 'NuScenesOccupancyDataset' and demo.data.train.benchmark == 'nuscenes-occupancy'
