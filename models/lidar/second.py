"""The BEV backbone and neck of OPUS-Fusion's LiDAR branch: mmdet3d's `SECOND` and `SECONDFPN` (docs/method.md,
"OPUS-Fusion: the LiDAR branch").

OPUS-Fusion: the sparse encoder's `[B, 256, 200, 200]` -> SECOND (stage 0: stride 1, 128 channels; stage 1:
stride 2, 256 channels; each a strided 3x3 conv and 5 more 3x3 convs, all with BN and ReLU) ->
`[B, 128, 200, 200]`, `[B, 256, 100, 100]` -> SECONDFPN (a 1x1 conv and a 2x2 stride-2 transposed conv to 256
channels each, BN, ReLU, concatenated) -> `[B, 512, 200, 200]`.

Parameter names as mmdet3d's: `blocks.{i}.{3j}.weight` (convs), `blocks.{i}.{3j+1}.*` (BatchNorm2d);
`deblocks.{i}.0.weight`, `deblocks.{i}.1.*`.
"""
import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer, build_upsample_layer
from mmcv.runner import BaseModule
from mmdet.models.builder import MODELS

__all__ = ['SECOND', 'SECONDFPN']

DEFAULT_NORM = dict(type='BN', eps=1e-3, momentum=0.01)
DEFAULT_CONV = dict(type='Conv2d', bias=False)


@MODELS.register_module()
class SECOND(BaseModule):
    """Stages of 3x3 convs with BN and ReLU; stage i starts with a conv of stride `layer_strides[i]` (padding 1).

    Args:
        in_channels (int): 256 in OPUS-Fusion.
        out_channels (sequence[int]): per stage ([128, 256]).
        layer_nums (sequence[int]): extra stride-1 convs per stage ([5, 5]).
        layer_strides (sequence[int]): [1, 2].
        norm_cfg, conv_cfg (dict): BatchNorm2d eps 1e-3 momentum 0.01; Conv2d without bias.
        init_cfg: mmcv's; default Kaiming (fan_out, normal) on the convs, as mmdet3d.
    Forward: `[B, C_in, H, W]` -> tuple of `[B, out_channels[i], H / prod(strides[:i+1]), ...]`.
    """

    def __init__(self, in_channels=128, out_channels=(128, 128, 256), layer_nums=(3, 5, 5), layer_strides=(2, 2, 2),
                 norm_cfg=DEFAULT_NORM, conv_cfg=DEFAULT_CONV, init_cfg=dict(type='Kaiming', layer='Conv2d')):
        super().__init__(init_cfg=init_cfg)
        if not len(out_channels) == len(layer_nums) == len(layer_strides):
            raise ValueError(f'SECOND: out_channels, layer_nums and layer_strides need one entry per stage, got '
                             f'{out_channels}, {layer_nums}, {layer_strides}')
        inputs = [in_channels, *out_channels[:-1]]
        self.blocks = nn.ModuleList()
        for c_in, c_out, num, stride in zip(inputs, out_channels, layer_nums, layer_strides):
            layers = [build_conv_layer(conv_cfg, c_in, c_out, 3, stride=stride, padding=1),
                      build_norm_layer(norm_cfg, c_out)[1], nn.ReLU(inplace=True)]
            for _ in range(num):
                layers += [build_conv_layer(conv_cfg, c_out, c_out, 3, padding=1),
                           build_norm_layer(norm_cfg, c_out)[1], nn.ReLU(inplace=True)]
            self.blocks.append(nn.Sequential(*layers))

    def forward(self, x):
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return tuple(outs)


@MODELS.register_module()
class SECONDFPN(BaseModule):
    """Brings every SECOND stage to the first stage's resolution and concatenates them along the channels.

    Stage i: a transposed conv of kernel = stride = `upsample_strides[i]` when that is > 1 (or 1 without
    `use_conv_for_no_stride`), else a conv of kernel = stride = round(1 / s); then BN and ReLU.

    Args:
        in_channels, out_channels, upsample_strides (sequence): per stage ([128, 256], [256, 256], [1, 2]).
        norm_cfg (dict), upsample_cfg (dict: 'deconv' without bias), conv_cfg (dict: Conv2d without bias).
        use_conv_for_no_stride (bool): True in OPUS-Fusion (a 1x1 conv for stage 0).
        init_cfg: default Kaiming on the transposed convs, as mmdet3d.
    Forward: tuple of stage maps -> `[out]`, one `[B, sum(out_channels), H_0, W_0]` map (a list, as mmdet3d).
    """

    def __init__(self, in_channels=(128, 128, 256), out_channels=(256, 256, 256), upsample_strides=(1, 2, 4),
                 norm_cfg=DEFAULT_NORM, upsample_cfg=dict(type='deconv', bias=False), conv_cfg=DEFAULT_CONV,
                 use_conv_for_no_stride=False, init_cfg=dict(type='Kaiming', layer='ConvTranspose2d')):
        super().__init__(init_cfg=init_cfg)
        if not len(in_channels) == len(out_channels) == len(upsample_strides):
            raise ValueError(f'SECONDFPN: in_channels, out_channels and upsample_strides need one entry per stage, '
                             f'got {in_channels}, {out_channels}, {upsample_strides}')
        self.in_channels = list(in_channels)
        self.deblocks = nn.ModuleList()
        for c_in, c_out, stride in zip(in_channels, out_channels, upsample_strides):
            if stride > 1 or (stride == 1 and not use_conv_for_no_stride):
                layer = build_upsample_layer(upsample_cfg, in_channels=c_in, out_channels=c_out, kernel_size=stride,
                                             stride=stride)
            else:
                k = int(round(1 / stride))
                layer = build_conv_layer(conv_cfg, c_in, c_out, kernel_size=k, stride=k)
            self.deblocks.append(nn.Sequential(layer, build_norm_layer(norm_cfg, c_out)[1], nn.ReLU(inplace=True)))

    def forward(self, x):
        if len(x) != len(self.deblocks):
            raise ValueError(f'SECONDFPN: built for {len(self.deblocks)} stages, got {len(x)} maps')
        ups = [deblock(feat) for deblock, feat in zip(self.deblocks, x)]
        return [torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]]
