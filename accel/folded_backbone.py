"""mmdet's ResNet with its batch norms folded into the convolutions wherever they run in eval mode (a fast module).

In eval a batch norm is an affine map per channel, y = (x - mean) / sqrt(var + eps) * gamma + beta, so a
convolution followed by it is one convolution: weight W * s, bias beta - mean * s (plus b * s for a conv bias),
s = gamma / sqrt(var + eps) per output channel. On a GPU the norms are separate passes over the backbone's
largest activations, forward and backward; folded, they cost nothing (a few small kernels on the weights).

When the folds are used: wherever a block's norms are in eval mode, which the configs' `norm_eval=True` keeps them
in while the backbone trains too (gamma and beta train, the running statistics stay fixed); a norm in training
mode normalises by the batch's own statistics, and its block runs the faithful forward.
* In eval, without a gradient asked of a folded parameter: the folds of the buffers below, computed in float64
  and rounded once to the weights' dtype; under fp16 autocast the folded conv runs in fp16 as the faithful conv did.
* In training (or eval with such a gradient asked): folded at every forward from the current weights, in their
  dtype, inside autograd: the gradients reach W (s times the folded weight's), gamma and beta. Other float32
  roundings than the conv then the norm (the fast preset's arithmetic, not the faithful one); under fp16 autocast
  the folded weights are rounded to fp16 where the faithful conv rounds W.

Where they live: non-persistent buffers of the block that owns the conv (`conv1_folded_weight`,
`conv1_folded_bias`, ..., `downsample_folded_weight`; the stem's on the ResNet): not in the state dict
(checkpoints load and save as before), allocated once and rewritten in place, so a CUDA graph captured over
the test step keeps reading them and sees the current weights. They are rewritten whenever the backbone
enters eval mode (`eval()`, `train(False)`), after `load_state_dict` (a post hook) and after `to()`, `cuda()`,
`double()`. Weights changed in place by any other means while the backbone stays in eval mode (mmcv's
`load_checkpoint`, which bypasses the post hooks; a hand edit of `.data`) need `backbone.eval()` again.

Folded: the stem's conv1 + norm1 (not `deep_stem`), each `Bottleneck` (conv1-3 + norm1-3) and `BasicBlock`
(conv1-2 + norm1-2), and their downsample `Sequential([AvgPool2d,] conv, norm)`. A block with DCN or
plugins, a conv other than `nn.Conv2d` (`conv_cfg`) or a norm other than a batch norm with running
statistics keeps its faithful forward (the rest of the backbone still folds).
"""
from itertools import chain

import torch
import torch.utils.checkpoint as cp
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

__all__ = ['fold_conv_norm', 'BatchNormFolding', 'FoldedResNet', 'FoldedBottleneck', 'FoldedBasicBlock',
           'unfold_batch_norms']

_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def fold_conv_norm(conv, norm, dtype=torch.float64):
    """The convolution equal to `norm(conv(x))` with the norm in eval mode, computed in `dtype` (differentiable in
    the conv's weight and bias and the norm's gamma and beta; the running statistics are constants).

    Args:
        conv (nn.Conv2d): weight [C_out, C_in / groups, kh, kw], optional bias [C_out].
        norm (nn.BatchNorm2d): running_mean, running_var [C_out]; weight (gamma), bias (beta) [C_out] if affine.
        dtype: float64 for the buffered folds (rounded once to the weights' dtype), the weights' own for the folds
            computed at every training forward.
    Returns:
        (weight [C_out, C_in / groups, kh, kw], bias [C_out]) in `dtype` on the weights' device.
    """
    scale = torch.rsqrt(norm.running_var.to(dtype) + norm.eps)                                  # [C_out]
    shift = -norm.running_mean.to(dtype) * scale
    if norm.affine:
        scale = scale * norm.weight.to(dtype)
        shift = shift * norm.weight.to(dtype) + norm.bias.to(dtype)
    if conv.bias is not None:
        shift = shift + conv.bias.to(dtype) * scale
    return conv.weight.to(dtype) * scale.view(-1, 1, 1, 1), shift


def _foldable(conv, norm):
    """Whether `norm(conv(x))` in eval is one convolution this module can run: a plain conv, a batch norm with
    running statistics (without them eval normalises by the batch's own)."""
    return type(conv) is nn.Conv2d and type(norm) in _BATCH_NORMS and norm.running_mean is not None


