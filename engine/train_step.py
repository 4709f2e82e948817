"""The training step without host synchronisation (the fast training path).

The faithful step (mmcv's OptimizerHook / Fp16OptimizerHook with the NaN guard) reads device values
every iteration: each loss term for the log (`.item()` in mmdet's `_parse_losses`), the finiteness of
the loss for the NaN guard, the gradient norm for the log, and the loss scaler's overflow flag. Each
read stalls the host until the GPU has caught up, so the host cannot queue the next kernels early.
This module computes the same update with every such value kept on the device:

* `parse_losses_lazy` (accel/accelerate.py; the model's train_step under a policy with `lazy_logs`): the total
  loss as mmdet sums it (dict order), log values as detached tensors;
* `LazyLogBuffer`: mmcv's LogBuffer that accepts tensors and reads them once per log interval;
* `SyncFreeOptimizerHook`: zero grad, scaled backward, unscale, clip (norm on the device), and a
  fused AdamW step that skips a non-finite step *on the device* (the fused kernel reads the
  scaler's found-inf flag); consecutive skipped steps are counted on the device and checked every
  `check_interval` iterations, so a diverged run still stops with the NaN guard's message.

Same function as the faithful step: the same loss, gradients, clipping and AdamW update with the
same per-parameter lr multipliers (the fused kernel evaluates AdamW's formula in another order, so
weights agree to float32 rounding, not bitwise), the same static loss scale for fp16; a step whose
gradients are not finite is skipped in both.
"""
import inspect

import numpy as np
import torch
from mmcv.runner import HOOKS, Hook
from mmcv.runner.log_buffer import LogBuffer

from accel.accelerate import parse_losses_lazy

__all__ = ['parse_losses_lazy', 'LazyLogBuffer', 'SyncFreeOptimizerHook', 'SyncFreeStep', 'merge_param_groups',
           'regroup_optimizer_state']


def _hyper(group):
    return {k: v for k, v in group.items() if k != 'params'}


def merge_param_groups(optimizer):
    """The same optimizer with each run of consecutive parameter groups of equal hyperparameters merged.

    mmcv's optimizer constructor gives every parameter its own group when `paramwise_cfg` is set (the
    lr multipliers): 464 groups for OPS-T, 15 after merging. A fused or foreach step runs once per
    group: hundreds of kernel launches and as many Python iterations per step (a foreach AdamW step of OPS-T's
    per-parameter groups spanned 92.5 ms of an H100's timeline, docs/performance.md, "Known limits"). AdamW updates
    each parameter from its own state and its group's hyperparameters only, elementwise, so merging groups with equal
    hyperparameters computes the same update, bit for bit (tests/engine/test_train_step.py). train.py merges in every
    mode. Only consecutive groups merge, so the parameters keep their order (the
    optimizer state's indices; `regroup_optimizer_state` converts a state saved with other groups).
    Returns a new optimizer of the same class (no state yet: call it before the first step).
    """
    if optimizer.state:
        raise ValueError('merge_param_groups: the optimizer already has state; merge before the first step')
    merged = []
    for group in optimizer.param_groups:
        if merged and _hyper(merged[-1]) == _hyper(group):
            merged[-1]['params'].extend(group['params'])
        else:
            merged.append(dict(group, params=list(group['params'])))
    accepted = inspect.signature(type(optimizer)).parameters
    return type(optimizer)(merged, **{k: v for k, v in optimizer.defaults.items() if k in accepted})


def regroup_optimizer_state(saved, optimizer):
    """An optimizer state dict saved with other parameter groups, for `optimizer`'s groups.

    Both must hold the same parameters in the same order (what `merge_param_groups` keeps); each new
    group takes the hyperparameters (lr as scheduled, initial_lr, ...) of the saved group of its first
    parameter. A state dict with the optimizer's own grouping is returned unchanged.
    """
    current = optimizer.state_dict()['param_groups']
    if [len(g['params']) for g in saved['param_groups']] == [len(g['params']) for g in current]:
        return saved
    order = [i for g in saved['param_groups'] for i in g['params']]
    total = sum(len(g['params']) for g in current)
    if len(order) != total:
        raise ValueError(f'the saved optimizer state holds {len(order)} parameters, this model has {total}: '
                         f'the checkpoint is from another model; resume it with the same config')
    owner = {i: g for g in saved['param_groups'] for i in g['params']}
    groups, start = [], 0
    for group in current:
        ids = order[start:start + len(group['params'])]
        groups.append(dict(_hyper(owner[ids[0]]), params=ids))
        start += len(ids)
    return dict(saved, param_groups=groups)


class LazyLogBuffer(LogBuffer):
    """mmcv's LogBuffer whose values may be device tensors: they are read when averaged (log interval)."""

    def average(self, n=0):
        assert n >= 0
        for key in self.val_history:
            recent = self.val_history[key][-n:]
            tensors = [v for v in recent if isinstance(v, torch.Tensor)]
            if tensors:
                host = iter(torch.stack([t.detach().double().reshape(()) for t in tensors]).cpu().tolist())
                recent = [next(host) if isinstance(v, torch.Tensor) else v for v in recent]
            values = np.array(recent, dtype=np.float64)
            nums = np.array(self.n_history[key][-n:])
            self.output[key] = float(np.sum(values * nums) / np.sum(nums))
        self.ready = True


