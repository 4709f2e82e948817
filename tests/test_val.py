"""val.py end to end on the synthetic world (CPU): model -> predictions -> metrics, saved and reloaded,
one process (online mode) and two gloo processes (offline mode) giving the same predictions."""
import json
import os
import os.path as osp
import re
import socket
import subprocess

import numpy as np
import pytest
import torch

import val
from evaluation import SavedPredictions, evaluate_occupancy

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_single_process_save_reload_and_metrics(tiny_val_setup, single_run):
    work, config, checkpoint, infos = tiny_val_setup
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


def test_random_init_baseline_and_bad_flags(tiny_val_setup, capsys):
    work, config, checkpoint, _ = tiny_val_setup
    metrics = val.main(['--config', config, '--random-init', '--device', 'cpu'])
    assert metrics['mIoU'] == 0.0  # nothing passes the score threshold: every class IoU is 0
    out = capsys.readouterr().out
    assert 'mIoU 0.00 | RayIoU' in out and '===> mIoU of 3 samples: 0.0' in out and 'IoU (%)' in out
    # the steady rate leaves out the first sample (graph capture, kernel compilation on a GPU)
    assert re.search(r'inference: 3 samples on rank 0 in [\d.]+ s; after the first batch \([\d.]+ s: graph capture, '
                     r'kernel compilation\) [\d.]+ samples/s', out)
    assert re.search(r'metrics: 3 samples in [\d.]+ s on cpu', out)
    for argv, message in ((['--config', config], 'exactly one of'),
                          (['--config', config, '--weights', checkpoint, '--random-init'], 'exactly one of'),
                          (['--config', config, '--weights', checkpoint, '--batch_size', '0'], 'must be >= 1')):
        with pytest.raises(SystemExit):
            val.parse_args(argv)
        assert message in capsys.readouterr().err
    # a bad input file: one line (engine/cli.py), not argparse's usage text
    with pytest.raises(SystemExit, match=r'^val.py: error: --weights: checkpoint not found: .*missing.pth$'):
        val.main(['--config', config, '--weights', str(work / 'missing.pth')])


def test_checkpoint_of_another_model_is_refused(tiny_val_setup):
    work, config, checkpoint, _ = tiny_val_setup
    state = torch.load(checkpoint, weights_only=False)['state_dict']
    state['extra.weight'] = torch.zeros(1)
    del state[next(iter(state))]
    bad = work / 'bad.pth'
    torch.save(state, bad)
    with pytest.raises(SystemExit, match='extra.weight'):
        val.main(['--config', config, '--weights', str(bad), '--device', 'cpu'])


def test_two_processes_offline_mode_match_one_process(tiny_val_setup, single_run):
    work, config, checkpoint, _ = tiny_val_setup
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


def test_batched_offline_inference_matches_online(tiny_val_setup, single_run, capsys):
    """--batch-size 2: offline mode, two samples per forward (the throughput path of evaluation): the same
    predictions and metrics as the online run, one sample at a time, on the CPU."""
    work, config, checkpoint, _ = tiny_val_setup
    single, one, _ = single_run
    batched = work / 'preds_batched'
    metrics = val.main(['--config', config, '--weights', checkpoint, '--device', 'cpu', '--batch-size', '2',
                        '--save-dir', str(batched)])
    out = capsys.readouterr().out
    assert 'offline, faithful, batch 2' in out
    # the first batch holds 2 of the 3 samples: the steady rate is that of the third
    assert re.search(r'inference: 3 samples on rank 0 in [\d.]+ s; after the first batch', out)
    assert sorted(os.listdir(batched)) == sorted(os.listdir(one))
    for name in os.listdir(one):
        a, b = np.load(one / name), np.load(batched / name)
        np.testing.assert_array_equal(a['occ_loc'], b['occ_loc'])
        np.testing.assert_array_equal(a['sem_pred'], b['sem_pred'])
    assert metrics == single


def test_gpu_decode_runs_the_same_model_on_the_decoded_images(tiny_val_setup, single_run, capsys):
    """--gpu-decode (execution.gpu_decode): the loaders hand JPEG bytes to the model, which decodes and resizes
    them itself (on the CPU here; nvJPEG on a GPU). Its resize differs from PIL's by up to 2 grey levels on some
    pixels (tests/loaders/test_gpu_decode.py), far below what moves a voxel of this model except at a score
    threshold: the predictions of every sample agree with the CPU pipeline's."""
    work, config, checkpoint, _ = tiny_val_setup
    _, one, _ = single_run
    decoded = work / 'preds_gpu_decode'
    val.main(['--config', config, '--weights', checkpoint, '--device', 'cpu', '--gpu-decode', '--save-dir',
              str(decoded)])
    assert sorted(os.listdir(decoded)) == sorted(os.listdir(one))
    same = union = 0
    for name in os.listdir(one):
        a, b = np.load(one / name), np.load(decoded / name)
        cells_a = {tuple(c) + (s,) for c, s in zip(a['occ_loc'], a['sem_pred'])}
        cells_b = {tuple(c) + (s,) for c, s in zip(b['occ_loc'], b['sem_pred'])}
        same, union = same + len(cells_a & cells_b), union + len(cells_a | cells_b)
    assert union > 0 and same / union > 0.9
    assert 'execution: faithful (gpu_decode=True)' in capsys.readouterr().out
    from engine.build import use_gpu_decode
    from engine.config import load_config
    steps = [step['type'] for step in use_gpu_decode(load_config(config, required=('data',))).data.val.pipeline]
    assert steps[0] == 'LoadMultiViewJpegFromFiles' and 'LoadMultiViewImageFromFiles' not in steps
