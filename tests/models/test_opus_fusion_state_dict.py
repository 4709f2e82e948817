"""OPUS-Fusion T and L built from their configs have exactly the authors' state-dict layout (the key lists
tests/data/checkpoint-keys/opusv1-fusion-{t,l}.txt: the V1 lists with the authors' three changes -- no head
`init_points` (init_pos_lidar='curr'), `img_pts_mixing` over (T+1)*np points instead of V1's `mixing`, the LiDAR
branch's keys of opusv1-fusion-lidar-*.txt), a checkpoint in that layout loads strictly, and the configs carry the
authors' values (configs/opusv1-fusion_nusc-occ3d/opusv1-fusion-{t,s,m,l}_r50_704x256_8f_nusc-occ3d_100e.py)."""
import os

import numpy as np
import pytest
import torch
from mmcv import Config
from mmdet.models import build_detector

import models  # noqa: F401  (registers the Fusion modules)
from checkpoint_keys import detectors_one_at_a_time, official_keys
from test_lidar_branch import AUTHORS_LIDAR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked', 'pc_range', 'scene_size', 'voxel_size',
                   'voxel_num')
VARIANTS = {  # the authors' num_query, num_points, num_refines
    't': (600, 4, [1, 4, 16, 32, 64, 128]),
    's': (1200, 2, [1, 4, 8, 16, 32, 64]),
    'm': (2400, 2, [1, 2, 4, 8, 16, 32]),
    'l': (4800, 2, [1, 2, 4, 8, 16, 16]),
}
LIDAR_PARAMS = 8_451_024          # the LiDAR branch (tests/models/test_lidar_branch.py)
FROZEN = 225_344                  # the ResNet-50's stem and layer1 (frozen_stages=1)


def mixing_params(in_points, out_points):
    """An adaptive mixing's parameters at C = 256, G = 4, C_g = 64: generator Linear(256, G*(C_g^2 + out*in)) and
    out_proj Linear(G*out*C_g, 256)."""
    generator = 4 * (64 * 64 + out_points * in_points)
    return generator * 256 + generator + 4 * out_points * 64 * 256 + 256


def config_path(variant):
    return os.path.join(ROOT, 'configs', f'opus-fusion-{variant}_r50_704x256_8f_100e.py')


def parameter_count(keys):
    return sum(int(np.prod(s)) for k, s in keys.items() if not k.endswith(BUFFER_SUFFIXES))


@pytest.fixture(scope='module')
def built_model():
    """variant -> its detector built from the 100e config, one at a time."""
    return detectors_one_at_a_time(config_path)


@pytest.mark.parametrize('variant', ['t', 'l'])
def test_layout_and_parameter_counts(variant, built_model):
    model = built_model(variant)
    expected = official_keys(f'opusv1-fusion-{variant}')
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 627 - 1 + 212
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}
    # the count from the V1 list and the three changes, independently of the Fusion list
    _, num_points, _ = VARIANTS[variant]
    v1 = official_keys(f'ops-{variant}')
    change = 6 * (mixing_params(9 * num_points, 9 * num_points) - mixing_params(8 * num_points, 32))
    total = parameter_count(v1) - int(np.prod(v1['pts_bbox_head.init_points.weight'])) + change + LIDAR_PARAMS
    assert sum(p.numel() for p in model.parameters()) == parameter_count(expected) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total - FROZEN


