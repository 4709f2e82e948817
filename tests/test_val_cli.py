"""val.py end to end on the synthetic world (CPU): model -> predictions -> metrics, saved and reloaded,
one process (online mode) and two gloo processes (offline mode) giving the same predictions."""
import json
import os
import os.path as osp
import socket
import subprocess

import numpy as np
import pytest
import torch

import val
from loaders.occ_eval import SavedPredictions, evaluate_occupancy

from tiny_ops import TINY_MODEL_CONFIG, TINY_PIPELINES

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# The tiny OPS (tests/tiny_ops.py) on the synthetic world's 160x90 images.
CONFIG = TINY_MODEL_CONFIG + TINY_PIPELINES + '''
data = dict(workers_per_gpu=0, val=dict(type='NuScenesOccDataset', data_root={root!r}, occ_root=occ_root,
                                        ann_file={ann_file!r}, pipeline=_test_pipeline, test_mode=True))
'''


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def setup(synthetic_infos, tmp_path_factory):
    """The config file and a checkpoint whose class bias lets many points through the 0.5 threshold."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp('val_cli')
    config = work / 'tiny_ops.py'
    config.write_text(CONFIG.format(root=synthetic_infos.root, occ_root=osp.join(synthetic_infos.root, 'gts'),
                                    ann_file=synthetic_infos.val))
    import models  # noqa: F401
    from mmcv import Config
    from mmdet.models import build_detector
    torch.manual_seed(0)
    model = build_detector(Config.fromfile(str(config)).model)
    model.init_weights()
    with torch.no_grad():  # untrained, the class bias -4.6 lets nothing through the 0.5 threshold; +7.6 -> +3
        for name, param in model.named_parameters():
            if 'cls_branch' in name and name.endswith('bias') and param.shape[0] % 17 == 0:
                param.add_(7.6)
    checkpoint = work / 'tiny.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    return work, str(config), str(checkpoint), synthetic_infos


@pytest.fixture(scope='module')
def single_run(setup):
    """One val.py run (one process, online mode) with saved predictions: (metrics, preds dir, json path)."""
    work, config, checkpoint, _ = setup
    preds, summary = work / 'preds', work / 'metrics.json'
    metrics = val.main(['--config', config, '--weights', checkpoint, '--device', 'cpu', '--save-dir', str(preds),
                        '--summary-json', str(summary)])
    return metrics, preds, summary


def test_single_process_save_reload_and_metrics(setup, single_run):
    work, config, checkpoint, infos = setup
    metrics, preds, summary = single_run
    assert set(metrics) == {'mIoU', 'RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'}
    with open(summary) as f:
        assert json.load(f)['RayIoU'] == metrics['RayIoU']

    import mmcv
    data_infos = sorted(mmcv.load(infos.val)['infos'], key=lambda e: e['timestamp'])
    tokens = [info['token'] for info in data_infos]
    assert sorted(os.listdir(preds)) == sorted(f'{t}.npz' for t in tokens)
    saved = SavedPredictions(str(preds), tokens)
    assert sum(len(saved[i]['sem_pred']) for i in range(len(saved))) > 0  # the model predicted something
    # Evaluating the saved files, through val.py and directly, gives the same numbers.
    assert val.main(['--config', config, '--load-preds', str(preds), '--device', 'cpu']) == metrics
    direct = evaluate_occupancy(saved, data_infos, osp.join(infos.root, 'gts'), logger='silent', device='cpu',
                                show_progress=False)
    assert direct == metrics


def test_random_init_baseline_and_bad_flags(setup, capsys):
    work, config, checkpoint, _ = setup
    metrics = val.main(['--config', config, '--random-init', '--device', 'cpu'])
    assert metrics['mIoU'] == 0.0  # nothing passes the score threshold: every class IoU is 0
    out = capsys.readouterr().out
    assert 'mIoU 0.00 | RayIoU' in out and '===> mIoU of 3 samples: 0.0' in out and 'IoU (%)' in out
    for argv, message in ((['--config', config], 'exactly one of'),
                          (['--config', config, '--weights', checkpoint, '--random-init'], 'exactly one of'),
                          (['--config', config, '--weights', str(work / 'missing.pth')], 'checkpoint not found'),
                          (['--config', config, '--weights', checkpoint, '--batch_size', '2'], 'must be 1')):
        with pytest.raises(SystemExit):
            val.parse_args(argv)
        assert message in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(setup):
    work, config, checkpoint, _ = setup
    state = torch.load(checkpoint, weights_only=False)['state_dict']
    state['extra.weight'] = torch.zeros(1)
    del state[next(iter(state))]
    bad = work / 'bad.pth'
    torch.save(state, bad)
    with pytest.raises(RuntimeError, match='extra.weight'):
        val.main(['--config', config, '--weights', str(bad), '--device', 'cpu'])


def test_two_processes_offline_mode_match_one_process(setup, single_run):
    work, config, checkpoint, _ = setup
    single, one, _ = single_run
    two = work / 'preds_two'
    env = dict(os.environ, OMP_NUM_THREADS='1', MASTER_PORT=str(free_port()))
    proc = subprocess.run(['bash', osp.join(ROOT, 'dist_val.sh'), '2', config, checkpoint, '--device', 'cpu',
                           '--save-dir', str(two), '--summary-json', str(work / 'two.json')],
                          cwd=str(work), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'mode offline' in proc.stdout + proc.stderr
    for name in os.listdir(one):  # offline mode recomputes the history features: same predictions on the CPU
        a, b = np.load(one / name), np.load(two / name)
        np.testing.assert_array_equal(a['occ_loc'], b['occ_loc'])
        np.testing.assert_array_equal(a['sem_pred'], b['sem_pred'])
    with open(work / 'two.json') as f:
        multi = json.load(f)
    assert {k: multi[k] for k in single} == single
    assert not (work / '.dist_test').exists()


def test_timing_prints_the_protocol_lines(setup, capsys):
    import timing
    work, config, checkpoint, _ = setup
    fps = timing.main(['--config', config, '--weights', checkpoint, '--device', 'cpu', '--num-warmup', '1',
                       '--samples', '3', '--log-interval', '1'])
    out = capsys.readouterr().out
    assert fps > 0
    assert f'config:    {config}' in out and 'device:    CPU' in out and 'precision: fp32, batch 1, online' in out
    assert 'Done sample [2  / 3], fps:' in out and 'Done sample [3  / 3], fps:' in out
    assert 'Done sample [1 ' not in out  # warm-up samples are not reported
    assert 'Overall fps' in out
    timing.main(['--config', config, '--device', 'cpu', '--num-warmup', '1', '--samples', '50'])
    out = capsys.readouterr().out
    assert 'random initialisation' in out and 'the val set has only 3' in out
    with pytest.raises(SystemExit):
        timing.parse_args(['--config', config, '--samples', '5', '--num-warmup', '5'])
