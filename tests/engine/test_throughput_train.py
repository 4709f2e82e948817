"""train.py logs samples/s in its JSON and text logs and a summary line at the end (tiny synthetic setup, CPU).

The run pins 1 sample per process, so the config's total batch of 4 is reached by accumulating 4 iterations
(engine/scaling.py). The runner counts those micro-iterations, and mmcv's `time` is the seconds of one of
them: samples_per_s = samples per process x world size / time = 1 x 1 / time, not x 4 (that would be the
rate of a step of 4 iterations over the time of one).
"""
import os

import mmcv.runner.epoch_based_runner
import torch

import train
from dist_helpers import train_records, write_config
from throughput_checks import NO_PAUSE, assert_samples_per_second

EXTRA = """
total_epochs = 1
log_config = dict(interval=2, hooks=[dict(type='TextLoggerHook', interval=2, reset_flag=True)])
"""


def test_train_logs_samples_per_second_and_a_summary(synthetic_infos, tmp_path, monkeypatch):
    monkeypatch.setattr(mmcv.runner.epoch_based_runner, 'time', NO_PAUSE)   # the tiny config has no loader workers
    config = write_config(tmp_path / 'tiny_throughput.py', synthetic_infos, EXTRA)
    work_dir = tmp_path / 'work'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(['--config', config, '--work-dir', str(work_dir), '--device', 'cpu', '--no-validate',
                    '--no-progress', '--skip-data-check', '--cfg-options', 'data.samples_per_gpu=1'])
    finally:
        torch.set_num_threads(threads)

    records = train_records(work_dir)
    # 3 samples, global batch 4 of 1 x 4 accumulated iterations: 4 iterations, logged at the 2nd and the 4th
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 2), (1, 4)]
    assert_samples_per_second(records, samples_per_iter=1)

    text_logs = [name for name in os.listdir(work_dir) if name.startswith('train_') and name.endswith('.log')]
    assert len(text_logs) == 1
    lines = (work_dir / text_logs[0]).read_text().splitlines()
    assert sum('Epoch [1][' in line and 'samples_per_s: ' in line for line in lines) == 2
    summary = [line for line in lines if 'training took' in line]
    # the 2 iterations after the first log interval; no GPU, no memory
    assert len(summary) == 1 and 'samples/s over the 2 iterations after the first log interval' in summary[0]
    assert 'GPU memory' not in summary[0]
