"""Strict loading of full checkpoints and the backbone-only load of the nuImages detector (pretrain/README.md)."""
import os

import pytest
import torch
import torch.nn as nn
from mmdet.models.builder import build_backbone, build_neck

import models  # noqa: F401
from models.weights import CheckpointMismatchError, load_checkpoint_strict, load_pretrained_backbone


class TinyDetector(nn.Module):
    """Same top-level names as OPS (img_backbone, img_neck, pts_bbox_head), small sizes."""

    def __init__(self, width=8):
        super().__init__()
        self.img_backbone = build_backbone(dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3),
                                                frozen_stages=1, norm_cfg=dict(type='BN2d', requires_grad=True),
                                                norm_eval=True, style='pytorch'))
        self.img_neck = build_neck(dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=16, num_outs=4))
        self.pts_bbox_head = nn.Linear(16, width)


def randomised_state(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 3) for k, v in
            model.state_dict().items()}


def test_strict_roundtrip_with_module_prefix_and_bare_dict(tmp_path):
    src, dst = TinyDetector(), TinyDetector()
    state = randomised_state(src, 0)
    wrapped = tmp_path / 'ddp.pth'
    torch.save({'meta': {'epoch': 3}, 'state_dict': {'module.' + k: v for k, v in state.items()}}, wrapped)
    assert load_checkpoint_strict(dst, str(wrapped)) == {'epoch': 3}
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state[k]), k
    bare = tmp_path / 'bare.pth'
    torch.save(randomised_state(src, 1), bare)
    load_checkpoint_strict(nn.DataParallel(dst), str(bare))          # wrapped models are unwrapped
    # on a GPU machine DataParallel has moved the module to cuda:0: compare on the module's device
    weight = dst.pts_bbox_head.weight
    assert torch.equal(weight, torch.load(bare)['pts_bbox_head.weight'].to(weight.device))


def test_strict_reports_missing_unexpected_and_shapes(tmp_path):
    model = TinyDetector()
    state = randomised_state(model, 0)
    state.pop('pts_bbox_head.bias')
    state['pts_bbox_head.extra'] = torch.zeros(2)
    state['pts_bbox_head.weight'] = torch.zeros(4, 16)
    path = tmp_path / 'bad.pth'
    torch.save({'state_dict': state}, path)
    before = model.img_neck.fpn_convs[0].conv.weight.clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint_strict(model, str(path))
    msg = str(err.value)
    assert 'missing in the checkpoint (1): pts_bbox_head.bias' in msg
    assert 'unexpected in the checkpoint (1): pts_bbox_head.extra' in msg
    assert 'pts_bbox_head.weight: checkpoint (4, 16) vs model (8, 16)' in msg
    assert torch.equal(model.img_neck.fpn_convs[0].conv.weight, before)   # nothing half-loaded


def test_missing_file_names_the_expected_location(tmp_path):
    with pytest.raises(FileNotFoundError, match='pretrain/README.md'):
        load_checkpoint_strict(TinyDetector(), str(tmp_path / 'nope.pth'))
    with pytest.raises(FileNotFoundError, match='cascade_mask_rcnn_r50'):
        load_pretrained_backbone(TinyDetector(), str(tmp_path / 'nope.pth'))


def test_backbone_only_from_detection_checkpoint(tmp_path, capsys):
    """A nuImages-style checkpoint (backbone.*, neck.*, rpn_head.*, roi_head.*): only the ResNet lands."""
    model = TinyDetector()
    donor = TinyDetector()
    backbone = randomised_state(donor.img_backbone, 5)
    ckpt = {'backbone.' + k: v for k, v in backbone.items()}
    ckpt.update({'neck.' + k: torch.randn(v.shape) for k, v in donor.img_neck.state_dict().items()})
    ckpt.update({'rpn_head.rpn_conv.weight': torch.randn(16, 16, 3, 3), 'roi_head.bbox_head.0.fc_cls.weight':
                 torch.randn(11, 1024)})
    path = tmp_path / 'nuim.pth'
    torch.save({'meta': {}, 'state_dict': ckpt}, path)
    neck_before = {k: v.clone() for k, v in model.img_neck.state_dict().items()}
    head_before = model.pts_bbox_head.weight.clone()
    summary = load_pretrained_backbone(model, str(path), revise_keys=[('backbone', 'img_backbone')])
    for k, v in model.img_backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k                              # incl. BN running stats
    for k, v in model.img_neck.state_dict().items():
        assert torch.equal(v, neck_before[k]), k                           # FPN keeps its own init
    assert torch.equal(model.pts_bbox_head.weight, head_before)
    assert len(summary['loaded']) == len(backbone) and summary['not_loaded'] == []
    assert len(summary['ignored']) == len(ckpt) - len(backbone)
    assert f'loaded {len(backbone)} tensors' in capsys.readouterr().out


def test_backbone_shape_mismatch_and_no_match(tmp_path):
    model = TinyDetector()
    ckpt = {'backbone.conv1.weight': torch.randn(64, 3, 3, 3)}
    torch.save({'state_dict': ckpt}, tmp_path / 'a.pth')
    with pytest.raises(CheckpointMismatchError, match='backbone.conv1.weight|img_backbone.conv1.weight'):
        load_pretrained_backbone(model, str(tmp_path / 'a.pth'))
    torch.save({'state_dict': {'something.else': torch.zeros(1)}}, tmp_path / 'b.pth')
    with pytest.raises(CheckpointMismatchError, match='no entry matches'):
        load_pretrained_backbone(model, str(tmp_path / 'b.pth'))


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUIM = os.path.join(ROOT, 'pretrain', 'cascade_mask_rcnn_r50_fpn_coco-20e_20e_nuim_20201009_124951-40963960.pth')


@pytest.mark.skipif(not os.path.isfile(NUIM), reason='nuImages checkpoint not downloaded (pretrain/README.md)')
def test_real_nuimages_checkpoint_loads_resnet50_only():
    from mmcv import Config
    from mmdet.models import build_detector
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'ops-t_r50_704x256_8f_24e.py'))
    model = build_detector(cfg.model)
    summary = load_pretrained_backbone(model, NUIM, revise_keys=cfg.revise_keys)
    assert summary['not_loaded'] == []
    assert {k.split('.')[0] for k in summary['loaded']} == {'img_backbone'}
    assert len(summary['loaded']) == len(model.img_backbone.state_dict())


def test_mmcv_training_checkpoints_load_strictly(tmp_path):
    """mmcv's save_checkpoint also stores non-persistent buffers; the strict loader must accept them."""
    import torch.nn as nn
    from mmcv.runner.checkpoint import save_checkpoint

    from models.weights import load_checkpoint_strict

    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.register_buffer('mean', torch.ones(2), persistent=False)

    model = WithConstant()
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(model, path)
    assert 'mean' in torch.load(path, weights_only=False)['state_dict']
    fresh = WithConstant()
    load_checkpoint_strict(fresh, path)
    assert torch.equal(fresh.linear.weight, model.linear.weight)
