"""Shared fixtures: a tiny synthetic nuScenes + Occ3D world, generated once per test session.

`synthetic_world` is the raw world (nuScenes tables, images, labels) and the objects that describe
its ground truth (scene configs with ego poses, the 3D worlds); `synthetic_infos` adds the info
pickles of gen_sweep_info.py. Any test may use them; do not modify the files they point to.
"""
import os
import os.path as osp
import sys
import types

import pytest

# Tests live in folders that mirror the modules (tests/models/test_ops_head.py tests models/ops_head.py);
# the folders have no __init__.py, so every test file's basename is unique in the tree. The repository
# root (the packages) and this folder (shared helpers: tiny_ops.py, camera_rig.py, occ_world.py, ...)
# are importable from every test.
TESTS = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(TESTS)
for _path in (TESTS, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# 1 train + 1 val scene (mini split names), 3 key frames each, 5 camera sweeps between key frames
# (12 Hz, so history index 5 is the previous key frame as in nuScenes), 160x90 images.
SYNTHETIC_ARGS = ['--train-scenes', '1', '--val-scenes', '1', '--keyframes', '3', '--sweeps', '5',
                  '--scale', '0.1', '--workers', '1', '--seed', '0', '--quiet']
SYNTHETIC_IMAGE_HW = (90, 160)


@pytest.fixture(scope='session')
def synthetic_world(tmp_path_factory):
    """SimpleNamespace(root, args, scenes, worlds, summary): the generated world and its ground truth."""
    from tools import make_synthetic_nuscenes as maker
    root = str(tmp_path_factory.mktemp('synthetic') / 'nuscenes')
    args = maker.parse_args(SYNTHETIC_ARGS + ['--out', root])
    summary = maker.generate(args)
    scenes = maker.make_scenes(args)
    return types.SimpleNamespace(root=root, args=args, scenes=scenes, worlds=[s.world() for s in scenes],
                                 summary=summary, image_hw=SYNTHETIC_IMAGE_HW)


@pytest.fixture(scope='session')
def synthetic_infos(synthetic_world):
    """SimpleNamespace(root, train, val, world): info pickles of gen_sweep_info.py for the synthetic world."""
    import gen_sweep_info
    written = gen_sweep_info.main(['--data-root', synthetic_world.root, '--version', 'v1.0-mini', '--quiet'])
    return types.SimpleNamespace(root=synthetic_world.root, train=written['train_mini'][0],
                                 val=written['val_mini'][0], world=synthetic_world)


@pytest.fixture(scope='session')
def tiny_val_setup(synthetic_infos, tmp_path_factory):
    """The tiny OPS (tests/tiny_ops.py) on the synthetic val scene, for val.py and timing.py:
    (work dir, config file, a checkpoint whose class bias lets many points through the 0.5 threshold, infos)."""
    import torch

    from tiny_ops import TINY_VAL_CONFIG
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp('val_cli')
    config = work / 'tiny_ops.py'
    config.write_text(TINY_VAL_CONFIG.format(root=synthetic_infos.root, occ_root=osp.join(synthetic_infos.root, 'gts'),
                                             ann_file=synthetic_infos.val))
    from mmcv import Config
    from mmdet.models import build_detector

    import models  # noqa: F401
    torch.manual_seed(0)
    model = build_detector(Config.fromfile(str(config)).model)
    model.init_weights()
    with torch.no_grad():  # untrained, the class bias -4.6 lets nothing through the 0.5 threshold; +7.6 -> +3
        for name, param in model.named_parameters():
            if 'cls_branch' in name and name.endswith('bias') and param.shape[0] % 17 == 0:
                param.add_(7.6)
    checkpoint = work / 'tiny.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    return work, str(config), str(checkpoint), synthetic_infos


@pytest.fixture(scope='session')
def single_run(tiny_val_setup):
    """One val.py run of the tiny model (one process, online mode) with saved predictions: (metrics, preds dir,
    json path); tests/test_val.py and tests/tools/test_evaluate.py read it."""
    import val
    work, config, checkpoint, _ = tiny_val_setup
    preds, summary = work / 'preds', work / 'metrics.json'
    metrics = val.main(['--config', config, '--weights', checkpoint, '--device', 'cpu', '--save-dir', str(preds),
                        '--summary-json', str(summary)])
    return metrics, preds, summary


@pytest.fixture
def in_dir():
    """Context-free helper: `with in_dir(path): ...` runs the block with `path` as working directory."""
    import contextlib

    @contextlib.contextmanager
    def _cd(path):
        old = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(old)
    return _cd


# ------------------------------------------------------------------ real nuScenes data (../shared/data)
# Helpers and the skip rule live in tests/real_data.py; these fixtures skip (reason naming
# ../shared/data) when the shared data folder is absent.
@pytest.fixture(scope='session')
def real_keyframe():
    """The real nuScenes keyframe (mmdet3d info v1.1, images, LiDAR file) of ../shared/data."""
    import real_data
    return real_data.load_keyframe()


@pytest.fixture(scope='session')
def real_occ3d():
    """The real Occ3D-nuScenes grid of ../shared/data: dict(semantics, mask_lidar, mask_camera)."""
    import real_data
    return real_data.load_occ3d()


@pytest.fixture(scope='session')
def real_keyframe_infos(real_keyframe, tmp_path_factory):
    """The keyframe as a one-sample nuScenes v1.0-mini in a temporary folder, prepared by gen_sweep_info.py.

    SimpleNamespace(root, version, sample_token, scene_name, filenames, occ_path, tables, written, ann_file):
    `written` is gen_sweep_info's {tag: (pickle, number of samples)}, `ann_file` the train_mini pickle
    (scene-0061 is a mini_train scene). The real Occ3D grid of another sample stands in as its labels."""
    import gen_sweep_info
    import real_data
    root = str(tmp_path_factory.mktemp('real_keyframe') / 'nuscenes')
    ns = real_data.write_nuscenes_tables(real_keyframe, root)
    ns.written = gen_sweep_info.main(['--data-root', root, '--version', ns.version, '--quiet'])
    ns.ann_file = ns.written['train_mini'][0]
    return ns
