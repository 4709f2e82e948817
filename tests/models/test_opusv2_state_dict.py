"""OPUS-V2 T/S/M/L built from their configs have exactly the official state-dict layout (the derived key
lists in tests/data/checkpoint-keys/opusv2-*.txt), a checkpoint in that layout loads with strict=True,
and the V2 configs carry the published hyper-parameters."""
import os

import numpy as np
import pytest
import torch
from mmcv import Config
from mmdet.models import build_detector

import models  # noqa: F401  (registers the V1 and V2 modules)
from checkpoint_keys import detectors_one_at_a_time, official_keys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = {  # num_query, num_points, num_refines; trainable parameters as derived from the official code
    't': (600, 4, [8, 16, 32, 64, 128], 70_933_005),
    's': (1200, 2, [4, 8, 16, 32, 64], 67_069_585),
    'm': (2400, 2, [2, 4, 8, 16, 32], 66_492_455),
    'l': (4800, 2, [1, 2, 4, 8, 16], 66_209_290),
}
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked', 'pc_range', 'scene_size', 'voxel_size',
                   'voxel_num')
CPD_PARAMS = 145_553   # one CPD module: 1,216 + 64 + 4,096 + 128 + 110,656 + 29,393


def config_path(variant, epochs, dcd=False):
    return os.path.join(ROOT, 'configs', f'opusv2-{variant}_r50_704x256_8f_{"dcdloss_" if dcd else ""}{epochs}e.py')


@pytest.fixture(scope='module')
def built_model():
    """variant -> its detector built from the 50e config, one at a time (~300 MB of weights each)."""
    return detectors_one_at_a_time(lambda variant: config_path(variant, 50))


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_layout_and_parameter_counts(variant, built_model):
    model = built_model(variant)
    expected = official_keys(f'opusv2-{variant}')
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 674
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(int(np.prod(s)) for k, s in expected.items() if not k.endswith(BUFFER_SUFFIXES))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == VARIANTS[variant][3]
    assert total - trainable == 225_344   # frozen stem + layer1 of the ResNet-50
    assert sum(p.numel() for p in model.pts_bbox_head.densifiers.parameters()) == 5 * CPD_PARAMS


def test_a_checkpoint_in_the_official_layout_loads_strictly(built_model, tmp_path):
    from models.weights import CheckpointMismatchError, load_checkpoint_strict
    model = built_model('l')
    expected = official_keys('opusv2-l')
    # every tensor a broadcast view of one scalar: the file stays a few hundred kB
    state = {k: torch.full((), 0.25 if not k.endswith(('voxel_num', 'num_batches_tracked')) else 3,
                           dtype=torch.long if k.endswith(('voxel_num', 'num_batches_tracked')) else torch.float32
                           ).expand(shape) for k, shape in expected.items()}
    path = tmp_path / 'opusv2-l.pth'
    torch.save({'state_dict': state, 'meta': {}}, path)
    load_checkpoint_strict(model, str(path))
    assert torch.all(model.pts_bbox_head.densifiers[4].cls_branch[2].weight == 0.25)
    assert torch.all(model.pts_bbox_head.transformer.decoder.decoder_layers[0].sampling.sampling_prototype.weight
                     == 0.25)
    bad = dict(state)
    bad.pop('pts_bbox_head.densifiers.0.cls_branch.0.bias')
    bad['pts_bbox_head.densifiers.1.cls_branch.2.weight'] = torch.zeros(17, 64, 3, 3, 3)   # conv3d layout: refused
    torch.save({'state_dict': bad}, path)
    with pytest.raises(CheckpointMismatchError, match='densifiers'):
        load_checkpoint_strict(model, str(path))


@pytest.mark.parametrize('variant', list(VARIANTS))
@pytest.mark.parametrize('epochs', (50, 100))
def test_variant_configs(variant, epochs):
    from engine.config import load_config
    cfg = load_config(config_path(variant, epochs))
    num_query, num_points, num_refines, _ = VARIANTS[variant]
    head = cfg.model.pts_bbox_head
    assert (head.num_query, head.transformer.num_points, head.transformer.num_refines) == \
        (num_query, num_points, num_refines)
    assert cfg.total_epochs == epochs and cfg.eval_config.interval == epochs
    assert cfg.batch_size == 8   # also T-100e, whose release config says 1 (docs/opusv2.md)
    other = Config.fromfile(config_path(variant, 50))
    assert cfg.model.to_dict() == other.model.to_dict()


