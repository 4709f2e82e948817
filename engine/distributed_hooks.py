"""Runner hooks for training on any number of processes (docs/distributed.md).

* `SampleSeedHook`: hands the per-sample seeds of the batch (loaders/samplers.py) to the model's
  photometric distortion, so its random draws belong to the sample, not to the rank;
* `NanGuardGradientCumulativeOptimizerHook`, `NanGuardGradientCumulativeFp16OptimizerHook`: mmcv's
  gradient accumulation (GradientCumulativeOptimizerHook / GradientCumulativeFp16OptimizerHook) with
  the NaN guard of engine/runner.py; a non-finite loss drops the gradients accumulated so far in the
  current step;
* `CollectiveDistEvalHook`: mmdet's DistEvalHook, but the results of the ranks are gathered through
  the process group (engine.inference), not through a folder that every node would have to see.
"""
import numpy as np
from mmcv.runner import HOOKS, Hook
from mmcv.runner.hooks.optimizer import GradientCumulativeFp16OptimizerHook, GradientCumulativeOptimizerHook
from mmdet.core import DistEvalHook

from engine.runner import NanGuardMixin
from loaders.samplers import batch_sample_seeds

__all__ = ['SampleSeedHook', 'NanGuardGradientCumulativeOptimizerHook',
           'NanGuardGradientCumulativeFp16OptimizerHook', 'CollectiveDistEvalHook', 'photometric_seed',
           'unwrap_model']


def unwrap_model(model):
    """The detector inside (nested) DataParallel / DDP wrappers."""
    while hasattr(model, 'module'):
        model = model.module
    return model


def photometric_seed(sample_seed):
    """The seed of a sample's photometric draws, derived from (not equal to) its pipeline seed."""
    return int(np.random.SeedSequence([int(sample_seed), 1]).generate_state(1)[0])


@HOOKS.register_module()
class SampleSeedHook(Hook):
    """Before every training iteration: photometric draws from per-sample RNGs (seeds from img_metas).

    Without seeds in the batch (a loader without SampleSeededDataset) the distortion keeps numpy's
    global RNG. After the iteration the distortion goes back to the global RNG.
    """

    def _color_aug(self, runner):
        aug = getattr(unwrap_model(runner.model), 'color_aug', None)
        return aug if hasattr(aug, 'set_sample_seeds') else None

    def before_train_iter(self, runner):
        aug = self._color_aug(runner)
        if aug is not None:
            seeds = batch_sample_seeds(getattr(runner, 'data_batch', None))
            aug.set_sample_seeds(None if seeds is None else [photometric_seed(s) for s in seeds])

    def after_train_iter(self, runner):
        aug = self._color_aug(runner)
        if aug is not None:
            aug.set_sample_seeds(None)


@HOOKS.register_module()
class NanGuardGradientCumulativeOptimizerHook(NanGuardMixin, GradientCumulativeOptimizerHook):
    """fp32 accumulation over `cumulative_iters` iterations (loss / cumulative_iters, one step) with the NaN guard."""

    def __init__(self, cumulative_iters=1, grad_clip=None, max_consecutive_nan_steps=5, **kwargs):
        super().__init__(cumulative_iters=cumulative_iters, grad_clip=grad_clip, **kwargs)
        self._init_nan_guard(max_consecutive_nan_steps)


@HOOKS.register_module()
class NanGuardGradientCumulativeFp16OptimizerHook(NanGuardMixin, GradientCumulativeFp16OptimizerHook):
    """mmcv's fp16 accumulation (GradScaler; static scale when `loss_scale` is a number) with the NaN guard."""

    def __init__(self, cumulative_iters=1, grad_clip=None, loss_scale=512.0, max_consecutive_nan_steps=5, **kwargs):
        super().__init__(cumulative_iters=cumulative_iters, grad_clip=grad_clip, loss_scale=loss_scale, **kwargs)
        self._init_nan_guard(max_consecutive_nan_steps)


@HOOKS.register_module()
class CollectiveDistEvalHook(DistEvalHook):
    """mmdet's DistEvalHook with OPS's inference loop and the results gathered through collectives.

    Every rank runs its share (mmdet's DistributedSampler, shuffle=False), the lists travel to rank 0
    with torch.distributed (engine.inference.collect_results) and rank 0 evaluates: nothing is written
    to `tmpdir`, so the nodes need no shared filesystem.
    """

    def _do_evaluate(self, runner):
        if self.broadcast_bn_buffer:  # as mmdet's hook: every rank evaluates rank 0's BatchNorm statistics
            import torch.distributed as dist
            from torch.nn.modules.batchnorm import _BatchNorm
            for module in runner.model.modules():
                if isinstance(module, _BatchNorm) and module.track_running_stats:
                    dist.broadcast(module.running_var, 0)
                    dist.broadcast(module.running_mean, 0)
        if not self._should_evaluate(runner):
            return
        from engine.inference import inference
        model = unwrap_model(runner.model)
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            world_size = getattr(runner, 'world_size', 1)
            results = inference(model, self.dataloader, self.dataloader.dataset, device, runner.rank, world_size)
        finally:
            model.train(was_training)
        self.latest_results = results
        if runner.rank == 0:
            runner.log_buffer.output['eval_iter_num'] = len(self.dataloader)
            key_score = self.evaluate(runner, results)
            if self.save_best and key_score:
                self._save_ckpt(runner, key_score)
