"""`accelerate(model, policy)`: apply an execution policy to a built detector, in place.

What it does, in this order (each step only where the policy asks for it):
1. gradient checkpointing off in the backbone and the decoder (`checkpointing=False`), and in the decoder
   when its training step is graphed (a graph keeps the activations anyway);
2. the kernels: every module whose type is a key of the policy's table (`KERNEL_TABLES[policy.kernels]`,
   the fused or the fast modules) becomes its subclass there;
3. matrix-product precision scopes on the decoder layers' children named by the policy's table;
4. the detector becomes its accelerated subclass (`AcceleratedDetector` before its own class): the
   backbone's autocast dtypes and memory format, the decoder's precision scope, the CUDA graphs of the
   device entry points (`online_step`, `offline_step`, `train_decoder`), lazy log values.
The weights, their names and the module tree are unchanged (checkpoints load and save as before).
"""
import functools
from collections import OrderedDict

import torch
import torch.distributed as dist

from .cuda_graph import GraphedFunction, GraphedTrainingFunction
from .modules import KERNEL_TABLES, precision_scoped
from .policy import AUTOCAST_DTYPES, ExecutionPolicy
from .precision import matmul_precision

__all__ = ['accelerate', 'AcceleratedDetector', 'parse_losses_lazy']

_LAYER_PART = 'decoder_layer.'
_CPD_PART = 'cpd'


def parse_losses_lazy(losses):
    """mmdet's `_parse_losses` without `.item()`: (total loss, OrderedDict of detached 0-d tensors).

    The total is the sum of the entries whose key contains 'loss', in dict order (float32 sums
    depend on it), as mmdet computes it. Across processes the logged values are averaged with one
    all-reduce (no host read).
    """
    log_vars = OrderedDict()
    for name, value in losses.items():
        if isinstance(value, torch.Tensor):
            log_vars[name] = value.mean()
        elif isinstance(value, (list, tuple)):
            log_vars[name] = sum(v.mean() for v in value)
        else:
            raise TypeError(f'{name} is not a tensor or list of tensors')
    loss = sum(v for k, v in log_vars.items() if 'loss' in k)
    log_vars['loss'] = loss
    values = torch.stack([v.detach().float() for v in log_vars.values()])
    if dist.is_available() and dist.is_initialized():
        values = values / dist.get_world_size()
        dist.all_reduce(values)
    return loss, OrderedDict(zip(log_vars, values.unbind(0)))


class AcceleratedDetector:
    """Mixin placed before an OPS-family detector's class by `accelerate`: runs it as `self.execution` says.

    The graphed callables (`self.graphed_steps`) wrap the faithful class's own entry points, which call back
    into this class's overrides (autocast dtype, memory format, precision), so a graph records the
    accelerated step.
    """
    execution: ExecutionPolicy

    def train_amp_dtype(self):
        if self.execution.train_autocast == 'bf16':
            return torch.bfloat16                  # no loss scaling needed, with or without the fp16 hook
        return super().train_amp_dtype()

    def test_amp_dtype(self, online):
        return AUTOCAST_DTYPES[self.execution.online_autocast if online else self.execution.offline_autocast]

    def extract_img_feat(self, img, amp_dtype=None):
        if self.execution.channels_last and img.is_cuda:
            # NHWC: cuDNN's own layout for fp16/bf16 convolutions (the NCHW path transposes around each one)
            img = img.contiguous(memory_format=torch.channels_last)
        return super().extract_img_feat(img, amp_dtype)

    def online_step(self, *tensors, **static):
        return self.graphed_steps['online_step'](*tensors, **static)

    def offline_step(self, *tensors, **static):
        return self.graphed_steps['offline_step'](*tensors, **static)

    def decode(self, feats, occ2img, *extra, image_h, image_w):
        with _precision(self, 'test', occ2img):
            return super().decode(feats, occ2img, *extra, image_h=image_h, image_w=image_w)

    def train_decoder(self, *tensors, image_h, image_w):
        with _precision(self, 'train', tensors[-1]):
            return self.graphed_steps['train_decoder'](*tensors, image_h=image_h, image_w=image_w)

    def train_step(self, data, optimizer):
        if not self.execution.lazy_logs:
            return super().train_step(data, optimizer)
        loss, log_vars = parse_losses_lazy(self(**data))
        return dict(loss=loss, log_vars=log_vars, num_samples=len(data['img_metas']))


