"""models/lidar/: the LiDAR branch of OPUS-Fusion.

* Built from the authors' config values (the LiDAR dicts of configs/opusv1-fusion_nusc-occ3d/opusv1-fusion-{t,s,m,l}
  _r50_704x256_8f_nusc-occ3d_100e.py, identical in the four variants), its state dict has exactly the key names and
  shapes of tests/data/checkpoint-keys/opusv1-fusion-lidar-{t,l}.txt, a list derived by hand from the authors' code
  (mmdet3d 1.0's SparseEncoder / SparseBasicBlock / SECOND / SECONDFPN, spconv 2.x KRSC kernels, the detector's
  `final_conv`), and a checkpoint in that layout loads with strict=True.
* The sparse encoder (at a reduced width, with the authors' strides and paddings) equals a dense float64 emulation:
  conv3d on zero-filled grids, re-masked to the active sites after every layer (submanifold: the input sites;
  strided: the cells a dense conv of the occupancy reaches), BatchNorm in eval mode.
* At full size, the encoder maps (41, 1600, 1600) to a [B, 256, 200, 200] map with rows y and columns x.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmdet.models.builder import MODELS

from checkpoint_keys import official_keys
from models.lidar import LidarBranch
from models.lidar.voxelize import compact_voxels
from models.sparse_conv import SparseTensor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
EPS64 = float(torch.finfo(torch.float64).eps)

POINT_CLOUD_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
# the authors' config (all four variants), restated
AUTHORS_LIDAR = dict(
    pts_voxel_layer=dict(max_num_points=10, voxel_size=[0.05, 0.05, 0.16], deterministic=False,
                         max_voxels=(90000, 120000), point_cloud_range=POINT_CLOUD_RANGE),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=5),
    pts_middle_encoder=dict(
        type='SparseEncoder', in_channels=5, sparse_shape=[41, 1600, 1600], output_channels=128,
        order=('conv', 'norm', 'act'),
        encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)), block_type='basicblock'),
    pts_backbone=dict(type='SECOND', in_channels=256, out_channels=[128, 256], layer_nums=[5, 5],
                      layer_strides=[1, 2], norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01),
                      conv_cfg=dict(type='Conv2d', bias=False)),
    pts_neck=dict(type='SECONDFPN', in_channels=[128, 256], out_channels=[256, 256], upsample_strides=[1, 2],
                  norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01), upsample_cfg=dict(type='deconv', bias=False),
                  use_conv_for_no_stride=True))
# the same structure (strides, paddings, the 41-layer z axis) at small widths and a 16 x 16 grid: 8 m x 8 m of
# 0.5 m voxels, 0.16 m layers
SMALL_ENCODER = dict(type='SparseEncoder', in_channels=5, sparse_shape=[41, 16, 16], output_channels=3,
                     base_channels=2, encoder_channels=((2, 2, 3), (3, 3, 4), (4, 4, 5), (5, 5)),
                     encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)), block_type='basicblock')
SMALL_LIDAR = dict(
    pts_voxel_layer=dict(max_num_points=4, voxel_size=[0.5, 0.5, 0.16], max_voxels=(300, 400),
                         point_cloud_range=[-4.0, -4.0, -1.0, 4.0, 4.0, 5.4]),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=5), pts_middle_encoder=SMALL_ENCODER,
    pts_backbone=dict(type='SECOND', in_channels=6, out_channels=[4, 8], layer_nums=[1, 1], layer_strides=[1, 2]),
    pts_neck=dict(type='SECONDFPN', in_channels=[4, 8], out_channels=[3, 3], upsample_strides=[1, 2],
                  use_conv_for_no_stride=True),
    second_out_dim=6, pts_feat_dim=4)


@pytest.fixture(scope='module')
def authors_branch():
    torch.manual_seed(0)
    return LidarBranch(**AUTHORS_LIDAR)


@pytest.mark.parametrize('variant', ['t', 'l'])
def test_state_dict_is_the_checkpoint_layout(variant, authors_branch):
    expected = official_keys(f'opusv1-fusion-lidar-{variant}')
    got = {k: tuple(v.shape) for k, v in authors_branch.state_dict().items()}
    assert len(expected) == 212
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}
    params = sum(int(np.prod(s)) for k, s in expected.items() if not k.endswith(BUFFERS))
    assert sum(p.numel() for p in authors_branch.parameters()) == params == 8_451_024
    assert sum(p.numel() for p in authors_branch.pts_middle_encoder.parameters()) == 2_694_352


def test_a_checkpoint_in_that_layout_loads_strictly(authors_branch, tmp_path):
    from models.weights import load_checkpoint_strict
    expected = official_keys('opusv1-fusion-lidar-t')
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randint(0, 9, (), generator=gen) if k.endswith('num_batches_tracked')
                 else torch.randn(shape, generator=gen)) for k, shape in expected.items()}
    torch.save(dict(state_dict=state), tmp_path / 'lidar.pth')
    load_checkpoint_strict(authors_branch, str(tmp_path / 'lidar.pth'))
    loaded = authors_branch.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_modules_come_from_mmdets_registry():
    for name in ('HardSimpleVFE', 'SparseEncoder', 'SECOND', 'SECONDFPN'):
        assert MODELS.get(name).__module__.startswith('models.lidar.')


def dense_emulation(encoder, feats, coords, batch_size, absolute=False):
    """The encoder as dense float64 conv3d on zero-filled grids, re-masked to the active sites after every layer.

    With `absolute`, every weight, feature and BatchNorm term enters with its magnitude (and ReLU is the identity
    on those non-negative values): the chain of the terms' magnitudes, for the rounding bound.
    """
    a = torch.abs if absolute else (lambda t: t)
    shape = tuple(encoder.sparse_shape)
    x = torch.zeros((batch_size, feats.shape[1]) + shape, dtype=torch.float64)
    mask = torch.zeros((batch_size, 1) + shape, dtype=torch.float64)
    c = coords.long()
    x[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = a(feats)
    mask[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1.0

    def conv(x, mask, layer):
        w = a(layer.weight).permute(0, 4, 1, 2, 3)
        if layer.subm:
            pad = tuple(k // 2 for k in layer.kernel_size)
            return F.conv3d(x, w, padding=pad) * mask, mask
        reach = F.conv3d(mask, torch.ones((1, 1) + layer.kernel_size, dtype=torch.float64), stride=layer.stride,
                         padding=layer.padding)
        new_mask = (reach > 0).double()
        return F.conv3d(x, w, stride=layer.stride, padding=layer.padding) * new_mask, new_mask

    def norm(x, mask, bn):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if absolute:   # |(y - m) s + b| <= |y||s| + |m s| + |b|
            scale, shift = scale.abs(), (bn.running_mean * scale).abs() + bn.bias.abs()
        return (x * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)) * mask

    relu = (lambda t: t) if absolute else torch.relu

    def conv_norm_act(x, mask, seq):
        x, mask = conv(x, mask, seq[0])
        return relu(norm(x, mask, seq[1])), mask

    x, mask = conv_norm_act(x, mask, encoder.conv_input)
    for stage in encoder.encoder_layers:
        for block in stage:
            if hasattr(block, 'conv1'):
                identity = x
                y, _ = conv(x, mask, block.conv1)
                y = relu(norm(y, mask, block.bn1))
                y, _ = conv(y, mask, block.conv2)
                x = relu(norm(y, mask, block.bn2) + identity)
            else:
                x, mask = conv_norm_act(x, mask, block)
    x, mask = conv_norm_act(x, mask, encoder.conv_out)
    b, ch, d, h, w = x.shape
    return x.reshape(b, ch * d, h, w)


def random_voxels(num, sparse_shape, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    # z = 40 (SECOND's extra layer) stays empty
    below_top = (batch_size, sparse_shape[0] - 1) + tuple(sparse_shape[1:])
    occ = torch.zeros(int(np.prod(below_top)), dtype=torch.bool)
    occ[torch.randperm(occ.numel(), generator=g)[:num]] = True
    coords = torch.nonzero(occ.view(below_top))
    return torch.randn(coords.shape[0], 5, generator=g, dtype=torch.float64), coords.int()


def test_sparse_encoder_equals_its_dense_emulation():
    torch.manual_seed(2)
    encoder = MODELS.build(SMALL_ENCODER).double().eval()
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    feats, coords = random_voxels(300, SMALL_ENCODER['sparse_shape'], 2, seed=3)
    with torch.no_grad():
        got = encoder(feats, coords, 2)
        want = dense_emulation(encoder, feats, coords, 2)
        magnitude = dense_emulation(encoder, feats, coords, 2, absolute=True)
    assert got.shape == (2, 3 * 2, 2, 2)                   # z: 41 -> 21 -> 11 -> 5 -> 2, y and x: 16 -> 2
    # every conv output sums K * C_in float64 terms and BatchNorm adds a few operations: the errors of all
    # layers, carried on by the later layers' |weights|, stay within (sum of K * C_in + 4 per layer) eps of the
    # output of the same chain on magnitudes
    terms = sum(m.weight[0].numel() + 4 for m in encoder.modules() if hasattr(m, 'kernel_size'))
    torch.testing.assert_close(got, want, rtol=0, atol=terms * EPS64 * magnitude.max().item())
    assert (want != 0).any()


def test_small_branch_end_to_end_and_gradients():
    torch.manual_seed(4)
    branch = LidarBranch(**SMALL_LIDAR)
    g = torch.Generator().manual_seed(5)
    points = [torch.cat([torch.rand(200, 3, generator=g) * torch.tensor([8.0, 8.0, 6.0]) - torch.tensor([4, 4, 1]),
                         torch.rand(200, 2, generator=g)], dim=1),
              torch.zeros(0, 5)]                         # a sample without points still gets its map
    out = branch(points)
    assert out.shape == (2, 4, 2, 2) and torch.isfinite(out).all()
    out.sum().backward()
    no_grad = [n for n, p in branch.named_parameters() if p.grad is None]
    assert no_grad == []
    voxels, num_points, coords = branch.voxelize(points)
    assert coords.shape[1] == 4 and (coords[:, 0] == 0).all() and voxels.shape[1:] == (4, 5)
    with pytest.raises(ValueError, match=r'points of sample 0 must be \[N, >= 5\]'):
        branch.voxelize([torch.zeros(3, 4)])


def test_full_size_encoder_maps_x_to_columns_and_y_to_rows():
    """A few hundred points in the corner x in (30, 38), y in (-38, -30): the encoder's 200 x 200 output sites lie
    in columns x / 8 of those voxels (x = 1400..1559 of 1600 -> 175..194) and rows y / 8 (y = 40..199 -> 5..24)."""
    g = torch.Generator().manual_seed(6)
    xyz = torch.rand(300, 3, generator=g) * torch.tensor([8.0, 8.0, 4.0]) + torch.tensor([30.0, -38.0, -0.5])
    points = torch.cat([xyz, torch.rand(300, 2, generator=g)], dim=1)
    torch.manual_seed(7)
    branch = LidarBranch(**AUTHORS_LIDAR).eval()
    encoder = branch.pts_middle_encoder
    with torch.no_grad():
        voxels, coords, num = compact_voxels(*branch.pts_voxel_layer(points))
        feats = branch.pts_voxel_encoder(voxels, num)
        coords4 = torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1)
        bev = encoder(feats, coords4, 1)
        x = encoder.conv_input(SparseTensor(feats, coords4, encoder.sparse_shape, 1))
        for stage in encoder.encoder_layers:
            x = stage(x)
        out = encoder.conv_out(x)
    assert bev.shape == (1, 256, 200, 200) and out.spatial_shape == (2, 200, 200)
    assert torch.equal(bev, out.dense().view(1, 256, 200, 200))
    # each strided conv (kernel 3, stride 2, padding 1) reaches one cell either side: at most 1 + 1/2 + 1/4 cells
    # beyond the voxels' own cell y // 8, x // 8
    y, x_ = coords[:, 1], coords[:, 2]
    rows, cols = out.coords[:, 2], out.coords[:, 3]
    assert rows.min() >= y.min() // 8 - 1 and rows.max() <= y.max() // 8 + 1
    assert cols.min() >= x_.min() // 8 - 1 and cols.max() <= x_.max() // 8 + 1
    assert 174 <= cols.min() and cols.max() <= 196 and 4 <= rows.min() and rows.max() <= 26
