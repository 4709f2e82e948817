"""Batch size, gradient accumulation and learning rate for any number of processes (docs/distributed.md).

mmdet's conventions: the config's `batch_size` is the total batch of one optimizer step, over all
processes, and its learning rate belongs to `auto_scale_lr.base_batch_size` samples (default: the
config's own `batch_size`, 8 for the published configs), scaled linearly when the total batch that
is actually run differs (`auto_scale_lr.enable`, default True).

`plan_batch` decides, from the world size W and what the config pins:

* nothing pinned: the total batch B is kept when W divides it (B // W samples per process); when
  W > B every process keeps 1 sample, the total becomes W and the lr scales by W / base; otherwise
  (W < B, not a divisor) each process takes B // W and the lr scales with the smaller total;
* `data.samples_per_gpu` pinned (e.g. 1 when memory forces it): when W * samples_per_gpu divides B,
  gradients are accumulated over B / (W * samples_per_gpu) iterations (mmcv's
  GradientCumulativeOptimizerHook) so the total stays B, else the total is W * samples_per_gpu;
* `optimizer_config.cumulative_iters` pinned: samples_per_gpu = max(1, B // (W * cumulative_iters));
* both pinned: the total is W * samples_per_gpu * cumulative_iters.

With accumulation the runner counts micro-iterations: `apply_plan` multiplies the warmup length
(`lr_config.warmup_iters`) by the accumulation so that warmup lasts the same number of optimizer
steps. Epoch-based schedules stay epoch-based: with the total batch kept, an epoch has the same
number of optimizer steps for any W. Pure functions; train.py logs `plan.messages`.
"""
from dataclasses import dataclass, field

