"""The training runner on a toy model: atomic checkpoints, resume lookup, the NaN guard."""
import logging
import os

import pytest
import torch
import torch.nn as nn
from mmcv.runner import load_checkpoint

from engine.runner import AtomicEpochBasedRunner, NanGuardOptimizerHook, find_latest_checkpoint


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def train_step(self, data, optimizer):
        loss = ((self.linear(data['x']) - data['y']) ** 2).mean() * data.get('scale', 1.0)
        return dict(loss=loss, log_vars=dict(loss=loss.item()), num_samples=len(data['x']))


def make_runner(tmp_path, lr=0.1):
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return AtomicEpochBasedRunner(model, optimizer=optimizer, work_dir=str(tmp_path),
                                  logger=logging.getLogger('test_engine'), max_epochs=1)


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    runner = make_runner(tmp_path)
    runner.save_checkpoint(str(tmp_path))
    good = runner.model.linear.weight.detach().clone()
    assert os.path.islink(tmp_path / 'latest.pth')

    # A kill in the middle of the next write: torch.save writes half a file, then the process dies.
    runner._epoch = 1
    with torch.no_grad():
        runner.model.linear.weight.add_(1.0)

    from mmcv.fileio.file_client import HardDiskBackend

    def dying_put(self, obj, filepath):
        with open(filepath, 'wb') as fh:
            fh.write(obj[:len(obj) // 2])
        raise KeyboardInterrupt('killed while writing')

    monkeypatch.setattr(HardDiskBackend, 'put', dying_put)
    with pytest.raises(KeyboardInterrupt):
        runner.save_checkpoint(str(tmp_path))
    monkeypatch.undo()

    assert not (tmp_path / 'epoch_2.pth').exists()
    assert os.readlink(tmp_path / 'latest.pth') == 'epoch_1.pth'
    fresh = ToyModel()
    load_checkpoint(fresh, find_latest_checkpoint(str(tmp_path)), map_location='cpu')
    assert torch.equal(fresh.linear.weight, good)


def test_find_latest_checkpoint_prefers_highest_epoch(tmp_path):
    assert find_latest_checkpoint(str(tmp_path)) is None
    for n in (2, 10, 9):
        (tmp_path / f'epoch_{n}.pth').write_bytes(b'x')
    assert find_latest_checkpoint(str(tmp_path)).endswith('epoch_10.pth')


class FakeRunner:
    def __init__(self, model, optimizer, outputs, tmp_path):
        self.model, self.optimizer, self.outputs = model, optimizer, outputs
        self.iter, self.work_dir = 0, str(tmp_path)
        self.logger = logging.getLogger('test_engine')
        self.log_buffer = type('LB', (), {'update': lambda *a, **k: None})()


def test_nan_guard_skips_the_step_and_stops_after_too_many(tmp_path):
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = NanGuardOptimizerHook(grad_clip=dict(max_norm=35, norm_type=2), max_consecutive_nan_steps=3)
    data = dict(x=torch.ones(4, 2), y=torch.zeros(4, 1))
    before = model.linear.weight.detach().clone()

    nan_outputs = model.train_step(dict(data, scale=float('nan')), optimizer)
    runner = FakeRunner(model, optimizer, nan_outputs, tmp_path)
    hook.after_train_iter(runner)
    assert torch.equal(model.linear.weight, before), 'a NaN step must not change the weights'
    assert hook.skipped_steps == 1

    runner.outputs = model.train_step(data, optimizer)  # a finite step resets the counter and updates
    hook.after_train_iter(runner)
    assert not torch.equal(model.linear.weight, before)
    assert hook.consecutive_nan_steps == 0

    for _ in range(2):
        runner.outputs = model.train_step(dict(data, scale=float('inf')), optimizer)
        hook.after_train_iter(runner)
    runner.outputs = model.train_step(dict(data, scale=float('nan')), optimizer)
    with pytest.raises(FloatingPointError, match='3 consecutive'):
        hook.after_train_iter(runner)
