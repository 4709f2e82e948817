"""Readable console output: a loss line in every epoch, log lines above the progress bars, mmcv's
per-parameter init dump and library noise off unless --verbose, and `--help` without heavy imports."""
import io
import json
import logging
import os
import os.path as osp
import subprocess
import sys

import torch
import torch.nn as nn
from tqdm import tqdm

from engine.logs import TqdmHandler, quiet_libraries, restore_libraries, route_through_tqdm
from engine.runner import AtomicEpochBasedRunner

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def train_step(self, data, optimizer):
        loss = self.linear(data['x']).pow(2).mean()
        return dict(loss=loss, log_vars=dict(loss=loss.item()), num_samples=1)


def test_epochs_shorter_than_the_log_interval_log_their_loss(tmp_path):
    model = Toy()
    runner = AtomicEpochBasedRunner(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                                    work_dir=str(tmp_path), logger=logging.getLogger('test_console_logs'), max_epochs=2)
    runner.register_training_hooks(None, dict(type='OptimizerHook'), None,
                                   dict(interval=50, hooks=[dict(type='TextLoggerHook')]))
    runner.run([[dict(x=torch.ones(1, 2))] * 3], [('train', 1)])  # 3 iterations per epoch, log interval 50
    with open(tmp_path / f'{runner.timestamp}.log.json') as f:
        records = [json.loads(line) for line in f if '"mode"' in line]
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 3), (2, 3)] and all('loss' in r for r in records)


def test_log_lines_go_above_the_progress_bar():
    stream = io.StringIO()
    logger = logging.getLogger('test_console_logs.bar')
    logger.propagate = False
    logger.handlers = [logging.StreamHandler(sys.stderr)]
    route_through_tqdm(logger)
    assert isinstance(logger.handlers[0], TqdmHandler) and logger.handlers[0].stream is sys.stderr
    logger.handlers = [TqdmHandler(stream)]
    logger.setLevel(logging.INFO)
    bar = tqdm(total=4, file=stream, desc='epoch 1/1', ncols=60, mininterval=0)
    bar.update(1)
    logger.info('Epoch [1][1/4] loss: 0.5')
    bar.update(1)
    bar.close()
    out = stream.getvalue()
    # the bar line is cleared (carriage return) before the record, which ends its own line
    before, after = out.split('Epoch [1][1/4] loss: 0.5', 1)
    assert before.endswith('\r') and after.startswith('\n'), repr(out)


def test_init_dump_only_with_verbose(tmp_path):
    from mmcv.runner import BaseModule
    from mmcv.utils import get_logger
    from mmcv.utils.logging import logger_initialized

    class Net(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type='Constant', layer='Linear', val=1.0))
            self.fc = nn.Linear(2, 2)

    log_file = tmp_path / 'run.log'
    saved = dict(logger_initialized)
    logger_initialized.clear()  # init_weights reports to the first initialised logger: ours
    try:
        logger = get_logger('test_console_logs_mmcv', log_file=str(log_file))
        quiet_libraries(verbose=False)
        Net().init_weights()
        restore_libraries()
        Net().init_weights()  # --verbose: mmcv's dump is back
    finally:
        restore_libraries()
        logger_initialized.clear()
        logger_initialized.update(saved)
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
    assert log_file.read_text().count('Name of parameter - Initialization information') == 1


def test_library_noise_is_filtered_unless_verbose():
    stream = io.StringIO()
    logger = logging.getLogger('mmdet')
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        quiet_libraries(verbose=False)
        logger.warning('Hooks will be executed in the following order:\n%s', '(VERY_HIGH) ...')
        logger.warning('Epoch [1][3/3] loss: 1.0')
        restore_libraries()
        logger.warning('initialize ResNet with init_cfg ...')  # --verbose
    finally:
        restore_libraries()
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == ['Epoch [1][3/3] loss: 1.0', 'initialize ResNet with init_cfg ...']


def test_help_is_fast_and_imports_nothing_heavy():
    code = ('import sys, train, val, timing, tools.check_data; '
            'print(sorted(m for m in ("torch", "mmcv", "mmdet") if m in sys.modules))')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stdout + proc.stderr
    for tool in ('train.py', 'val.py', 'timing.py'):
        proc = subprocess.run([sys.executable, tool, '--help'], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONWARNINGS='default'))
        assert proc.returncode == 0 and '--debug' in proc.stdout and proc.stderr == '', proc.stderr
