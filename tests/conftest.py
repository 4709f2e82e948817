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

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

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
