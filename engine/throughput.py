"""Throughput and GPU memory in the training logs, and one summary line when training ends.

`ThroughputHook` adds to every log record of mmcv's logger hooks (the text log, the `.log.json`
log, TensorBoard), besides mmcv's `time` (seconds per iteration, the interval's mean) and `data_time`:

* `samples_per_s`: samples per second over all processes, `samples_per_iter` / `time` of the same
  record. An iteration is one batch of every process: with gradient accumulation the runner counts
  micro-iterations (engine/scaling.py), so `samples_per_iter` = samples per process x world size, and
  one optimizer step takes `cumulative_iters` iterations.
* on CUDA, `mem_alloc_mib` and `mem_reserved_mib`: the peaks of `torch.cuda.max_memory_allocated`
  (tensors) and `torch.cuda.max_memory_reserved` (what the caching allocator holds from the driver,
  the CUDA-graph pools included: what a GPU must provide) during the interval, in MiB, the max over the
  processes. The peaks are reset after each log (and at each epoch's start, so the evaluation between
  epochs counts in no interval); mmcv's own `memory` field (peak allocated, whole MB, rank 0's reduce)
  therefore is the interval's peak too. Absent on the CPU.

How the values reach every logger: mmcv's loggers each average the log buffer's history over their
interval and the last one clears the averages (`reset_flag`), so a value must live in the history.
`samples_per_s` is pushed every iteration as samples_per_iter / t with weight t (the iteration's
time): the buffer's weighted mean over any window is samples_per_iter x n / sum(t), exactly
`samples_per_iter` / the window's mean `time`. The memory peaks are measured at the iterations where
a logger logs and replace their key's history, so every logger's average is that value.

When training ends, rank 0 logs one line: the total wall time, the mean seconds per iteration and
samples/s after the first log interval (which holds the data loader's start, cuDNN's choices and the
CUDA-graph captures), and on CUDA the largest logged peaks.
"""
import datetime
import time

import torch
import torch.distributed as dist
from mmcv.runner import HOOKS, Hook, IterTimerHook
from mmcv.runner.hooks.logger import LoggerHook

__all__ = ['ThroughputHook', 'max_over_ranks', 'MIB']

MIB = 2 ** 20


def max_over_ranks(values, device):
    """Element-wise max of `values` (list of int) over the processes of the default group.

    NCCL reduces CUDA tensors only (on `device`); gloo and the others take CPU tensors."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    on = device if dist.get_backend() == 'nccl' else torch.device('cpu')
    tensor = torch.tensor(values, dtype=torch.int64, device=on)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def _logs_now(logger, runner):
    """Whether mmcv's LoggerHook.after_train_iter logs at this iteration (the same conditions)."""
    if logger.by_epoch and logger.every_n_inner_iters(runner, logger.interval):
        return True
    if not logger.by_epoch and logger.every_n_iters(runner, logger.interval):
        return True
    return logger.end_of_epoch(runner) and not logger.ignore_last


@HOOKS.register_module()
class ThroughputHook(Hook):
    """samples/s and the interval's GPU memory peaks in the training logs; a summary at the end.

    Args:
        samples_per_iter (int): samples one iteration takes over all processes (samples per process x
            world size).
        device (torch.device | str): this process's training device; memory is logged on CUDA only.

    Register it with `priority=ThroughputHook.PRIORITY`: after mmcv's IterTimerHook, which records the
    iteration's `time`, and before the logger hooks, which read the buffer.
    """

    PRIORITY = 80   # between IterTimerHook (LOW, 70) and the logger hooks (VERY_LOW, 90)
    KEYS = ('samples_per_s', 'mem_alloc_mib', 'mem_reserved_mib')

    def __init__(self, samples_per_iter, device='cpu'):
        if isinstance(samples_per_iter, bool) or not isinstance(samples_per_iter, int) or samples_per_iter < 1:
            raise ValueError(f'ThroughputHook: samples_per_iter must be a positive integer, got {samples_per_iter!r}')
        self.samples_per_iter = samples_per_iter
        self.device = torch.device(device)
        self.on_cuda = self.device.type == 'cuda'
        self.summary = None

    def before_run(self, runner):
        self._check_order(runner)
        self.loggers = [hook for hook in runner.hooks if isinstance(hook, LoggerHook)]
        self.start = time.perf_counter()
        self.logged_once = False
        self.later_seconds, self.later_iters = 0.0, 0   # iterations after the first log interval
        self.peak_bytes = [0, 0]                        # largest logged [allocated, reserved]
        self.reset_pending = True

    def _check_order(self, runner):
        position = runner.hooks.index(self)
        timers = [i for i, hook in enumerate(runner.hooks) if isinstance(hook, IterTimerHook)]
        loggers = [i for i, hook in enumerate(runner.hooks) if isinstance(hook, LoggerHook)]
        if any(i > position for i in timers) or any(i < position for i in loggers):
            raise RuntimeError(f'ThroughputHook must run after IterTimerHook and before the logger hooks: '
                               f'register it with priority={self.PRIORITY}')

    def before_train_epoch(self, runner):
        self.reset_pending = True   # what ran between epochs (evaluation, checkpoint) is no interval's

    def before_train_iter(self, runner):
        if self.reset_pending and self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.reset_pending = False

    def after_train_iter(self, runner):
        times = runner.log_buffer.val_history.get('time')
        if times:
            seconds = max(float(times[-1]), 1e-9)   # IterTimerHook's value of this iteration
            runner.log_buffer.update({'samples_per_s': self.samples_per_iter / seconds}, count=seconds)
            if self.logged_once:
                self.later_seconds += seconds
                self.later_iters += 1
        if not any(_logs_now(logger, runner) for logger in self.loggers):
            return
        self.logged_once = True
        if self.on_cuda:
            self._record_memory(runner)
            self.reset_pending = True

    def _record_memory(self, runner):
        # every process reaches the same log iterations: a collective is safe here, and only here
        peaks = max_over_ranks([torch.cuda.max_memory_allocated(self.device),
                                torch.cuda.max_memory_reserved(self.device)], self.device)
        self.peak_bytes = [max(old, new) for old, new in zip(self.peak_bytes, peaks)]
        buffer = runner.log_buffer
        for key, value in zip(('mem_alloc_mib', 'mem_reserved_mib'), peaks):
            buffer.val_history.pop(key, None)   # the interval's peak alone, not an average of intervals
            buffer.n_history.pop(key, None)
            buffer.update({key: value / MIB})

    def after_run(self, runner):
        total = time.perf_counter() - self.start
        summary = dict(total_s=total, mean_s_per_iter=None, samples_per_s=None, iters_averaged=self.later_iters)
        text = f'training took {datetime.timedelta(seconds=round(total))} ({total:.1f} s)'
        if self.later_iters:
            mean = self.later_seconds / self.later_iters
            summary.update(mean_s_per_iter=mean, samples_per_s=self.samples_per_iter / mean)
            text += (f'; {mean:.4g} s/iter, {self.samples_per_iter / mean:.4g} samples/s over the '
                     f'{self.later_iters} iterations after the first log interval')
        else:
            text += '; no iteration after the first log interval for a steady s/iter'
        if self.on_cuda:
            summary.update(mem_alloc_mib=self.peak_bytes[0] / MIB, mem_reserved_mib=self.peak_bytes[1] / MIB)
            text += (f'; peak GPU memory {self.peak_bytes[0] / MIB:.0f} MiB allocated, '
                     f'{self.peak_bytes[1] / MIB:.0f} MiB reserved (max over processes)')
        self.summary = summary
        if runner.rank == 0:
            runner.logger.info(text)
