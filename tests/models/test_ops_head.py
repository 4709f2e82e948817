"""OPSHead construction, state-dict layout, init and forward plumbing (fake transformer)."""
import pytest
import torch
import torch.nn as nn
from mmcv.runner import BaseModule
from mmdet.models import HEADS
from mmdet.models.builder import build_head
from mmdet.models.utils.builder import TRANSFORMER

from core.geometry import encode_points
from models.ops_head import OPSHead

PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
EPS32 = float(torch.finfo(torch.float32).eps)   # 2^-23: one float32 rounding moves a value by <= half of it


@TRANSFORMER.register_module(name='B1BuildFakeTransformer', force=True)
class FakeTransformer(BaseModule):
    """Two 'layers': P = 1 then 2 points, outputs derived from the inputs it is given."""

    def __init__(self, num_classes=17):
        super().__init__()
        self.num_classes = num_classes
        self.cls = nn.Linear(3, num_classes)
        self.calls = []
        self.initialised = False

    def init_weights(self):
        self.initialised = True

    def image_geometry(self, img_metas, device):
        """The head asks its transformer for the camera geometry of the metas (here: a marker per sample)."""
        return torch.stack([torch.full((4, 4), float(m['a'])) for m in img_metas]).to(device), (256, 704)

    def sampling_layout(self, mlvl_feats):
        """The head hands the decoder its features in the sampling layout (here: marked as converted)."""
        return [('sampling layout', f) for f in mlvl_feats]

    def run(self, init_points, query_feat, mlvl_feats, occ2img, image_h, image_w):
        self.calls.append((init_points, query_feat, mlvl_feats, occ2img, (image_h, image_w)))
        p1 = init_points + 0.01
        p2 = torch.cat([p1 - 0.01, p1 + 0.02], dim=2)
        return [self.cls(p1), self.cls(p2)], [p1, p2]


def head_cfg(**kw):
    cfg = dict(type='OPSHead', num_classes=17, in_channels=256, num_query=600,
               pc_range=PC_RANGE, voxel_size=[0.4, 0.4, 0.4],
               transformer=dict(type='B1BuildFakeTransformer'),
               train_cfg=dict(cls_weights=[10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1]),
               test_cfg=dict(score_thr=0.5, padding=True))
    cfg.update(kw)
    return cfg


def test_registered_and_state_dict_layout():
    assert HEADS.get('OPSHead') is OPSHead
    head = build_head(head_cfg())
    sd = head.state_dict()
    own = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith('transformer.')}
    # Exactly the official checkpoint's head-level entries (ops-t: pts_bbox_head.*).
    assert own == {'init_points.weight': (600, 3), 'pc_range': (6,), 'scene_size': (3,),
                   'voxel_size': (3,), 'voxel_num': (3,)}
    assert head.pc_range.dtype == torch.float32 and head.voxel_size.dtype == torch.float32
    assert torch.equal(head.pc_range, torch.tensor(PC_RANGE))
    # exact: 40 - (-40) = 80, and float32(5.4) + 1 is float32(6.4) (one binade, [4, 8), no rounding)
    assert torch.equal(head.scene_size, torch.tensor([80.0, 80.0, 6.4]))
    assert torch.equal(head.voxel_size, torch.tensor([0.4] * 3))
    assert head.voxel_num.tolist() == [200, 200, 16]
    assert set(k for k in sd if k.startswith('transformer.')) == {'transformer.cls.weight',
                                                                  'transformer.cls.bias'}
    # A state dict round-trips strictly into a fresh head.
    build_head(head_cfg()).load_state_dict(sd, strict=True)


def test_init_weights_uniform_in_unit_box():
    torch.manual_seed(0)
    head = build_head(head_cfg())
    head.init_weights()
    w = head.init_points.weight
    assert head.transformer.initialised
    assert w.min() >= 0 and w.max() <= 1
    # 1800 U(0,1) draws: mean 0.5 +- 5 sigma (sigma = 0.29/sqrt(1800) = 0.0068); standard deviation
    # 1/sqrt(12) = 0.2887 with sigma = sqrt((1/80 - 1/144) / 1800) / (2 * 0.2887) = 0.0030: above 0.2887 - 5 sigma.
    assert abs(w.mean().item() - 0.5) < 0.035 and w.std().item() > 0.2735


def test_forward_plumbing_and_shapes():
    head = build_head(head_cfg(num_query=5))
    head.init_weights()
    feats = [torch.randn(2, 12, 256, 4, 8)]
    metas = [dict(a=1), dict(a=2)]
    out = head(feats, metas)
    init_points, query_feat, got_feats, occ2img, image_hw = head.transformer.calls[-1]
    assert init_points.shape == (2, 5, 1, 3)
    assert torch.equal(init_points[1, :, 0], head.init_points.weight)
    assert query_feat.shape == (2, 5, 256) and not query_feat.any()
    assert got_feats == [('sampling layout', feats[0])] and image_hw == (256, 704)
    assert occ2img.shape == (2, 4, 4) and occ2img[0, 0, 0] == 1 and occ2img[1, 0, 0] == 2
    assert set(out) == {'init_points', 'all_cls_scores', 'all_refine_pts'}
    assert out['init_points'] is init_points
    assert [t.shape for t in out['all_cls_scores']] == [(2, 5, 1, 17), (2, 5, 2, 17)]
    assert [t.shape for t in out['all_refine_pts']] == [(2, 5, 1, 3), (2, 5, 2, 3)]
    # Gradient of the init Chamfer term reaches the embedding.
    out['init_points'].sum().backward()
    assert head.init_points.weight.grad is not None


def test_decode_encode_round_trip():
    head = build_head(head_cfg())
    n = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 0.75]])
    m = head.decode_points(n)
    # n * size + min rounds twice, and the references 5.4 and 3.8 once (float32), each by at most eps / 2 of
    # |n * size| + |min|: within 2 eps of that per element
    expect = torch.tensor([[-40.0, -40.0, -1.0], [40.0, 40.0, 5.4], [0.0, -20.0, 3.8]])
    assert torch.all((m - expect).abs() <= 2 * EPS32 * (n * head.scene_size + head.pc_range[:3].abs()))
    # back: m's error over size is at most 2 eps * (n + |min| / size) <= 3 eps (|min| / size <= 1/2), and
    # (m - min) / size rounds twice more (eps / 2 of n <= 1 each): within 4 eps of n
    assert torch.allclose(encode_points(m, PC_RANGE), n, rtol=0, atol=4 * EPS32)
    # the head decodes with the float32 range of its buffers, like the original
    assert torch.equal(m, n * head.scene_size + head.pc_range[:3])


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match='transformer'):
        OPSHead(num_query=4)
    with pytest.raises(ValueError, match="'pts' sub-dict"):
        build_head(head_cfg(train_cfg=dict(pts=dict(cls_weights=[1] * 17))))
    with pytest.raises(ValueError, match='one weight per class'):
        build_head(head_cfg(train_cfg=dict(cls_weights=[1] * 16)))
    with pytest.raises(ValueError, match='pc_range'):
        build_head(head_cfg(pc_range=[0, 0, 0, 1, 1]))
