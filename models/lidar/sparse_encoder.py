"""The sparse 3D encoder of OPUS-Fusion's LiDAR branch: mmdet3d's `SparseEncoder` with `block_type='basicblock'`
(docs/method.md, "OPUS-Fusion: the LiDAR branch").

Voxel features `[V, C_in]` at voxel coordinates (b, z, y, x) of the grid `sparse_shape` = (Z + 1, Y, X) (SECOND's
convention: one empty layer above the voxel grid, 41 x 1600 x 1600) go through

* `conv_input`: submanifold 3x3x3 conv C_in -> 16, BatchNorm1d, ReLU;
* `encoder_layers.encoder_layer{i}`: per stage, basic blocks (two submanifold 3x3x3 convs with BN, a residual
  and ReLU) at the stage's width, and, except in the last stage, a strided 3x3x3 conv (stride 2, the stage's
  padding) with BN and ReLU to the next width;
* `conv_out`: a regular conv of kernel (3, 1, 1), stride (2, 1, 1), no padding, with BN and ReLU (z only);

then the active sites are scattered into a dense `[B, C, Z', Y', X']` grid and z is folded into the channels:
`[B, C * Z', Y', X']`, channel `c * Z' + z`. OPUS-Fusion: (41, 1600, 1600) -> (21, 800, 800) -> (11, 400, 400)
-> (5, 200, 200) -> (2, 200, 200), output `[B, 256, 200, 200]`.

Parameter names follow mmdet3d + spconv 2.x (the checkpoints'): `conv_input.0.weight` `[16, 3, 3, 3, C_in]`
(KRSC, kernel axes (z, y, x)), `conv_input.1.*` (BatchNorm1d), `encoder_layers.encoder_layer1.0.conv1.weight`,
`....bn1.*`, `....conv2.weight`, `....bn2.*`, `encoder_layers.encoder_layer1.2.0.weight` (the strided conv),
`conv_out.0.weight` `[128, 3, 1, 1, 128]`, ...; no conv has a bias.
"""
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmdet.models.builder import MODELS

from ..sparse_conv import SparseConvolution3d, SparseSequential, SparseTensor, SubMConvolution3d

__all__ = ['SparseBasicBlock', 'SparseEncoder']

DEFAULT_NORM = dict(type='BN1d', eps=1e-3, momentum=0.01)


def conv_norm_act(conv, channels, norm_cfg):
    """spconv's SparseSequential(conv, norm, ReLU), children 0, 1, 2 (mmdet3d's `make_sparse_convmodule`)."""
    return SparseSequential(conv, build_norm_layer(norm_cfg, channels)[1], nn.ReLU(inplace=True))