def test_v2_hyper_parameters_and_pipelines():
    cfg = Config.fromfile(config_path('t', 100))
    v1 = Config.fromfile(os.path.join(ROOT, 'configs', 'ops-t_r50_704x256_8f_100e.py'))
    m = cfg.model
    assert m.type == 'OPUSV2' and m.pts_bbox_head.type == 'OPUSV2Head'
    tr = m.pts_bbox_head.transformer
    assert tr.to_dict() == dict(type='OPUSV2Transformer', embed_dims=256, num_frames=8, num_points=4, num_layers=5,
                                num_levels=4, num_pt_channels=32, num_refines=[8, 16, 32, 64, 128], scales=[0.5],
                                pc_range=[-40.0, -40.0, -1.0, 40.0, 40.0, 5.4])
    assert m.pts_bbox_head.pfn_channels == [64, 64]
    assert m.test_cfg.to_dict() == dict(pts=dict(score_thr=0.25))
    assert cfg.train_pipeline[4].bda_aug_conf == dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5)
    # the same as V1 everywhere else
    for key in ('img_backbone', 'img_neck', 'data_aug', 'train_cfg'):
        assert m[key].to_dict() == v1.model[key].to_dict(), key
    for key in ('loss_cls', 'loss_pts', 'pc_range', 'voxel_size', 'num_classes', 'in_channels'):
        assert m.pts_bbox_head[key] == v1.model.pts_bbox_head[key], key
    for key in ('optimizer', 'optimizer_config', 'lr_config', 'load_from', 'revise_keys', 'checkpoint_config',
                'ida_aug_conf', 'batch_size'):
        assert cfg[key] == v1[key], key
    assert [s.type for s in cfg.train_pipeline] == [
        'LoadMultiViewImageFromFiles', 'LoadMultiViewImageFromMultiSweeps', 'LoadOcc3DFromFile',
        'RandomTransformImage', 'RandomTransformOcc', 'ComposeEgo2Img', 'DefaultFormatBundle3D', 'Collect3D']
    keys = ('filename', 'ori_shape', 'img_shape', 'pad_shape', 'ego2occ', 'ego2img', 'ego2lidar', 'img_timestamp')
    assert tuple(cfg.train_pipeline[-1].meta_keys) == keys
    assert [s.type for s in cfg.test_pipeline] == [
        'LoadMultiViewImageFromFiles', 'LoadMultiViewImageFromMultiSweeps', 'RandomTransformImage', 'ComposeEgo2Img',
        'MultiScaleFlipAug3D']
    assert tuple(cfg.test_pipeline[-1].transforms[-1].meta_keys) == keys
    for split, pipeline in (('train', cfg.train_pipeline), ('val', cfg.test_pipeline), ('test', cfg.test_pipeline)):
        assert cfg.data[split].pipeline == pipeline
        assert cfg.data[split].ann_file == v1.data[split].ann_file
    from mmdet.datasets.pipelines import Compose

    import loaders  # noqa: F401
    assert len(Compose(cfg.train_pipeline).transforms) == len(cfg.train_pipeline)
    assert len(Compose(cfg.test_pipeline).transforms) == len(cfg.test_pipeline)


def test_dcd_config_differs_in_the_head_type_and_point_loss_weight():
    from engine.config import load_config
    dcd = load_config(config_path('t', 50, dcd=True))
    cd = Config.fromfile(config_path('t', 50))
    assert dcd.model.pts_bbox_head.type == 'OPUSV2DCDHead'
    assert dcd.model.pts_bbox_head.loss_pts == dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.25)
    a, b = dcd.model.to_dict(), cd.model.to_dict()
    for d in (a, b):
        d['pts_bbox_head'].pop('type')
        d['pts_bbox_head'].pop('loss_pts')
    assert a == b and dcd.total_epochs == 50


def test_prototypes_learn_at_the_base_lr(built_model):
    from mmcv.runner import build_optimizer
    model = built_model('l')
    optimizer = build_optimizer(model, Config.fromfile(config_path('l', 50)).optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    lr = {names[id(p)]: g['lr'] for g in optimizer.param_groups for p in g['params']}
    assert lr['pts_bbox_head.transformer.decoder.decoder_layers.0.sampling.sampling_prototype.weight'] == 2e-4
    # 2e-4 * 0.1 in float64: both constants and their product round once (2^-53 each): within 2 eps of 2e-5
    assert lr['pts_bbox_head.transformer.decoder.decoder_layers.0.sampling.sampling_offset.weight'] == \
        pytest.approx(2e-5, rel=2 * np.finfo(np.float64).eps)
    assert lr['pts_bbox_head.densifiers.0.cls_branch.0.weight'] == 2e-4


def test_demo_config_is_a_small_v2():
    from engine.config import load_config
    cfg = load_config(os.path.join(ROOT, 'configs', 'opusv2-demo_synthetic.py'))
    model = build_detector(cfg.model)
    head = model.pts_bbox_head
    assert type(model).__name__ == 'OPUSV2' and len(head.densifiers) == 3
    assert head.transformer.num_refines == [8, 32, 64] and head.transformer.num_frames == 1
    v2_t = Config.fromfile(config_path('t', 50))
    assert [s.type for s in cfg.train_pipeline] == [s.type for s in v2_t.train_pipeline]
    assert cfg.data.train.ann_file == 'data/synthetic/nuscenes_infos_train_mini_sweep.pkl'
    assert cfg.train_pipeline[2].occ_root == 'data/synthetic/gts/'
