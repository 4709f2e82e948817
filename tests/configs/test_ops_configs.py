"""T/S/M/L built from their configs have exactly the official state-dict layout; the configs carry the values of
docs/method.md, "Configuration"."""
import os

import numpy as np
import pytest
import torch
from mmcv import Config
from mmdet.models import build_detector

import models  # noqa: F401  (registers OPS, OPSHead, OPSTransformer)
from checkpoint_keys import official_keys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = {  # num_query, num_points, num_refines (docs/method.md, "Configuration")
    't': (600, 4, [1, 4, 16, 32, 64, 128]),
    's': (1200, 2, [1, 4, 8, 16, 32, 64]),
    'm': (2400, 2, [1, 2, 4, 8, 16, 32]),
    'l': (4800, 2, [1, 2, 4, 8, 16, 16]),
}
EPOCHS = (12, 24, 100)
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked', 'pc_range', 'scene_size', 'voxel_size',
                   'voxel_num')


def config_path(variant, epochs):
    return os.path.join(ROOT, 'configs', f'ops-{variant}_r50_704x256_8f_{epochs}e.py')


@pytest.fixture(scope='module')
def built_model():
    """variant -> its detector built from the config, once per module (about 1 s each on the CPU)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            torch.manual_seed(0)
            cache[variant] = build_detector(Config.fromfile(config_path(variant, 24)).model)
        return cache[variant]

    yield get
    cache.clear()   # ~1.2 GB of weights for the four variants


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_state_dict_matches_official_layout(variant, built_model):
    model = built_model(variant)
    expected = official_keys(f'ops-{variant}')
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_parameter_counts(variant, built_model):
    model = built_model(variant)
    # independent count from the official layout: every entry that is not a buffer is a parameter
    layout = official_keys(f'ops-{variant}')
    expected = sum(int(np.prod(s)) for k, s in layout.items() if not k.endswith(BUFFER_SUFFIXES))
    total = sum(p.numel() for p in model.parameters())
    assert total == expected
    assert sum(p.numel() for p in model.img_backbone.parameters()) == 23_508_032
    assert sum(p.numel() for p in model.img_neck.parameters()) == 3_344_384
    if variant == 't':
        assert total == 77_707_068
    # frozen stem + layer1 (frozen_stages=1): 225,344 parameters do not train
    assert total - sum(p.numel() for p in model.parameters() if p.requires_grad) == 225_344


@pytest.mark.parametrize('variant', list(VARIANTS))
@pytest.mark.parametrize('epochs', EPOCHS)
def test_variant_configs(variant, epochs):
    from engine.config import load_config
    cfg = load_config(config_path(variant, epochs))          # the project's checker accepts it
    num_query, num_points, num_refines = VARIANTS[variant]
    head = cfg.model.pts_bbox_head
    assert (head.num_query, head.transformer.num_points, head.transformer.num_refines) == \
        (num_query, num_points, num_refines)
    assert cfg.total_epochs == epochs and cfg.eval_config.interval == epochs
    # everything else is shared: the model dicts of one variant agree across schedules
    other = Config.fromfile(config_path(variant, 100))
    assert cfg.model.to_dict() == other.model.to_dict()


def test_shared_hyper_parameters():
    cfg = Config.fromfile(config_path('t', 100))
    m = cfg.model
    assert m.type == 'OPS' and m.use_grid_mask is False and m.stop_prev_grad == 0
    assert m.data_aug.img_color_aug is True and m.data_aug.img_pad_cfg.size_divisor == 32
    assert m.data_aug.img_norm_cfg == dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
    bb = m.img_backbone
    assert (bb.type, bb.depth, bb.frozen_stages, bb.norm_eval, bb.with_cp, bb.style) == \
        ('ResNet', 50, 1, True, True, 'pytorch')
    assert m.img_neck.in_channels == [256, 512, 1024, 2048] and m.img_neck.num_outs == 4
    tr = m.pts_bbox_head.transformer
    assert (tr.embed_dims, tr.num_frames, tr.num_layers, tr.num_levels, tr.num_classes, tr.scales) == \
        (256, 8, 6, 4, 17, [0.5])
    assert m.pts_bbox_head.pc_range == [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
    assert m.pts_bbox_head.voxel_size == [0.4, 0.4, 0.4]
    assert m.pts_bbox_head.loss_cls == dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)
    assert m.pts_bbox_head.loss_pts == dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5)
    assert m.train_cfg.pts.cls_weights == [10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1]
    assert m.test_cfg.pts.score_thr == 0.5 and m.test_cfg.pts.padding is True
    assert cfg.optimizer.lr == 2e-4 and cfg.optimizer.weight_decay == 0.01
    assert cfg.optimizer.paramwise_cfg.custom_keys == {'img_backbone': dict(lr_mult=0.1),
                                                       'sampling_offset': dict(lr_mult=0.1)}
    assert cfg.optimizer_config == dict(type='Fp16OptimizerHook', loss_scale=512.0,
                                        grad_clip=dict(max_norm=35, norm_type=2))
    assert cfg.lr_config == dict(policy='CosineAnnealing', warmup='linear', warmup_iters=500,
                                 warmup_ratio=1.0 / 3, min_lr_ratio=1e-3)
    assert cfg.batch_size == 8 and cfg.data.workers_per_gpu == 4
    assert cfg.load_from.endswith('cascade_mask_rcnn_r50_fpn_coco-20e_20e_nuim_20201009_124951-40963960.pth')
    assert cfg.revise_keys == [('backbone', 'img_backbone')]
    assert cfg.checkpoint_config == dict(interval=1, max_keep_ckpts=1)
    assert cfg.ida_aug_conf['resize_lim'] == (0.38, 0.55) and cfg.ida_aug_conf['final_dim'] == (256, 704)
    sweeps = [s for s in cfg.train_pipeline + cfg.test_pipeline if s.type == 'LoadMultiViewImageFromMultiSweeps']
    assert [s.sweeps_num for s in sweeps] == [7, 7] and sweeps[1].test_mode is True
    assert [s.type for s in cfg.train_pipeline] == [
        'LoadMultiViewImageFromFiles', 'LoadMultiViewImageFromMultiSweeps', 'LoadOccFromFile',
        'RandomTransformImage', 'DefaultFormatBundle3D', 'Collect3D']
    assert cfg.train_pipeline[-1]['keys'] == ['img', 'voxel_semantics', 'mask_camera']


def test_optimizer_lr_multipliers(built_model):
    """mmcv's constructor gives the backbone and every sampling_offset lr 2e-5, the rest 2e-4
    (docs/method.md, "Training")."""
    model = built_model('t')
    from mmcv.runner import build_optimizer
    cfg = Config.fromfile(config_path('t', 24))
    optimizer = build_optimizer(model, cfg.optimizer)
    lr_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group['params']:
            lr_of[names[id(p)]] = (group['lr'], group['weight_decay'])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) > 300
    for name, (lr, wd) in lr_of.items():
        if name not in trainable:   # the frozen stem / layer1 get a group too, but never update
            continue
        slow = name.startswith('img_backbone') or 'sampling_offset' in name
        # base lr times lr_mult in float64: 2e-4 * 0.1 rounds the constants and the product once each (2^-53):
        # within 2 eps of 2e-5 (the others are 2e-4 itself)
        assert lr == pytest.approx(2e-5 if slow else 2e-4, rel=2 * np.finfo(np.float64).eps), name
        assert wd == 0.01, name


def test_pipelines_build_from_the_config():
    """Every pipeline step of the configs exists in the loaders' registry and accepts its arguments."""
    from mmdet.datasets.pipelines import Compose

    import loaders  # noqa: F401  (registers the pipelines)
    cfg = Config.fromfile(config_path('t', 24))
    assert len(Compose(cfg.train_pipeline).transforms) == len(cfg.train_pipeline)
    assert len(Compose(cfg.test_pipeline).transforms) == len(cfg.test_pipeline)
    for split in ('train', 'val', 'test'):
        assert cfg.data[split].type == 'NuScenesOccDataset'
        assert cfg.data[split].ann_file == f'data/nuscenes/nuscenes_infos_{split}_sweep.pkl'
        assert cfg.data[split].test_mode is (split != 'train')
