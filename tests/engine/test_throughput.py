"""engine/throughput.py on mmcv's runner with a toy model (CPU): samples/s in every logger, the summary, and the
CUDA memory branch (torch.cuda's peak functions replaced by a fake allocator) over two gloo processes."""
import json
import logging
import time

import mmcv.runner.epoch_based_runner
import pytest
import torch
import torch.nn as nn
from mmcv.runner import HOOKS, Hook
from mmcv.runner.hooks.logger import LoggerHook

from engine.runner import AtomicEpochBasedRunner
from engine.throughput import MIB, ThroughputHook
from throughput_checks import NO_PAUSE

ITERS_PER_EPOCH, EPOCHS, INTERVAL = 5, 2, 2
LOGGED_ITERS = (2, 4, 5)   # the interval's multiples and each epoch's last iteration (ignore_last=False)
SAMPLES_PER_ITER = 6
# samples_per_s is samples_per_iter * n / sum(t) against time = sum(t) / n, and the summary's mean a float64
# sum of 8 times: the two sides differ by their float64 roundings only, at most ~10 of them (the sums of up to
# 8 terms, a division, a product) of 2^-53 ≈ 1.1e-16 relative each, so ~1e-15; 1e-12 is that with a factor
# 1000 of room, and a wrong formula (a weight or a count off by one iteration) is off by > 1e-2
FLOAT64_RTOL = 1e-12


class Toy(nn.Module):
    """One linear layer; each step reports the fake allocator's transient of this (rank, iteration), if any."""

    def __init__(self, allocator=None, rank=0):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.allocator, self.rank, self.step = allocator, rank, 0

    def train_step(self, data, optimizer):
        if self.allocator is not None:
            self.allocator.use(transient_bytes(self.rank, self.step))
        self.step += 1
        time.sleep(0.002)  # an iteration time well above the clock's resolution
        loss = self.linear(data['x']).pow(2).mean()
        return dict(loss=loss, log_vars=dict(loss=loss.item()), num_samples=1)


@HOOKS.register_module()
class RecordingLoggerHook(LoggerHook):
    """A second logger: keeps each record's buffer averages (unrounded), as TensorBoard would receive them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records = []

    def log(self, runner):
        self.records.append(dict(runner.log_buffer.output, epoch=runner.epoch + 1, iter=runner.inner_iter + 1))


class IterationTimes(Hook):
    """Each iteration's `time` as IterTimerHook recorded it (registered between it and ThroughputHook)."""

    def __init__(self):
        self.times = []

    def after_train_iter(self, runner):
        self.times.append(runner.log_buffer.val_history['time'][-1])


def make_runner(work_dir, model, device, logger):
    runner = AtomicEpochBasedRunner(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                                    work_dir=str(work_dir), logger=logger, max_epochs=EPOCHS)
    runner.register_training_hooks(None, dict(type='OptimizerHook'), None, dict(
        interval=INTERVAL, hooks=[dict(type='TextLoggerHook'), dict(type='RecordingLoggerHook')]))
    hook = ThroughputHook(SAMPLES_PER_ITER, device)
    runner.register_hook(hook, priority=ThroughputHook.PRIORITY)
    recorder = next(h for h in runner.hooks if isinstance(h, RecordingLoggerHook))
    return runner, hook, recorder


@pytest.fixture(autouse=True)
def no_epoch_pause(monkeypatch):   # the toy data is a list: no loader workers to wait for
    monkeypatch.setattr(mmcv.runner.epoch_based_runner, 'time', NO_PAUSE)


def run(runner):
    runner.run([[dict(x=torch.ones(1, 2))] * ITERS_PER_EPOCH], [('train', 1)])


def test_samples_per_s_is_the_batch_over_the_logged_time_in_every_logger(tmp_path, caplog):
    logger = logging.getLogger('test_throughput')
    runner, hook, recorder = make_runner(tmp_path, Toy(), 'cpu', logger)
    times = IterationTimes()
    runner.register_hook(times, priority=75)
    with caplog.at_level(logging.INFO, logger='test_throughput'):
        run(runner)

    with open(tmp_path / f'{runner.timestamp}.log.json') as f:
        text_records = [r for r in map(json.loads, f) if r.get('mode') == 'train']
    expected_positions = [(e, i) for e in range(1, EPOCHS + 1) for i in LOGGED_ITERS]
    assert [(r['epoch'], r['iter']) for r in recorder.records] == expected_positions
    assert [(r['epoch'], r['iter']) for r in text_records] == expected_positions
    for record in recorder.records:   # the second logger, after the first cleared the averages
        assert record['samples_per_s'] == pytest.approx(SAMPLES_PER_ITER / record['time'], rel=FLOAT64_RTOL)
        assert not any(key.startswith('mem_') for key in record)   # CPU: no memory fields
    for text, unrounded in zip(text_records, recorder.records):   # the JSON log: the same values, 5 decimals
        assert text['samples_per_s'] == round(unrounded['samples_per_s'], 5)
    assert 'samples_per_s: ' in caplog.text

    # the summary: iterations after the first log interval (the first INTERVAL iterations)
    assert len(times.times) == EPOCHS * ITERS_PER_EPOCH
    later = times.times[INTERVAL:]
    mean = sum(later) / len(later)
    summary = hook.summary
    assert summary['iters_averaged'] == len(later)
    assert summary['mean_s_per_iter'] == pytest.approx(mean, rel=FLOAT64_RTOL)
    assert summary['samples_per_s'] == pytest.approx(SAMPLES_PER_ITER / mean, rel=FLOAT64_RTOL)
    assert sum(times.times) <= summary['total_s'] and 'mem_alloc_mib' not in summary
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith('training took')]
    assert len(line) == 1 and f'{mean:.4g} s/iter' in line[0] and f'over the {len(later)} iterations' in line[0]


