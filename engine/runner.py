"""The training runner and hooks: atomic checkpoints, per-epoch seeding, NaN guard, progress bar.

mmcv's EpochBasedRunner is used as is, except that
* checkpoints are written to a temporary file and renamed into place, so a kill during the write
  never leaves a truncated `latest.pth`;
* checkpoints are read without running code from them (models/weights.py; `trust_checkpoint=True`
  for files the user vouches for);
* every logger hook logs at the end of an epoch too (`ignore_last=False`), so an epoch shorter than
  the log interval still logs its loss.
`remove_on_early_failure` takes away what a run that failed before its first checkpoint wrote.
"""
import contextlib
import copy
import glob
import os
import os.path as osp
import re
import shutil
from collections import OrderedDict

import numpy as np
import torch
import torch.distributed as dist
from mmcv.runner import HOOKS, RUNNERS, EpochBasedRunner, Fp16OptimizerHook, Hook, OptimizerHook, get_dist_info
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
    """EpochBasedRunner whose checkpoints are written atomically (temporary file + rename) and read safely.

    Args (besides EpochBasedRunner's):
        trust_checkpoint (bool): read checkpoints (resume) with the full unpickler, which can run code
            stored in the file (train.py --trust-checkpoint).
    """

    def __init__(self, *args, trust_checkpoint=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.trust_checkpoint = trust_checkpoint

    def load_checkpoint(self, filename, map_location='cpu', strict=False, revise_keys=((r'^module\.', ''),)):
        """mmcv's load_checkpoint on a local file, read with models.weights.load_checkpoint_file."""
        from mmcv.runner.checkpoint import load_state_dict

        from models.weights import CheckpointError, load_checkpoint_file
        checkpoint = load_checkpoint_file(filename, 'checkpoint', trust=self.trust_checkpoint,
                                          map_location='cpu' if map_location in (None, 'default') else map_location)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f'{filename}: not a training checkpoint (it holds a {type(checkpoint).__name__})')
        state_dict = checkpoint.get('state_dict', checkpoint)
        metadata = getattr(state_dict, '_metadata', OrderedDict())
        for pattern, repl in revise_keys:
            state_dict = OrderedDict((re.sub(pattern, repl, k), v) for k, v in state_dict.items())
        state_dict._metadata = metadata
        load_state_dict(self.model, state_dict, strict, self.logger)
        return checkpoint

    def resume(self, checkpoint, resume_optimizer=True, map_location='cpu'):
        """mmcv's resume without `mmcv.Config.fromstring(meta['config'])`, which runs the config text stored
        in the checkpoint as Python (mmcv uses it only for a `gpu_ids` key OPS configs do not have)."""
        from models.weights import CheckpointError
        path = checkpoint
        checkpoint = self.load_checkpoint(path, map_location=map_location)
        meta = checkpoint.get('meta')
        if not isinstance(meta, dict) or 'epoch' not in meta or 'iter' not in meta:
            raise CheckpointError(f'{path}: not a training checkpoint (no meta.epoch / meta.iter): resume needs a '
                                  f'checkpoint train.py wrote; to start from weights only, set load_from')
        self._epoch = meta['epoch']
        self._iter = meta['iter']
        if self.meta is None:
            self.meta = {}
        self.meta.setdefault('hook_msgs', {})
        self.meta['hook_msgs'].update(meta.get('hook_msgs', {}))
        self.meta = meta
        if 'optimizer' in checkpoint and resume_optimizer:
            if isinstance(self.optimizer, dict):
                for key in self.optimizer:
                    self.optimizer[key].load_state_dict(checkpoint['optimizer'][key])
            else:
                # a checkpoint whose optimizer kept mmcv's one group per parameter (the original's layout) has other
                # groups than this one (merge_param_groups)
                from engine.train_step import regroup_optimizer_state
                self.optimizer.load_state_dict(regroup_optimizer_state(checkpoint['optimizer'], self.optimizer))
        self.logger.info('resumed epoch %d, iter %d', self.epoch, self.iter)

    def register_logger_hooks(self, log_config):
        """mmcv's logger hooks, but each logs at the end of every epoch too (ignore_last=False)."""
        if log_config is None:
            return
        log_config = copy.deepcopy(dict(log_config))
        log_config['hooks'] = [dict(info, ignore_last=info.get('ignore_last', False)) for info in log_config['hooks']]
        super().register_logger_hooks(log_config)

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


def _epoch_checkpoints(work_dir):
    """epoch_N.pth files of `work_dir`, newest (highest N) first."""
    found = []
    for path in glob.glob(osp.join(work_dir, 'epoch_*.pth')):
        number = osp.basename(path)[len('epoch_'):-len('.pth')]
        if number.isdigit():
            found.append((int(number), path))
    return [path for _, path in sorted(found, reverse=True)]


def find_latest_checkpoint(work_dir):
    """Return the newest complete checkpoint in `work_dir` (latest.pth, else the highest epoch_N.pth)."""
    latest = osp.join(work_dir, 'latest.pth')
    if osp.exists(latest):
        return latest
    epochs = _epoch_checkpoints(work_dir)
    return epochs[0] if epochs else None


def resume_failure_message(path, exc, work_dir):
    """What to do when resuming from `path` failed with `exc`: the other checkpoints kept, or start afresh."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if reason.startswith(f'{path}: '):
        reason = reason[len(path) + 2:]
    bad = {osp.realpath(path)}
    others = [p for p in _epoch_checkpoints(work_dir) if osp.realpath(p) not in bad]
    if others:
        advice = (f'delete it (and latest.pth if it points to it) to resume from {osp.basename(others[0])}, '
                  f'or start afresh with --no-auto-resume')
    else:
        advice = ('no other checkpoint is kept in the work dir (checkpoint_config.max_keep_ckpts): start afresh '
                  'with --no-auto-resume (or delete the file)')
    return f'cannot resume from {path}: {reason}\nThe file is corrupt or not an OPS training checkpoint; {advice}.'


@contextlib.contextmanager
def remove_on_early_failure(work_dir, enabled=True):
    """Remove what a run wrote into `work_dir` when it fails before writing its first checkpoint.

    A work dir the run created is removed entirely (with the parent folders created for it, e.g. outputs/);
    in an existing one, only the entries the run added (config copy, logs, TensorBoard folder) are. Once a
    checkpoint exists, nothing is removed.
    """
    work_dir = osp.abspath(work_dir)
    existed = osp.isdir(work_dir)
    before = set(os.listdir(work_dir)) if existed else set()
    created = []  # the work dir and the parents that do not exist yet, innermost first
    folder = work_dir
    while not osp.exists(folder) and osp.dirname(folder) != folder:
        created.append(folder)
        folder = osp.dirname(folder)
    try:
        yield
    except BaseException:
        if enabled and osp.isdir(work_dir):
            added = set(os.listdir(work_dir)) - before
            if not any(name.endswith('.pth') for name in added):
                if not existed:
                    shutil.rmtree(work_dir, ignore_errors=True)
                    for parent in created[1:]:
                        with contextlib.suppress(OSError):
                            os.rmdir(parent)  # only when empty
                else:
                    for name in added:
                        target = osp.join(work_dir, name)
                        if osp.isdir(target) and not osp.islink(target):
                            shutil.rmtree(target, ignore_errors=True)
                        else:
                            with contextlib.suppress(OSError):
                                os.remove(target)
        raise


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