class SparseBasicBlock(nn.Module):
    """mmdet3d's `SparseBasicBlock`: relu(bn2(subm(relu(bn1(subm(x))))) + x), 3x3x3 submanifold convs without bias.

    Children named as mmdet's ResNet `BasicBlock`: `conv1`, `bn1`, `conv2`, `bn2`.
    """
    takes_sparse_tensor = True

    def __init__(self, channels, norm_cfg=DEFAULT_NORM):
        super().__init__()
        self.conv1 = SubMConvolution3d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, channels)[1]
        self.conv2 = SubMConvolution3d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = build_norm_layer(norm_cfg, channels)[1]
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        """SparseTensor `[U, C]` -> SparseTensor `[U, C]` on the same sites."""
        identity = x.features
        out = self.conv1(x)
        out = out.replace_features(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_features(self.relu(self.bn2(out.features) + identity))


@MODELS.register_module()
class SparseEncoder(nn.Module):
    """mmdet3d's `SparseEncoder` with basic blocks (module docstring).

    Args:
        in_channels (int): C_in of the voxel features (5).
        sparse_shape (sequence[3]): (Z + 1, Y, X) = (41, 1600, 1600).
        order (tuple): ('conv', 'norm', 'act') (the only order the configs use).
        norm_cfg (dict): BatchNorm1d, eps 1e-3, momentum 0.01 (mmdet3d's default, the configs keep it).
        base_channels (int): width of `conv_input` (16).
        output_channels (int): width of `conv_out` (128).
        encoder_channels (tuple[tuple[int]]): per stage, the width after each block; the last entry of every stage
            but the last is the strided conv's output ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)).
        encoder_paddings (tuple[tuple]): the strided convs' paddings at the same places (ints or 3-tuples; the
            entries of the basic blocks are unused, as in mmdet3d).
        block_type (str): 'basicblock' (mmdet3d's other type, 'conv_module', is not used by OPUS-Fusion).
    """

    def __init__(self, in_channels, sparse_shape, order=('conv', 'norm', 'act'), norm_cfg=DEFAULT_NORM,
                 base_channels=16, output_channels=128,
                 encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
                 encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, (0, 1, 1)), (0, 0)), block_type='basicblock'):
        super().__init__()
        if tuple(order) != ('conv', 'norm', 'act'):
            raise ValueError(f"SparseEncoder: order={order!r} is not supported; OPUS-Fusion uses ('conv', 'norm', "
                             f"'act')")
        if block_type != 'basicblock':
            raise ValueError(f"SparseEncoder: block_type={block_type!r} is not supported; OPUS-Fusion uses "
                             f"'basicblock'")
        if len(sparse_shape) != 3 or len(encoder_paddings) != len(encoder_channels):
            raise ValueError(f'SparseEncoder: sparse_shape must be (Z + 1, Y, X) and encoder_paddings match '
                             f'encoder_channels stage by stage, got {sparse_shape}, {encoder_paddings}')
        self.in_channels, self.sparse_shape = int(in_channels), tuple(int(s) for s in sparse_shape)
        self.output_channels = int(output_channels)
        self.conv_input = conv_norm_act(
            SubMConvolution3d(in_channels, base_channels, 3, padding=1, bias=False, indice_key='subm1'),
            base_channels, norm_cfg)
        self.encoder_layers = nn.Sequential()
        channels, last_stage = base_channels, len(encoder_channels) - 1
        for i, stage in enumerate(encoder_channels):
            blocks = []
            for j, width in enumerate(stage):
                if j == len(stage) - 1 and i != last_stage:
                    padding = encoder_paddings[i][j]
                    padding = tuple(padding) if isinstance(padding, (list, tuple)) else padding
                    blocks.append(conv_norm_act(
                        SparseConvolution3d(channels, width, 3, stride=2, padding=padding, bias=False,
                                            indice_key=f'spconv{i + 1}'), width, norm_cfg))
                else:
                    if width != channels:
                        # mmdet3d builds the block for `width` input channels and would fail at run time
                        raise ValueError(f'SparseEncoder: basic block {j} of stage {i + 1} gets {channels} channels '
                                         f'but is {width} wide; a stage changes width only in its last (strided) '
                                         f'conv')
                    blocks.append(SparseBasicBlock(width, norm_cfg))
                channels = width
            self.encoder_layers.add_module(f'encoder_layer{i + 1}', SparseSequential(*blocks))
        self.conv_out = conv_norm_act(
            SparseConvolution3d(channels, output_channels, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
                                indice_key='spconv_down2'), output_channels, norm_cfg)

    def forward(self, voxel_features, coors, batch_size):
        """
        Args:
            voxel_features (Tensor): `[V, C_in]`.
            coors (Tensor): int `[V, 4]` (b, z, y, x) in `sparse_shape`, unique.
            batch_size (int): B (the batch's sample count; mmdet3d reads it from the last voxel's b).
        Returns:
            Tensor: dense BEV features `[B, output_channels * Z', Y', X']`, channel `c * Z' + z`
            (OPUS-Fusion: `[B, 256, 200, 200]`), rows y, columns x.
        """
        if voxel_features.dim() != 2 or voxel_features.shape[1] != self.in_channels:
            raise ValueError(f'SparseEncoder: voxel features must be [V, {self.in_channels}], got '
                             f'{tuple(voxel_features.shape)}')
        x = self.conv_input(SparseTensor(voxel_features, coors, self.sparse_shape, batch_size))
        for stage in self.encoder_layers:
            x = stage(x)
        dense = self.conv_out(x).dense()                                     # [B, C, Z', Y', X']
        b, c, d, h, w = dense.shape
        return dense.view(b, c * d, h, w)