def _with_downsample(pairs, downsample):
    """`pairs` ({name: (conv, norm)}) and the downsample's pair, or None where either is not foldable."""
    if downsample is not None:
        parts = list(downsample) if type(downsample) is nn.Sequential else []
        if len(parts) < 2 or not all(type(m) is nn.AvgPool2d for m in parts[:-2]):
            return None
        pairs = dict(pairs, downsample=(parts[-2], parts[-1]))
    return pairs if all(_foldable(conv, norm) for conv, norm in pairs.values()) else None


def _refresh_after_load(module, incompatible_keys):
    """load_state_dict post hook: the folds of the weights just loaded."""
    if module.folds_fresh:
        module.refresh_folds()


class BatchNormFolding:
    """Mixin of a module that owns conv + batch norm pairs (`conv_norm_pairs`) and, while folding, runs each pair
    as one convolution with the weights of `fold_conv_norm`: from its non-persistent buffers (`folds_fresh`, in
    eval) or computed from the current weights inside autograd (training).

    `fold_batch_norms`: None until the enclosing `FoldedResNet` decides (`set_folding`), then whether it can fold.
    `folds_fresh`: the buffers hold the folds of the current weights (set in eval, cleared by training).
    """
    fold_batch_norms = None
    folds_fresh = False

    def conv_norm_pairs(self):
        """{name: (conv, norm)} to fold, or None where the module's configuration is not supported."""
        raise NotImplementedError

    def set_folding(self, fresh):
        """Fold from now on where supported (else the faithful forward runs); `fresh`: refresh the buffers and read
        them while no gradient is asked of a folded parameter (eval), else fold the current weights at every
        forward (training, where the optimizer changes them)."""
        self.fold_batch_norms = self.conv_norm_pairs() is not None
        self.folds_fresh = self.fold_batch_norms and fresh
        if self.folds_fresh:
            self.refresh_folds()

    def refresh_folds(self):
        """Recompute the folded weights from the current ones, in place (their buffers keep their storage, as a
        captured CUDA graph needs); allocated on the first call, or again if the weights' shape, dtype or device
        changed."""
        # inference_mode(False): buffers made inside an inference-mode test step stay writable after it; it turns
        # autograd back on, so no_grad comes inside it
        with torch.inference_mode(False), torch.no_grad():
            for name, (conv, norm) in self.conv_norm_pairs().items():
                weight, bias = fold_conv_norm(conv, norm)
                target = getattr(self, f'{name}_folded_weight', None)
                source = conv.weight
                if target is None or (target.shape, target.dtype, target.device) != \
                        (source.shape, source.dtype, source.device):
                    # the conv's memory format too (channels-last weights stay channels-last)
                    self.register_buffer(f'{name}_folded_weight', torch.empty_like(source.detach()),
                                         persistent=False)
                    self.register_buffer(f'{name}_folded_bias', source.new_empty(source.shape[0]), persistent=False)
                    if not getattr(self, '_folds_follow_loads', False):
                        self.register_load_state_dict_post_hook(_refresh_after_load)
                        self._folds_follow_loads = True
                getattr(self, f'{name}_folded_weight').copy_(weight)
                getattr(self, f'{name}_folded_bias').copy_(bias)

    def current_folds(self):
        """This forward's folds, {name: (conv, weight, bias)}, or None for the faithful forward (folding off, or a
        norm in training mode, which normalises by the batch's own statistics).

        From the buffers while they are fresh and no gradient is asked of a folded parameter; otherwise folded now
        in the weights' dtype, inside autograd, so that the gradients reach the convs' weights and the norms' gamma
        and beta (the fold is differentiable: d/dW = s d/dW', and gamma, beta through s and the bias)."""
        if not self.fold_batch_norms:
            return None
        pairs = self.conv_norm_pairs()
        if any(norm.training for _, norm in pairs.values()):
            return None
        grad_asked = torch.is_grad_enabled() and any(
            p.requires_grad for conv, norm in pairs.values() for p in chain(conv.parameters(), norm.parameters()))
        if self.folds_fresh and not grad_asked:
            return {name: (conv, getattr(self, f'{name}_folded_weight'), getattr(self, f'{name}_folded_bias'))
                    for name, (conv, _) in pairs.items()}
        return {name: (conv, *fold_conv_norm(conv, norm, conv.weight.dtype)) for name, (conv, norm) in pairs.items()}

    @staticmethod
    def folded(folds, name, x):
        """The pair `name` of `folds` as one convolution (its conv's stride, padding, dilation, groups) of x
        [B, C_in, H, W]."""
        conv, weight, bias = folds[name]
        return conv._conv_forward(x, weight, bias)

    def folded_downsample(self, folds, x):
        """The block's downsample, its conv and norm folded: the shortcut [B, C_out, H', W'] of x."""
        *pools, _, _ = self.downsample
        for pool in pools:
            x = pool(x)
        return self.folded(folds, 'downsample', x)

    def folded_block(self, folds, x, residual):
        """The block's forward with `residual(x)` (the folded conv-ReLU chain before the sum) checkpointed as the
        faithful block is: only with `with_cp` and an input that asks for a gradient."""
        def inner(x):
            out = residual(x)
            out += x if self.downsample is None else self.folded_downsample(folds, x)
            return out
        out = cp.checkpoint(inner, x, use_reentrant=False) if self.with_cp and x.requires_grad else inner(x)
        return self.relu(out)

    def _apply(self, fn, *args, **kwargs):
        # to() / cuda() / double(): the folds recomputed from the converted weights (a dtype conversion of the
        # folds themselves would carry the old dtype's rounding)
        module = super()._apply(fn, *args, **kwargs)
        if self.folds_fresh:
            self.refresh_folds()
        return module