__all__ = ['BatchPlan', 'plan_batch', 'plan_from_config', 'apply_plan', 'resume_adjustment', 'continue_resumed_run']


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step is spread over the processes.

    total_batch = world_size * samples_per_gpu * cumulative_iters samples per optimizer step;
    lr_scale multiplies the config's learning rate.
    """
    world_size: int
    samples_per_gpu: int
    cumulative_iters: int
    config_batch: int
    base_batch_size: int
    auto_scale_lr: bool
    lr_scale: float
    messages: tuple = field(default=())

    @property
    def total_batch(self):
        return self.world_size * self.samples_per_gpu * self.cumulative_iters

    def summary(self):
        """'total batch 8, 2 process(es), 4 sample(s) per process' (+ accumulation, lr scale)."""
        text = (f'total batch {self.total_batch}, {self.world_size} process(es), '
                f'{self.samples_per_gpu} sample(s) per process')
        if self.cumulative_iters > 1:
            text += f', gradients accumulated over {self.cumulative_iters} iterations'
        if self.lr_scale != 1.0:
            text += f', lr x {self.lr_scale:g}'
        return text

    def as_meta(self):
        """What a checkpoint records about the batch (read back by resume_adjustment)."""
        return dict(world_size=self.world_size, samples_per_gpu=self.samples_per_gpu,
                    cumulative_iters=self.cumulative_iters, total_batch=self.total_batch, lr_scale=self.lr_scale)


def _positive_int(name, value, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return value


def plan_batch(config_batch, world_size, samples_per_gpu=None, cumulative_iters=None, auto_scale_lr=True,
               base_batch_size=None):
    """The batch plan for `world_size` processes (rules: module docstring).

    Args:
        config_batch (int): the config's `batch_size` (total per optimizer step).
        world_size (int): number of processes.
        samples_per_gpu (int | None): pinned samples per process (`data.samples_per_gpu`).
        cumulative_iters (int | None): pinned accumulation (`optimizer_config.cumulative_iters`).
        auto_scale_lr (bool): scale the lr linearly with total_batch / base_batch_size.
        base_batch_size (int | None): the batch the config's lr belongs to (default `config_batch`).
    Returns:
        BatchPlan
    """
    B = _positive_int('batch_size', config_batch, allow_none=False)
    W = _positive_int('world size', world_size, allow_none=False)
    spg = _positive_int('data.samples_per_gpu', samples_per_gpu)
    acc = _positive_int('optimizer_config.cumulative_iters', cumulative_iters)
    base = _positive_int('auto_scale_lr.base_batch_size', base_batch_size) or B
    messages = []
    if spg is None and acc is None:
        acc = 1
        if B % W == 0:
            spg = B // W
        elif W > B:
            spg = 1
            messages.append(f'{W} processes for a total batch of {B}: each process takes 1 sample, '
                            f'the total batch becomes {W}')
        else:
            spg = B // W
            messages.append(f'batch_size {B} is not a multiple of the {W} processes: each takes {spg}, '
                            f'the total batch becomes {spg * W}')
    elif acc is None:
        if W * spg < B and B % (W * spg) == 0:
            acc = B // (W * spg)
            messages.append(f'{spg} sample(s) per process on {W} process(es): gradients are accumulated over '
                            f'{acc} iterations to keep the total batch of {B}')
        else:
            acc = 1
            if W * spg != B:
                messages.append(f'{spg} sample(s) per process (pinned) on {W} process(es): the total batch '
                                f'becomes {W * spg} (config: {B})')
    elif spg is None:
        spg = max(1, B // (W * acc))
        if W * spg * acc != B:
            messages.append(f'accumulation over {acc} iterations (pinned) on {W} process(es): {spg} sample(s) '
                            f'per process, the total batch becomes {W * spg * acc} (config: {B})')
    elif W * spg * acc != B:
        messages.append(f'{spg} sample(s) per process and accumulation over {acc} iterations (both pinned) on '
                        f'{W} process(es): the total batch becomes {W * spg * acc} (config: {B})')
    total = W * spg * acc
    lr_scale = total / base if auto_scale_lr else 1.0
    if lr_scale != 1.0:
        messages.append(f'auto_scale_lr: learning rate x {lr_scale:g} (total batch {total}, base batch {base}); '
                        f'pin it with --cfg-options auto_scale_lr.enable=False')
    elif not auto_scale_lr and total != base:
        messages.append(f'auto_scale_lr disabled: the config\'s learning rate is used for a total batch of {total} '
                        f'(base batch {base})')
    return BatchPlan(W, spg, acc, B, base, bool(auto_scale_lr), lr_scale, tuple(messages))


def plan_from_config(cfg, world_size):
    """plan_batch with what `cfg` pins: data.samples_per_gpu, optimizer_config.cumulative_iters, auto_scale_lr."""
    scale_cfg = dict(cfg.get('auto_scale_lr') or {})
    unknown = set(scale_cfg) - {'enable', 'base_batch_size'}
    if unknown:
        raise ValueError(f'auto_scale_lr: unknown key(s) {sorted(unknown)}; known: enable, base_batch_size')
    return plan_batch(cfg.batch_size, world_size,
                      samples_per_gpu=cfg.get('data', {}).get('samples_per_gpu'),
                      cumulative_iters=dict(cfg.get('optimizer_config') or {}).get('cumulative_iters'),
                      auto_scale_lr=scale_cfg.get('enable', True),
                      base_batch_size=scale_cfg.get('base_batch_size'))


def apply_plan(optimizer_cfg, lr_cfg, plan):
    """The optimizer and lr configs for `plan`: copies, the config's lr scaled, warmup in micro-iterations.

    Args:
        optimizer_cfg (dict): the config's `optimizer` (its `lr` is multiplied by plan.lr_scale).
        lr_cfg (dict): the config's `lr_config` (`warmup_iters` multiplied by plan.cumulative_iters).
    Returns:
        (optimizer_cfg, lr_cfg, messages)
    """
    optimizer_cfg, lr_cfg, messages = dict(optimizer_cfg), dict(lr_cfg or {}), []
    if plan.lr_scale != 1.0:
        old = optimizer_cfg['lr']
        optimizer_cfg['lr'] = old * plan.lr_scale
        messages.append(f'LR has been automatically scaled from {old:g} to {optimizer_cfg["lr"]:g}')
    if plan.cumulative_iters > 1 and lr_cfg.get('warmup') and lr_cfg.get('warmup_iters'):
        old = lr_cfg['warmup_iters']
        lr_cfg['warmup_iters'] = old * plan.cumulative_iters
        messages.append(f'warmup: {old} optimizer steps = {lr_cfg["warmup_iters"]} iterations of '
                        f'{plan.cumulative_iters} accumulated micro-batches')
    if plan.cumulative_iters > 1 and lr_cfg.get('by_epoch') is False:
        messages.append('lr_config.by_epoch=False: iteration-based steps of the schedule count micro-iterations')
    return optimizer_cfg, lr_cfg, messages


def resume_adjustment(checkpoint_meta, plan, epoch, iters_per_epoch):
    """How to continue a checkpoint written with another batch plan.

    Epoch, lr schedule position and weights carry over. When the total batch or the accumulation
    differs, an epoch has another number of (micro-)iterations: the iteration counter restarts from
    epoch * iters_per_epoch (the checkpoints are written at epoch ends). When the lr scale differs,
    the optimizer's base lrs (saved in its state) are multiplied by new / old scale.

    Args:
        checkpoint_meta (dict): the checkpoint's `meta` (its 'batch' entry from BatchPlan.as_meta, if any).
        plan (BatchPlan): this run's plan.
        epoch (int): the resumed epoch (runner.epoch after resume).
        iters_per_epoch (int): iterations of one epoch in this run (len of the data loader).
    Returns:
        (new_iter or None to keep the checkpoint's, lr_factor, messages)
    """
    old = (checkpoint_meta or {}).get('batch')
    if not old:
        return None, 1.0, []
    messages = []
    new_iter, factor = None, 1.0
    if (old.get('world_size'), old.get('total_batch')) != (plan.world_size, plan.total_batch):
        messages.append(f'resuming a run of world size {old.get("world_size")} (total batch {old.get("total_batch")}) '
                        f'with world size {plan.world_size} (total batch {plan.total_batch})')
    if (old.get('total_batch'), old.get('cumulative_iters', 1)) != (plan.total_batch, plan.cumulative_iters):
        new_iter = epoch * iters_per_epoch
        messages.append(f'an epoch now has {iters_per_epoch} iterations: iteration counter set to {new_iter} '
                        f'(epoch {epoch} x {iters_per_epoch})')
    old_scale = old.get('lr_scale', 1.0)
    if old_scale and old_scale != plan.lr_scale:
        factor = plan.lr_scale / old_scale
        messages.append(f'the lr scale changed from {old_scale:g} to {plan.lr_scale:g}: base lrs x {factor:g}')
    return new_iter, factor, messages


def continue_resumed_run(runner, plan, iters_per_epoch, logger=None):
    """After runner.resume: apply resume_adjustment to the runner and its optimizer, record this plan.

    The checkpoint's meta (runner.meta after resume) says how it was trained; the iteration counter
    and the optimizer's lrs (`lr` and the schedule's `initial_lr` of every param group) follow this
    run's plan, and the next checkpoints record it.
    """
    new_iter, factor, messages = resume_adjustment(runner.meta, plan, runner.epoch, iters_per_epoch)
    for message in messages:
        if logger is not None:
            logger.info(message)
    if new_iter is not None:
        runner._iter = new_iter
    if factor != 1.0:
        optimizers = runner.optimizer.values() if isinstance(runner.optimizer, dict) else [runner.optimizer]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group['lr'] *= factor
                if 'initial_lr' in group:
                    group['initial_lr'] *= factor
    runner.meta = dict(runner.meta or {}, batch=plan.as_meta())
    return new_iter, factor
