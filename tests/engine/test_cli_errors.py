"""One error style for the command-line tools (engine/cli.py): a bad input exits non-zero with one or two
lines that name the thing and the fix, no traceback (--debug shows it), and leaves no work dir behind.

Two cases run the real command lines in subprocesses (exit status, stderr); the others call main(argv)
in-process, which raises the same SystemExit the interpreter would print."""
import os
import os.path as osp
import pickle
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import gen_sweep_info
import train
import val
from engine.cli import DictAction, error_message
from tiny_ops import TINY_MODEL_CONFIG, TINY_PIPELINES

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

TRAIN_TAIL = '''
data = dict(workers_per_gpu=0, train=dict(type='NuScenesOccDataset', ann_file={ann_file!r}, pipeline=_train_pipeline))
batch_size = 1
total_epochs = 1
optimizer = dict(type='AdamW', lr=2e-4)
optimizer_config = dict(type='OptimizerHook')
lr_config = dict(policy='CosineAnnealing', warmup='linear', warmup_iters=2, min_lr_ratio=1e-3)
checkpoint_config = dict(interval=1)
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook')])
load_from = None
'''


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(self.marker)}',)


def train_config(tmp_path, infos, ann_file=None, name='tiny_train.py'):
    path = tmp_path / name
    path.write_text((TINY_MODEL_CONFIG + TINY_PIPELINES).format(occ_root=osp.join(infos.root, 'gts'))
                    + TRAIN_TAIL.format(ann_file=ann_file or infos.train))
    return str(path)


def assert_one_error(text, *names):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2 and 'Traceback' not in text, text
    for name in names:
        assert str(name) in text, (name, text)


