"""The environment that tools/install_env.sh creates: pinned versions, compiled ops, clean pip check."""
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pinned_versions():
    pins = {}
    with open(os.path.join(ROOT, 'requirements', 'constraints.txt')) as f:
        for line in f:
            m = re.match(r'^([A-Za-z0-9_.-]+)={2,3}([^\s#]+)', line.strip())
            if m:
                pins[m.group(1)] = m.group(2)
    return pins


def test_constraints_pin_the_stack():
    pins = pinned_versions()
    for name in ('torch', 'torchvision', 'mmcv-full', 'mmdet', 'numpy', 'nuscenes-devkit'):
        assert name in pins, f'{name} is not pinned in requirements/constraints.txt'


@pytest.mark.parametrize('name', sorted(pinned_versions()))
def test_installed_versions_match_pins(name):
    installed = importlib.metadata.version(name)
    assert installed.split('+')[0] == pinned_versions()[name], f'{name}: installed {installed}'


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, '-m', 'pip', 'check'], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mmcv_compiled_ops_run():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    # box 1 overlaps box 0 with IoU 81/100 > 0.5 and is suppressed; box 2 is disjoint
    assert keep.tolist() == [0, 2]


def test_torchvision_ops_work_with_this_torch():
    import torchvision
    keep = torchvision.ops.nms(torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]


def test_mmdet_builds_resnet_and_fpn():
    from mmdet.models import build_backbone, build_neck
    backbone = build_backbone(dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3)))
    neck = build_neck(dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=32, num_outs=4))
    backbone.eval()
    with torch.no_grad():
        feats = neck(backbone(torch.zeros(1, 3, 64, 96)))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 24), (1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]


def test_project_is_installed_in_development_mode():
    import models
    assert os.path.dirname(os.path.abspath(models.__file__)) == os.path.join(ROOT, 'models')


def test_install_script_is_fast_when_nothing_changed():
    """A second run only verifies (the stamp matches); it must not reinstall anything."""
    if not os.path.exists(os.path.join(ROOT, '.venv', '.ops-install-stamp')) or \
            os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(ROOT, '.venv')):
        pytest.skip('tests are not running in the environment made by tools/install_env.sh')
    result = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'install_env.sh')], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'is up to date' in result.stdout