def _precision(model, phase, tensor):
    """The decoder's precision scope of `phase` (on CUDA tensors: TF32 means nothing elsewhere)."""
    return matmul_precision(model.execution.matmul_precision(phase, 'decoder') if tensor.is_cuda else None)


_ACCELERATED = {}


def _accelerated_class(cls):
    if cls not in _ACCELERATED:
        _ACCELERATED[cls] = type(f'Accelerated{cls.__name__}', (AcceleratedDetector, cls),
                                 {'__module__': __name__, '__doc__': f'`{cls.__name__}` run by an execution policy.'})
    return _ACCELERATED[cls]


def accelerate(model, policy):
    """Apply `policy` (an `ExecutionPolicy`) to `model`, an unwrapped OPS-family detector; returns it.

    A model is accelerated once (the swapped modules cannot be swapped back): build a new one for another
    policy.
    """
    if not isinstance(policy, ExecutionPolicy):
        raise TypeError(f'accelerate needs an ExecutionPolicy (accel/policy.py), got {type(policy).__name__}')
    if isinstance(model, AcceleratedDetector):
        raise ValueError(f'{type(model).__name__} is already accelerated ({model.execution.describe()}); build '
                         f'the model again for another policy')
    layers = model.pts_bbox_head.transformer.decoder.decoder_layers
    graph_training = policy.train_cuda_graph and 'train_decoder' in model.GRAPH_CAPTURABLE
    if not policy.checkpointing:
        for module in model.img_backbone.modules():
            if hasattr(module, 'with_cp'):
                module.with_cp = False
    if not policy.checkpointing or graph_training:
        for layer in layers:
            layer.with_cp = False

    table = KERNEL_TABLES[policy.kernels]
    for module in model.modules():
        swapped = table.get(type(module))
        if swapped is not None:
            module.__class__ = swapped

    scopes, cpd_scope = {}, {}
    for (phase, part), precision in policy.precision_table.items():
        if part.startswith(_LAYER_PART):
            scopes.setdefault(part[len(_LAYER_PART):], {})[phase] = precision
        elif part == _CPD_PART:
            cpd_scope[phase] = precision
    for layer in layers:
        for child, precisions in scopes.items():
            if not hasattr(layer, child):
                raise ValueError(f'precision table {policy.precision!r}: decoder layer {type(layer).__name__} has '
                                 f'no child {child!r} (accel/precision.py)')
            precision_scoped(getattr(layer, child), precisions)
    if cpd_scope:
        for densifier in getattr(model.pts_bbox_head, 'densifiers', ()):   # OPUS-V2's CPD modules; V1 has none
            precision_scoped(densifier, cpd_scope)

    faithful = type(model)
    model.__class__ = _accelerated_class(faithful)
    model.execution = policy
    # a swapped head may make the test step static (OPUS-V2's dense CPD module, accel/dense_cpd.py)
    test_graphs = policy.test_cuda_graph and (model.TEST_STEPS <= model.GRAPH_CAPTURABLE
                                              or getattr(model.pts_bbox_head, 'static_test_step', False))
    steps = {name: functools.partial(getattr(faithful, name), model)
             for name in ('online_step', 'offline_step', 'train_decoder')}
    model.graphed_steps = dict(
        online_step=GraphedFunction(steps['online_step']) if test_graphs else steps['online_step'],
        offline_step=GraphedFunction(steps['offline_step']) if test_graphs else steps['offline_step'],
        train_decoder=GraphedTrainingFunction(model.pts_bbox_head, steps['train_decoder']) if graph_training
        else steps['train_decoder'])
    return model