def run_cli(*argv, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_command_lines_exit_with_one_line(synthetic_infos, tiny_val_setup, tmp_path):
    # a nested config typo: before anything is built, nothing left behind
    config = train_config(tmp_path, synthetic_infos)
    work = tmp_path / 'outputs' / 'w'
    proc = run_cli('train.py', '--config', config, '--work-dir', str(work), '--device', 'cpu',
                   '--cfg-options', 'lr_config.warmup_iter=3')
    assert proc.returncode != 0
    assert_one_error(proc.stderr, 'lr_config.warmup_iter: unknown key; did you mean warmup_iters?', config)
    assert not (tmp_path / 'outputs').exists()
    # a checkpoint whose pickle would run code: refused, the code does not run
    _, val_config, checkpoint, _ = tiny_val_setup
    marker = tmp_path / 'payload_ran'
    bad = tmp_path / 'payload.pth'
    torch.save({'state_dict': torch.load(checkpoint)['state_dict'], 'meta': {'x': Payload(marker)}}, bad)
    proc = run_cli('val.py', '--config', val_config, '--weights', str(bad), '--device', 'cpu')
    assert proc.returncode != 0
    assert_one_error(proc.stderr, bad, 'system', '--trust-checkpoint')
    assert not marker.exists()


def test_debug_shows_the_traceback(synthetic_infos, tmp_path):
    from engine.config import ConfigError
    config = train_config(tmp_path, synthetic_infos)
    with pytest.raises(ConfigError, match='optimizer.weight_decy'):
        train.main(['--config', config, '--cfg-options', 'optimizer.weight_decy=0.1', '--debug'])


def test_bad_checkpoints_in_val(tiny_val_setup, tmp_path):
    _, config, checkpoint, _ = tiny_val_setup
    data = open(checkpoint, 'rb').read()
    (tmp_path / 'truncated.pth').write_bytes(data[:len(data) // 3])
    (tmp_path / 'empty.pth').write_bytes(b'')
    state = torch.load(checkpoint)['state_dict']
    state['extra.weight'] = torch.zeros(1)
    torch.save(state, tmp_path / 'other_model.pth')
    for name, expected in (('truncated.pth', 'truncated or corrupt'), ('empty.pth', 'empty (0 bytes)'),
                           ('other_model.pth', 'unexpected in the checkpoint (1): extra.weight')):
        path = tmp_path / name
        with pytest.raises(SystemExit) as err:
            val.main(['--config', config, '--weights', str(path), '--device', 'cpu'])
        assert str(err.value).startswith('val.py: error: ')
        assert_one_error(str(err.value), path, expected)


def test_corrupt_prediction_file(tiny_val_setup, tmp_path):
    _, config, _, infos = tiny_val_setup
    with open(infos.val, 'rb') as f:
        tokens = [i['token'] for i in pickle.load(f)['infos']]
    for token in tokens:
        np.savez(tmp_path / f'{token}.npz', sem_pred=np.zeros(1, np.uint8), occ_loc=np.zeros((1, 3), np.uint8))
    victim = tmp_path / f'{tokens[1]}.npz'
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(SystemExit) as err:
        val.main(['--config', config, '--load-preds', str(tmp_path), '--device', 'cpu'])
    assert_one_error(str(err.value), victim, 'not a readable prediction', 'val.py --save-dir')
    np.savez(victim, sem_pred=np.zeros(2, np.uint8))
    with pytest.raises(SystemExit, match=r"lacks the array\(s\) \['occ_loc'\]"):
        val.main(['--config', config, '--load-preds', str(tmp_path), '--device', 'cpu'])


def test_corrupt_nuscenes_table(synthetic_world, tmp_path):
    shutil.copytree(osp.join(synthetic_world.root, 'v1.0-mini'), tmp_path / 'v1.0-mini')
    os.symlink(osp.join(synthetic_world.root, 'maps'), tmp_path / 'maps')
    table = tmp_path / 'v1.0-mini' / 'sample.json'
    table.write_text(table.read_text()[:-40])
    argv = ['--data-root', str(tmp_path), '--version', 'v1.0-mini', '--quiet', '--no-check-files']
    with pytest.raises(SystemExit) as err:
        gen_sweep_info.main(argv)
    assert_one_error(str(err.value), table, 'not valid JSON', 'metadata archive')
    table.write_text('')
    with pytest.raises(SystemExit, match='sample.json: the file is empty'):
        gen_sweep_info.main(argv)
    pickle_path = tmp_path / 'nuscenes_infos_train.pkl'  # an mmdet3d pickle to extend, cut short
    table.write_text(open(osp.join(synthetic_world.root, 'v1.0-mini', 'sample.json')).read())
    pickle_path.write_bytes(pickle.dumps({'infos': [1, 2, 3]})[:10])
    with pytest.raises(SystemExit) as err:
        gen_sweep_info.main(argv)
    assert_one_error(str(err.value), pickle_path, 'cannot read this mmdet3d info pickle')


def test_missing_inputs_of_train_leave_no_work_dir(synthetic_infos, tmp_path):
    cases = [(train_config(tmp_path, synthetic_infos, ann_file=str(tmp_path / 'nope.pkl'), name='a.py'), [],
              'info file not found'),
             (train_config(tmp_path, synthetic_infos, name='b.py'), ['--cfg-options', f'load_from={tmp_path}/w.pth'],
              'pretrained weights not found'),
             (train_config(tmp_path, synthetic_infos, name='c.py'), ['--resume-from', str(tmp_path / 'r.pth')],
              'no such file')]
    for config, extra, expected in cases:
        work = tmp_path / 'outputs' / 'run'
        with pytest.raises(SystemExit) as err:
            train.main(['--config', config, '--work-dir', str(work), '--device', 'cpu', '--no-validate',
                        '--no-progress', *extra])
        assert_one_error(str(err.value), expected)
        assert not (tmp_path / 'outputs').exists(), f'{expected}: the failed run left its work dir behind'


def test_copied_config_and_worker_tracebacks_read_as_one_line(tmp_path):
    copied = tmp_path / 'ops-t.py'
    shutil.copy(osp.join(ROOT, 'configs', 'ops-t_r50_704x256_8f_12e.py'), copied)
    with pytest.raises(SystemExit) as err:
        train.main(['--config', str(copied)])
    assert_one_error(str(err.value), copied, 'copied out of configs/')
    worker = FileNotFoundError('Caught FileNotFoundError in DataLoader worker process 0.\nOriginal Traceback (most '
                               'recent call last):\n  File "x.py", line 1, in f\n'
                               'FileNotFoundError: file not found: a.jpg.')
    assert error_message(worker) == 'file not found: a.jpg.'
    assert error_message(KeyError('OPSS is not in the models registry')) == 'OPSS is not in the models registry'


def test_dict_action_parses_like_mmcv():
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    opts = parser.parse_args(['--cfg-options', 'a=1', 'b=0.5', 'c=true', 'd=None', 'e=[1,2]', 'f=(a,b)', 'g=x,y',
                              'h=[(1,2),[3]]', 'i=text']).cfg_options
    assert opts == dict(a=1, b=0.5, c=True, d=None, e=[1, 2], f=('a', 'b'), g=['x', 'y'], h=[(1, 2), [3]], i='text')