def test_a_checkpoint_in_the_authors_layout_loads_strictly(built_model, tmp_path):
    from models.weights import CheckpointMismatchError, load_checkpoint_strict
    model = built_model('l')
    expected = official_keys('opusv1-fusion-l')
    integer = ('voxel_num', 'num_batches_tracked')
    # every tensor a broadcast view of one scalar: the file stays small
    state = {k: torch.full((), 3 if k.endswith(integer) else 0.25,
                           dtype=torch.long if k.endswith(integer) else torch.float32).expand(shape)
             for k, shape in expected.items()}
    path = tmp_path / 'opusv1-fusion-l.pth'
    torch.save({'state_dict': state, 'meta': {}}, path)
    load_checkpoint_strict(model, str(path))
    layer = model.pts_bbox_head.transformer.decoder.decoder_layers[5]
    assert torch.all(layer.img_pts_mixing.parameter_generator.weight == 0.25)
    assert torch.all(model.pts_middle_encoder.conv_input[0].weight == 0.25)
    # a V1 checkpoint is refused: no LiDAR branch and no img_pts_mixing (212 + 6 x 4 keys), V1's initial points and
    # mixing (1 + 6 x 4 keys) instead
    v1_state = {k: torch.zeros(()).expand(s) for k, s in official_keys('ops-l').items()}
    torch.save({'state_dict': v1_state}, path)
    with pytest.raises(CheckpointMismatchError, match=r'missing in the checkpoint \(236\): final_conv.conv.bias.*'
                                                      r'unexpected in the checkpoint \(25\): '
                                                      r'pts_bbox_head.init_points.weight, .*decoder_layers.0.mixing'):
        load_checkpoint_strict(model, str(path))


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_variant_configs_carry_the_authors_values(variant):
    from engine.config import load_config
    cfg = load_config(config_path(variant))
    v1 = Config.fromfile(os.path.join(ROOT, 'configs', 'ops-t_r50_704x256_8f_100e.py'))
    m = cfg.model
    num_query, num_points, num_refines = VARIANTS[variant]
    head = m.pts_bbox_head
    assert m.type == 'OPUSV1Fusion' and head.type == 'OPUSV1FusionHead' and head.init_pos_lidar == 'curr'
    assert head.num_query == num_query
    assert head.transformer.to_dict() == dict(
        type='OPUSV1FusionTransformer', embed_dims=256, num_frames=8, num_points=num_points, num_layers=6,
        num_levels=4, num_classes=17, num_refines=num_refines, scales=[0.5], pc_range=[-40.0, -40.0, -1.0, 40.0,
                                                                                         40.0, 5.4])
    for key in ('pts_voxel_layer', 'pts_voxel_encoder', 'pts_middle_encoder', 'pts_backbone', 'pts_neck'):
        assert m[key].to_dict() == AUTHORS_LIDAR[key], key
    # the same as V1 everywhere else (the authors' Fusion configs are their V1 configs plus the LiDAR parts)
    for key in ('img_backbone', 'img_neck', 'data_aug', 'train_cfg', 'test_cfg', 'use_grid_mask', 'stop_prev_grad'):
        assert m[key] == v1.model[key], key
    for key in ('loss_cls', 'loss_pts', 'pc_range', 'voxel_size', 'num_classes', 'in_channels'):
        assert head[key] == v1.model.pts_bbox_head[key], key
    for key in ('optimizer', 'optimizer_config', 'lr_config', 'checkpoint_config', 'ida_aug_conf', 'batch_size',
                'total_epochs'):
        assert cfg[key] == v1[key], key
    assert (cfg.load_from, cfg.revise_keys) == ('pretrain/fusion_pretrain_model.pth', [])
    points = ['LoadPointsFromFile', 'LoadPointsFromMultiSweeps', 'LiDARToOccSpace']
    assert [s.type for s in cfg.train_pipeline] == [
        'LoadMultiViewImageFromFiles', 'LoadMultiViewImageFromMultiSweeps', *points, 'LoadOccFromFile',
        'RandomTransformImage', 'PointsRangeFilter', 'ComposeEgo2Img', 'DefaultFormatBundle3D', 'Collect3D']
    assert [s.type for s in cfg.test_pipeline] == [
        'LoadMultiViewImageFromFiles', 'LoadMultiViewImageFromMultiSweeps', *points, 'RandomTransformImage',
        'PointsRangeFilter', 'ComposeEgo2Img', 'MultiScaleFlipAug3D']
    assert cfg.train_pipeline[3] == dict(type='LoadPointsFromMultiSweeps', sweeps_num=9, use_dim=[0, 1, 2, 3, 4],
                                         pad_empty_sweeps=True, remove_close=True)
    assert cfg.train_pipeline[-1]['keys'] == ['img', 'points', 'voxel_semantics', 'mask_camera']
    assert cfg.test_pipeline[-1].transforms[-1]['keys'] == ['img', 'points']
    for split in ('train', 'val', 'test'):
        assert cfg.data[split].use_lidar is True and cfg.data[split].ann_file == v1.data[split].ann_file
        assert cfg.data[split].pipeline == (cfg.train_pipeline if split == 'train' else cfg.test_pipeline)


def test_the_fusion_pretraining_file_fills_both_branches(tmp_path):
    """The authors' pretraining file holds `img_backbone.*` and the LiDAR branch's `pts_*` keys under the model's
    names (revise_keys = []): both land."""
    from engine.build import build_model
    from tiny_fusion import fusion_cfg
    torch.manual_seed(0)
    donor = build_detector(fusion_cfg()).state_dict()
    pretrain = {k: v + 1 for k, v in donor.items()
                if k.startswith(('img_backbone.', 'pts_middle_encoder.', 'pts_backbone.', 'pts_neck.'))
                and v.is_floating_point()}
    torch.save({'state_dict': pretrain}, tmp_path / 'fusion_pretrain_model.pth')
    model = build_model(fusion_cfg(), pretrained=str(tmp_path / 'fusion_pretrain_model.pth'), revise_keys=[])
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pretrain.items())
    assert any(k.startswith('pts_neck.') for k in pretrain) and any(k.startswith('img_backbone.') for k in pretrain)