def test_the_hook_refuses_a_place_after_the_loggers(tmp_path):
    model = Toy()
    runner = AtomicEpochBasedRunner(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                                    work_dir=str(tmp_path), logger=logging.getLogger('test_throughput'), max_epochs=1)
    runner.register_training_hooks(None, dict(type='OptimizerHook'), None, dict(
        interval=1, hooks=[dict(type='TextLoggerHook')]))
    runner.register_hook(ThroughputHook(1), priority='LOWEST')
    with pytest.raises(RuntimeError, match='priority=80'):
        run(runner)


# ----------------------------------------------------------------- the CUDA branch, faked, over two processes
WORLD = 2


def transient_bytes(rank, step):
    """The largest allocation of (rank, step): pseudo-random whole MiB, so intervals and ranks differ."""
    return MIB * ((7 * step + 13 * rank) % 17 + 1)


class FakeAllocator:
    """torch.cuda's peak statistics for one process: `use(n)` is a transient of n bytes above nothing kept;
    reserved memory is twice the allocated peak (a caching allocator holds more than it hands out)."""

    def __init__(self):
        self.peak, self.resets = 0, 0

    def use(self, nbytes):
        self.peak = max(self.peak, nbytes)

    def max_memory_allocated(self, device=None):
        return self.peak

    def max_memory_reserved(self, device=None):
        return 2 * self.peak

    def reset_peak_memory_stats(self, device=None):
        self.peak = 0
        self.resets += 1


def _rank(rank, rendezvous, out_path, work_dir):
    torch.distributed.init_process_group('gloo', init_method=f'file://{rendezvous}', rank=rank, world_size=WORLD)
    try:
        mmcv.runner.epoch_based_runner.time = NO_PAUSE   # this process only (spawned)
        allocator = FakeAllocator()
        for name in ('max_memory_allocated', 'max_memory_reserved', 'reset_peak_memory_stats'):
            setattr(torch.cuda, name, getattr(allocator, name))
        runner, hook, recorder = make_runner(f'{work_dir}/{rank}', Toy(allocator, rank), 'cuda:0',
                                             logging.getLogger(f'test_throughput.{rank}'))
        run(runner)
        with open(f'{out_path}.{rank}', 'w') as f:   # the buffer's averages are numpy floats
            json.dump(dict(records=recorder.records, summary=hook.summary, resets=allocator.resets), f, default=float)
    finally:
        torch.distributed.destroy_process_group()


def test_cuda_peaks_are_each_interval_s_max_over_the_processes(tmp_path):
    out = tmp_path / 'result'
    torch.multiprocessing.spawn(_rank, args=(str(tmp_path / 'rendezvous'), str(out), str(tmp_path)), nprocs=WORLD)
    results = []
    for rank in range(WORLD):
        with open(f'{out}.{rank}') as f:
            results.append(json.load(f))

    # each interval runs from the iteration after the previous log (or the epoch's first) to its log iteration
    intervals, start = [], 0
    for epoch in range(EPOCHS):
        first = epoch * ITERS_PER_EPOCH
        for end in LOGGED_ITERS:
            begin = max(start, first)
            intervals.append(range(begin, first + end))
            start = first + end
    per_rank = [[max(transient_bytes(rank, step) for step in steps) for steps in intervals] for rank in range(WORLD)]
    expected = [max(values) for values in zip(*per_rank)]
    # the case discriminates: each rank holds the max of some interval, and a peak never reset (the running max)
    # would differ in some interval
    assert any(a > b for a, b in zip(*per_rank)) and any(a < b for a, b in zip(*per_rank))
    assert any(value != max(expected[:i + 1]) for i, value in enumerate(expected))

    for rank, result in enumerate(results):   # every process logs the same maxima (one all-reduce)
        records = result['records']
        assert [r['mem_alloc_mib'] for r in records] == [v / MIB for v in expected], rank
        assert [r['mem_reserved_mib'] for r in records] == [2 * v / MIB for v in expected], rank
        # reset at each epoch's start (the run's start with the first) and after each log but an epoch's last
        assert result['resets'] == EPOCHS + EPOCHS * (len(LOGGED_ITERS) - 1)
        assert result['summary']['mem_alloc_mib'] == max(expected) / MIB
        assert result['summary']['mem_reserved_mib'] == 2 * max(expected) / MIB
        for record in records:
            assert record['samples_per_s'] == pytest.approx(SAMPLES_PER_ITER / record['time'], rel=FLOAT64_RTOL)