class SyncFreeStep:
    """backward + clip + optimizer step of one iteration, all on the device.

    Args:
        optimizer: a torch optimizer with a fused implementation (`AdamW(fused=True)`), which skips
            the update on the device when the scaler found non-finite gradients.
        grad_clip (dict | None): `max_norm` (and `norm_type`), as mmcv's OptimizerHook takes it.
        loss_scale (float): static loss scale (512 for the fp16 backbone; 1 for bf16/fp32, where the
            scaler only detects non-finite gradients).
    """

    def __init__(self, optimizer, grad_clip=None, loss_scale=1.0):
        if not optimizer.defaults.get('fused'):
            raise ValueError('the sync-free training step needs a fused optimizer: set optimizer.fused=True '
                             '(torch AdamW(fused=True)); without it every step would read the overflow flag')
        self.optimizer = optimizer
        self.grad_clip = dict(grad_clip) if grad_clip else None
        self.loss_scale = float(loss_scale)
        device = optimizer.param_groups[0]['params'][0].device.type
        self.scaler = torch.amp.GradScaler(device, init_scale=self.loss_scale)
        # static scale: update() is always given the same value
        self.skipped = None          # device counters, created at the first step:
        self.consecutive = None      # skipped steps in total, the current run of skipped steps,
        self.longest = None          # and the longest run since the last check

    def params(self):
        return [p for group in self.optimizer.param_groups for p in group['params']
                if p.requires_grad and p.grad is not None]

    def __call__(self, loss):
        """Returns the gradient norm (device tensor; inf/nan when the step was skipped) or None."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params(), foreach=True, **self.grad_clip)
        found_inf = sum(self.scaler._found_inf_per_device(self.optimizer).values()).float()
        self.scaler.step(self.optimizer)
        self.scaler.update(self.loss_scale)
        if self.skipped is None:
            self.skipped, self.consecutive, self.longest = torch.zeros(3, device=found_inf.device).unbind(0)
        self.skipped = self.skipped + found_inf
        self.consecutive = (self.consecutive + 1) * found_inf
        self.longest = torch.maximum(self.longest, self.consecutive)
        return grad_norm

    def read_counters(self):
        """(skipped steps in total, longest run of skipped steps since the last read): one host read."""
        if self.skipped is None:
            return 0, 0
        skipped, longest = (int(v) for v in torch.stack([self.skipped, self.longest]).tolist())
        self.longest = torch.zeros_like(self.longest)   # a run still going on keeps counting in `consecutive`
        return skipped, longest


@HOOKS.register_module()
class SyncFreeOptimizerHook(Hook):
    """The fast training path's optimizer hook (see the module docstring).

    Args:
        grad_clip (dict | None): as mmcv's OptimizerHook (`max_norm=35, norm_type=2`).
        fp16 (bool): the backbone runs under fp16 autocast (mmcv's wrap_fp16_model, as the fp16 hook).
        loss_scale (float): static loss scale; 512 with the fp16 backbone, 1 otherwise.
        max_consecutive_nan_steps (int): stop after this many skipped steps in a row.
        check_interval (int): iterations between reads of the skip counters.
    """

    def __init__(self, grad_clip=None, fp16=False, loss_scale=1.0, max_consecutive_nan_steps=5, check_interval=50):
        self.grad_clip = grad_clip
        self.fp16 = fp16
        self.loss_scale = loss_scale
        self.max_consecutive_nan_steps = max_consecutive_nan_steps
        self.check_interval = check_interval
        self.step = None
        self.reported = 0

    def before_run(self, runner):
        if self.fp16:
            from mmcv.runner import wrap_fp16_model
            wrap_fp16_model(runner.model)
        self.step = SyncFreeStep(runner.optimizer, self.grad_clip, self.loss_scale)
        if not isinstance(runner.log_buffer, LazyLogBuffer):
            runner.log_buffer = LazyLogBuffer()

    def after_train_iter(self, runner):
        grad_norm = self.step(runner.outputs['loss'])
        if grad_norm is not None:
            runner.log_buffer.update({'grad_norm': grad_norm.detach()}, runner.outputs['num_samples'])
        if self.every_n_iters(runner, self.check_interval) or self.is_last_iter(runner):
            self.check(runner)

    def check(self, runner):
        skipped, longest = self.step.read_counters()
        if skipped > self.reported:
            runner.logger.warning(f'{skipped - self.reported} optimizer step(s) skipped since the last check '
                                  f'(non-finite gradients; {skipped} in total)')
            self.reported = skipped
        if longest >= self.max_consecutive_nan_steps:
            raise FloatingPointError(
                f'training stopped: {longest} consecutive iterations with non-finite gradients before '
                f'iteration {runner.iter + 1}. The run has diverged: lower the learning rate, check the data, '
                f'or resume from the last checkpoint in {runner.work_dir}.')