class FoldedBottleneck(BatchNormFolding, Bottleneck):
    """mmdet's `Bottleneck` with conv1-3 and the downsample folded with their norms while its ResNet is in eval."""

    def conv_norm_pairs(self):
        # mmdet gives every block of a ResNet with plugins the plugin lists, empty where its stage has none
        if self.with_dcn or (self.with_plugins and any(self.after_conv1_plugin_names + self.after_conv2_plugin_names +
                                                       self.after_conv3_plugin_names)):
            return None
        return _with_downsample(dict(conv1=(self.conv1, self.norm1), conv2=(self.conv2, self.norm2),
                                     conv3=(self.conv3, self.norm3)), self.downsample)

    def forward(self, x):
        folds = self.current_folds()
        if folds is None:
            return super().forward(x)

        def residual(x):
            out = self.relu(self.folded(folds, 'conv1', x))
            out = self.relu(self.folded(folds, 'conv2', out))
            return self.folded(folds, 'conv3', out)
        return self.folded_block(folds, x, residual)


class FoldedBasicBlock(BatchNormFolding, BasicBlock):
    """mmdet's `BasicBlock` with conv1-2 and the downsample folded with their norms while its ResNet is in eval."""

    def conv_norm_pairs(self):
        return _with_downsample(dict(conv1=(self.conv1, self.norm1), conv2=(self.conv2, self.norm2)),
                                self.downsample)

    def forward(self, x):
        folds = self.current_folds()
        if folds is None:
            return super().forward(x)

        def residual(x):
            return self.folded(folds, 'conv2', self.relu(self.folded(folds, 'conv1', x)))
        return self.folded_block(folds, x, residual)


class FoldedResNet(BatchNormFolding, ResNet):
    """mmdet's `ResNet` that folds its batch norms wherever they are in eval mode: its stem here, its blocks
    (`FoldedBottleneck`, `FoldedBasicBlock`) told by `train(mode)`."""

    def conv_norm_pairs(self):
        if self.deep_stem:
            return None
        return _with_downsample(dict(conv1=(self.conv1, self.norm1)), None)

    def train(self, mode=True):
        super().train(mode)
        self.fold_everywhere(fresh=not mode)
        return self

    def fold_everywhere(self, fresh):
        """`set_folding(fresh)` on the stem and every block."""
        for module in self.modules():
            if isinstance(module, BatchNormFolding):
                module.set_folding(fresh)

    def forward(self, x):
        """x [B, 3, H, W] -> the out_indices stages' features, as the faithful ResNet's."""
        if self.fold_batch_norms is None:                          # swapped in after its last train() / eval()
            self.fold_everywhere(fresh=not self.training)
        folds = self.current_folds()
        if folds is None:
            return super().forward(x)
        x = self.maxpool(self.relu(self.folded(folds, 'conv1', x)))
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


def unfold_batch_norms(module):
    """`module` (a backbone or a whole model) with the faithful class put back on every folding part: what the
    folds change, for comparisons. Returns it."""
    for part in module.modules():
        if isinstance(part, BatchNormFolding):
            part.__class__ = type(part).__bases__[-1]       # the mmdet class the folding one extends
    return module
