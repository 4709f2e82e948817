"""Checkpoints never run code: payload pickles are refused (and their payload does not run), broken files
give one line naming the file, and what train.py / mmcv save (numpy scalars in meta included) loads."""
import logging
import os
import pickle
import shlex

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.runner import AtomicEpochBasedRunner, find_latest_checkpoint, resume_failure_message
from models.weights import (
    CheckpointError,
    UntrustedCheckpointError,
    load_checkpoint_file,
    load_checkpoint_strict,
    load_pretrained_backbone,
)


class Toy(nn.Module):
    CLASSES = ('car', 'truck')

    def __init__(self):
        super().__init__()
        self.img_backbone = nn.Linear(2, 2)

    def train_step(self, data, optimizer):
        loss = self.img_backbone(data['x']).pow(2).mean()
        return dict(loss=loss, log_vars=dict(loss=loss.item()), num_samples=1)


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(self.marker)}',)


def runner_for(model, work_dir, trust=False):
    return AtomicEpochBasedRunner(model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                                  work_dir=str(work_dir), logger=logging.getLogger('test_checkpoint_safety'),
                                  max_epochs=3, trust_checkpoint=trust)


def payload_files(tmp_path, marker):
    """A torch.save checkpoint and a bare pickle (protocol 2, as old tools write), both carrying the payload."""
    state = Toy().state_dict()
    zipped = tmp_path / 'payload.pth'
    torch.save({'state_dict': state, 'meta': {'epoch': 1, 'iter': 1, 'note': Payload(marker)}}, zipped)
    bare = tmp_path / 'payload_pickle.pth'
    with open(bare, 'wb') as f:
        pickle.dump({'meta': {'epoch': 1}, 'x': Payload(marker)}, f, protocol=2)
    return [zipped, bare]


def test_a_payload_never_runs_and_the_error_names_file_and_object(tmp_path):
    marker = tmp_path / 'payload_ran'
    for path in payload_files(tmp_path, marker):
        loaders = [lambda p: load_checkpoint_strict(Toy(), p),                      # val.py / timing.py --weights
                   lambda p: load_pretrained_backbone(Toy(), p),                    # train.py load_from
                   lambda p: runner_for(Toy(), tmp_path / 'work').resume(p)]        # train.py --resume-from
        for load in loaders:
            with pytest.raises(UntrustedCheckpointError) as err:
                load(str(path))
            message = str(err.value)
            assert str(path) in message and 'system' in message and '--trust-checkpoint' in message, message
            assert '\n' not in message
            assert not marker.exists(), 'unpickling ran the payload'


def test_trust_checkpoint_loads_with_the_full_unpickler(tmp_path):
    marker = tmp_path / 'payload_ran'
    path = payload_files(tmp_path, marker)[0]
    load_checkpoint_file(str(path), trust=True)  # the user vouched for the file: its code runs
    assert marker.exists()


def test_what_train_py_and_mmcv_save_loads_safely_and_resumes(tmp_path):
    model = Toy()
    runner = runner_for(model, tmp_path)
    runner.meta = dict(config='model = dict(type="OPS")\n', seed=0,
                       hook_msgs=dict(last_ckpt='x', best_score=np.float64(0.5), best_epoch=np.int64(2)),
                       arr=np.arange(3))
    runner.outputs = model.train_step(dict(x=torch.ones(1, 2)), runner.optimizer)
    runner.outputs['loss'].backward()
    runner.optimizer.step()  # optimizer state (exp_avg ...) in the checkpoint
    runner._epoch, runner._iter = 1, 7
    runner.save_checkpoint(str(tmp_path))
    path = find_latest_checkpoint(str(tmp_path))
    ckpt = load_checkpoint_file(path)  # weights_only, no warning, no fallback
    assert ckpt['meta']['CLASSES'] == ('car', 'truck') and ckpt['meta']['epoch'] == 2
    assert ckpt['meta']['hook_msgs']['best_score'] == 0.5 and list(ckpt['meta']['arr']) == [0, 1, 2]
    assert 'exp_avg' in next(iter(ckpt['optimizer']['state'].values()))
    fresh = runner_for(Toy(), tmp_path / 'resumed')
    fresh.resume(path)
    assert (fresh.epoch, fresh.iter) == (2, 7)
    assert torch.equal(fresh.model.img_backbone.weight, model.img_backbone.weight)
    assert load_checkpoint_strict(Toy(), path)['iter'] == 7


def test_resume_does_not_run_the_config_text_of_the_checkpoint(tmp_path):
    """mmcv's resume executes meta['config'] as Python (Config.fromstring); ours never does."""
    marker = tmp_path / 'config_ran'
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': Toy().state_dict(), 'optimizer': {},
                'meta': {'epoch': 1, 'iter': 3, 'config': f'import os\nos.system("touch {marker}")\n'}}, path)
    runner = runner_for(Toy(), tmp_path)
    runner.resume(str(path), resume_optimizer=False)
    assert runner.epoch == 1 and not marker.exists()


def test_broken_files_give_one_line_naming_the_file(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': Toy().state_dict(), 'meta': {}}, good)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'state_dict': Toy().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    data, old = good.read_bytes(), legacy.read_bytes()
    cases = {
        'empty.pth': (b'', 'empty (0 bytes)'),
        'truncated.pth': (data[:len(data) // 2], 'truncated or corrupt'),
        'truncated_legacy.pth': (old[:len(old) // 3], 'truncated'),
        'text.pth': (b'this is a README, not weights\n', 'not a PyTorch checkpoint'),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save(torch.zeros(3), tmp_path / 'tensor.pth')
    cases['tensor.pth'] = (None, 'not a model checkpoint')
    torch.save({'state_dict': {'a': 'not a tensor'}}, tmp_path / 'strings.pth')
    cases['strings.pth'] = (None, 'not a model checkpoint')
    for name, (_, expected) in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint_strict(Toy(), path)
        message = str(err.value)
        assert path in message and expected in message and '\n' not in message, (name, message)
        assert not isinstance(err.value, UntrustedCheckpointError), name
    with pytest.raises(FileNotFoundError, match='pretrain/README.md'):
        load_checkpoint_strict(Toy(), str(tmp_path / 'missing.pth'))


def test_resume_advice_names_what_is_kept(tmp_path):
    bad = tmp_path / 'epoch_2.pth'
    bad.write_bytes(b'')
    exc = CheckpointError(f'{bad}: the checkpoint file is empty (0 bytes)')
    alone = resume_failure_message(str(bad), exc, str(tmp_path))
    assert 'no other checkpoint is kept' in alone and '--no-auto-resume' in alone and 'epoch_N' not in alone
    assert alone.count('\n') <= 1
    torch.save({'state_dict': {}}, tmp_path / 'epoch_1.pth')
    assert 'resume from epoch_1.pth' in resume_failure_message(str(bad), exc, str(tmp_path))
