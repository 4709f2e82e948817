"""When the execution policy decodes images on the device (`engine.build.apply_gpu_decode`): the faithful preset
never, `True` always (refusing a pipeline with a CPU-only pixel step), the fast preset's 'auto' only on a CUDA
device that decodes JPEGs, with a pipeline free of such steps."""
import copy

import pytest
import torch
from mmcv import Config

import engine.build as build
from accel import policy_from_config
from accel.policy import ExecutionConfigError
from loaders.pipelines.gpu_decode import GpuDecodeUnsupported, cpu_pixel_step

NUSCENES_PIPELINE = [dict(type='LoadMultiViewImageFromFiles'), dict(type='RandomTransformImage'),
                     dict(type='MultiScaleFlipAug3D', transforms=[dict(type='DefaultFormatBundle3D'),
                                                                  dict(type='Collect3D', keys=['img'])])]
# the Waymo demo's pipeline puts the five views on one canvas from their decoded pixels
WAYMO_PIPELINE = [dict(type='LoadMultiViewImageFromFiles'), dict(type='PadViewsToSize', size=(160, 240)),
                  dict(type='RandomTransformImage'), dict(type='DefaultFormatBundle3D'),
                  dict(type='Collect3D', keys=['img'])]


def config(pipeline):
    return Config(dict(data=dict(val=dict(pipeline=copy.deepcopy(pipeline)),
                                 test=dict(pipeline=copy.deepcopy(pipeline)))))


def val_steps(cfg):
    return [step['type'] for step in cfg.data.val.pipeline]


@pytest.fixture
def decoding_gpu(monkeypatch):
    """Pretend the device decodes JPEGs (the probe itself runs in tests/loaders/test_gpu_decode.py on a GPU)."""
    import models.gpu_image_decode as decode
    monkeypatch.setattr(decode, 'device_decodes_jpeg', lambda device: True)


def test_presets_and_bad_values():
    assert policy_from_config(None).gpu_decode is False
    assert policy_from_config(None, fast=True).gpu_decode == 'auto'
    assert policy_from_config(dict(gpu_decode=True)).gpu_decode is True
    with pytest.raises(ExecutionConfigError, match="gpu_decode='yes'"):
        policy_from_config(dict(gpu_decode='yes'))


def test_cpu_pixel_step_is_found_also_inside_nested_transforms():
    assert cpu_pixel_step(NUSCENES_PIPELINE) is None
    assert cpu_pixel_step(WAYMO_PIPELINE) == 'PadViewsToSize'
    nested = [dict(type='MultiScaleFlipAug3D', transforms=WAYMO_PIPELINE)]
    assert cpu_pixel_step(nested) == 'PadViewsToSize'


def test_faithful_never_converts(decoding_gpu):
    cfg = config(NUSCENES_PIPELINE)
    assert not build.apply_gpu_decode(cfg, policy_from_config(None), torch.device('cuda'))
    assert val_steps(cfg) == ['LoadMultiViewImageFromFiles', 'RandomTransformImage', 'MultiScaleFlipAug3D']


def test_auto_converts_on_a_decoding_gpu_only(decoding_gpu):
    fast = policy_from_config(None, fast=True)
    on_cpu = config(NUSCENES_PIPELINE)
    assert not build.apply_gpu_decode(on_cpu, fast, torch.device('cpu'))
    assert val_steps(on_cpu)[0] == 'LoadMultiViewImageFromFiles'
    on_gpu = config(NUSCENES_PIPELINE)
    assert build.apply_gpu_decode(on_gpu, fast, torch.device('cuda'))
    assert val_steps(on_gpu) == ['LoadMultiViewJpegFromFiles', 'DeferredRandomTransformImage', 'MultiScaleFlipAug3D']
    assert on_gpu.data.test.pipeline[-1]['transforms'][-1]['keys'] == ['img_jpeg']


def test_auto_keeps_the_cpu_decode_for_a_pixel_step_or_a_gpu_without_nvjpeg(decoding_gpu, monkeypatch):
    fast = policy_from_config(None, fast=True)
    waymo = config(WAYMO_PIPELINE)
    assert not build.apply_gpu_decode(waymo, fast, torch.device('cuda'))
    assert val_steps(waymo) == [step['type'] for step in WAYMO_PIPELINE]
    import models.gpu_image_decode as decode
    monkeypatch.setattr(decode, 'device_decodes_jpeg', lambda device: False)
    assert not build.apply_gpu_decode(config(NUSCENES_PIPELINE), fast, torch.device('cuda'))


def test_explicit_gpu_decode_refuses_a_pixel_step_in_one_line():
    with pytest.raises(GpuDecodeUnsupported, match='PadViewsToSize.*execution.gpu_decode=False') as error:
        build.apply_gpu_decode(config(WAYMO_PIPELINE), policy_from_config(dict(gpu_decode=True)), torch.device('cpu'))
    assert error.value.user_error


def test_the_probe_decodes_on_the_cpu():
    from models.gpu_image_decode import device_decodes_jpeg
    assert device_decodes_jpeg(torch.device('cpu'))
