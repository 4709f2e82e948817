"""The training runner and hooks: atomic checkpoints, per-epoch seeding, NaN guard, progress bar.

mmcv's EpochBasedRunner is used as is, except that checkpoints are written to a temporary file
and renamed into place, so a kill during the write never leaves a truncated `latest.pth`.
"""
import glob
import os
import os.path as osp

import numpy as np
import torch
import torch.distributed as dist
from mmcv.runner import RUNNERS, EpochBasedRunner, Hook, HOOKS, OptimizerHook, Fp16OptimizerHook
from mmcv.runner import get_dist_info
from mmcv.runner.checkpoint import save_checkpoint
from tqdm import tqdm


def atomic_symlink(target_name, link_path):
    """Point `link_path` at `target_name` (relative), replacing any old link atomically."""
    tmp = f'{link_path}.tmp-{os.getpid()}'
    if osp.lexists(tmp):
        os.remove(tmp)
    os.symlink(target_name, tmp)
    os.replace(tmp, link_path)


@RUNNERS.register_module()
class AtomicEpochBasedRunner(EpochBasedRunner):
    """EpochBasedRunner whose checkpoints are written atomically (temporary file + rename)."""

    def save_checkpoint(self, out_dir, filename_tmpl='epoch_{}.pth', save_optimizer=True,
                        meta=None, create_symlink=True):
        meta = dict(meta or {})
        if self.meta is not None:
            meta.update(self.meta)
        meta.update(epoch=self.epoch + 1, iter=self.iter)
        filename = filename_tmpl.format(self.epoch + 1)
        filepath = osp.join(out_dir, filename)
        tmp_path = f'{filepath}.tmp-{os.getpid()}'
        save_checkpoint(self.model, tmp_path, optimizer=self.optimizer if save_optimizer else None, meta=meta)
        os.replace(tmp_path, filepath)
        if create_symlink:
            atomic_symlink(filename, osp.join(out_dir, 'latest.pth'))


def find_latest_checkpoint(work_dir):
    """Return the newest complete checkpoint in `work_dir` (latest.pth, else the highest epoch_N.pth)."""
    latest = osp.join(work_dir, 'latest.pth')
    if osp.exists(latest):
        return latest
    epochs = glob.glob(osp.join(work_dir, 'epoch_*.pth'))
    if not epochs:
        return None
    return max(epochs, key=lambda p: int(osp.basename(p)[len('epoch_'):-len('.pth')]))


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Re-seed Python-side RNGs at the start of every epoch from (seed, epoch).

    The sampler shuffle (GroupSampler uses numpy's global RNG), the GPU photometric distortion
    (numpy) and dropout (torch) then depend only on the epoch, so a run resumed from the
    checkpoint of epoch e continues exactly like the uninterrupted run.
    """

    def __init__(self, seed):
        self.seed = seed

    def before_train_epoch(self, runner):
        # Same seed on every rank, as the original's set_random_seed(0) on all ranks.
        epoch_seed = (self.seed + 1000003 * runner.epoch) % (2 ** 31)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)


class NanGuardMixin:
    """Skip an optimizer step whose loss is not finite, and stop after too many in a row.

    All ranks take the same decision (the flag is all-reduced), otherwise DDP would deadlock.
    """

    def _init_nan_guard(self, max_consecutive_nan_steps):
        self.max_consecutive_nan_steps = max_consecutive_nan_steps
        self.consecutive_nan_steps = 0
        self.skipped_steps = 0

    def _loss_is_finite_everywhere(self, runner):
        bad = torch.tensor([0.0 if torch.isfinite(runner.outputs['loss']).all() else 1.0],
                           device=runner.outputs['loss'].device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad.item() == 0.0

    def after_train_iter(self, runner):
        if self._loss_is_finite_everywhere(runner):
            self.consecutive_nan_steps = 0
            return super().after_train_iter(runner)
        self.consecutive_nan_steps += 1
        self.skipped_steps += 1
        runner.optimizer.zero_grad()
        terms = {k: v for k, v in runner.outputs.get('log_vars', {}).items() if not np.isfinite(v)}
        runner.logger.warning(
            f'iteration {runner.iter + 1}: non-finite loss (terms: {terms or "on another rank"}); '
            f'optimizer step skipped ({self.consecutive_nan_steps} in a row, {self.skipped_steps} in total)')
        if self.consecutive_nan_steps >= self.max_consecutive_nan_steps:
            raise FloatingPointError(
                f'training stopped: {self.consecutive_nan_steps} consecutive iterations with a non-finite '
                f'loss (last at iteration {runner.iter + 1}). The run has diverged: lower the learning rate, '
                f'check the data, or resume from the last checkpoint in {runner.work_dir}.')


@HOOKS.register_module()
class NanGuardOptimizerHook(NanGuardMixin, OptimizerHook):
    """fp32 optimizer step (zero grad, backward, clip, step) with the NaN guard."""

    def __init__(self, grad_clip=None, max_consecutive_nan_steps=5, **kwargs):
        super().__init__(grad_clip=grad_clip, **kwargs)
        self._init_nan_guard(max_consecutive_nan_steps)


@HOOKS.register_module()
class NanGuardFp16OptimizerHook(NanGuardMixin, Fp16OptimizerHook):
    """mmcv's Fp16OptimizerHook (GradScaler; static scale when `loss_scale` is a number) with the NaN guard."""

    def __init__(self, grad_clip=None, loss_scale=512.0, max_consecutive_nan_steps=5, **kwargs):
        super().__init__(grad_clip=grad_clip, loss_scale=loss_scale, **kwargs)
        self._init_nan_guard(max_consecutive_nan_steps)


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A tqdm bar per epoch on rank 0 showing the running loss (logs stay readable in files)."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.bar = None

    def before_train_epoch(self, runner):
        rank, _ = get_dist_info()
        if self.enabled and rank == 0:
            self.bar = tqdm(total=len(runner.data_loader), desc=f'epoch {runner.epoch + 1}/{runner.max_epochs}',
                            dynamic_ncols=True, leave=True)

    def after_train_iter(self, runner):
        if self.bar is not None:
            loss = runner.outputs.get('log_vars', {}).get('loss')
            if loss is not None:
                self.bar.set_postfix(loss=f'{loss:.3f}')
            self.bar.update(1)

    def after_train_epoch(self, runner):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
