"""train.py end to end on the tiny synthetic world (CPU): checkpoints, resume, 2-process gloo, bad inputs."""
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmcv.runner import HOOKS, Hook

import train
from tiny_ops import TINY_MODEL_CONFIG, TINY_PIPELINES, TINY_TRAIN_DATA_AND_ADAMW, write_tiny_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# The tiny OPS (tests/tiny_ops.py) on the tiny world's 160x90 images.
CONFIG = TINY_MODEL_CONFIG + TINY_PIPELINES + TINY_TRAIN_DATA_AND_ADAMW + '''
batch_size = 1
total_epochs = 2
optimizer_config = dict(type='Fp16OptimizerHook', loss_scale=512.0, grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(policy='CosineAnnealing', warmup='linear', warmup_iters=2, warmup_ratio=1.0 / 3, min_lr_ratio=1e-3)
checkpoint_config = dict(interval=1, max_keep_ckpts=1)
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook', interval=1, reset_flag=True),
                                     dict(type='TensorboardLoggerHook', interval=1, reset_flag=True)])
eval_config = dict(interval=total_epochs)
load_from = None
'''


@pytest.fixture(scope='module')
def tiny_config(synthetic_infos, tmp_path_factory):
    work = tmp_path_factory.mktemp('train')
    return write_tiny_config(work / 'tiny_train.py', CONFIG, synthetic_infos), synthetic_infos


def run_train(config, work_dir, *extra):
    train.main(['--config', config, '--work-dir', str(work_dir), '--device', 'cpu', '--no-progress', *extra])


def final_weights(work_dir):
    return torch.load(osp.join(work_dir, 'latest.pth'), map_location='cpu', weights_only=False)['state_dict']


def epoch2_losses(work_dir):
    """The logged total losses of the second epoch (JSON logs of all runs in the work dir)."""
    import json
    losses = []
    for name in sorted(os.listdir(work_dir)):
        if name.endswith('.log.json'):
            with open(osp.join(work_dir, name)) as f:
                losses += [r['loss'] for r in map(json.loads, f) if r.get('mode') == 'train' and r.get('epoch') == 2]
    assert losses, f'no epoch-2 losses logged in {work_dir}'
    return losses


@HOOKS.register_module()
class InterruptAfterFirstEpoch(Hook):
    """Simulates a killed run: raises after the checkpoint of epoch 1 is written."""

    def after_train_epoch(self, runner):
        if runner.epoch == 0:
            raise KeyboardInterrupt('simulated kill after epoch 1')


def test_training_writes_logs_and_checkpoints_and_resumes_to_the_same_weights(tiny_config, tmp_path):
    config, _ = tiny_config
    # one thread: multi-threaded CPU reductions may differ in the last bit from run to run, and Adam turns
    # last-bit noise in zero-mean gradients (the attention key bias) into lr-sized steps
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed_run_matches_straight_run(config, tmp_path)
    finally:
        torch.set_num_threads(threads)


def resumed_run_matches_straight_run(config, tmp_path):
    straight = tmp_path / 'straight'
    run_train(config, straight, '--no-validate')
    assert os.readlink(straight / 'latest.pth') == 'epoch_2.pth'
    assert not (straight / 'epoch_1.pth').exists(), 'max_keep_ckpts=1 keeps only the newest epoch'
    logs = [f for f in os.listdir(straight) if f.endswith('.log.json')]
    assert logs, 'mmcv JSON log missing'
    assert any(d.startswith('tf_logs') for d in os.listdir(straight)), 'TensorBoard log missing'
    with open(straight / logs[0]) as f:
        text = f.read()
    assert '"loss":' in text and 'nan' not in text.lower()

    interrupted = tmp_path / 'interrupted'
    killing_config = tmp_path / 'killed_after_epoch_1.py'
    killing_config.write_text(f'_base_ = [{config!r}]\n'
                              'custom_hooks = [dict(type="InterruptAfterFirstEpoch", priority="LOWEST")]\n')
    with pytest.raises(KeyboardInterrupt):
        run_train(str(killing_config), interrupted, '--no-validate')
    assert os.readlink(interrupted / 'latest.pth') == 'epoch_1.pth'
    run_train(config, interrupted, '--no-validate')  # auto-resume from latest.pth
    expected, resumed = final_weights(straight), final_weights(interrupted)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), f'{key} differs after resume'
    assert epoch2_losses(straight) == epoch2_losses(interrupted)


def test_training_with_evaluation_reports_metrics(tiny_config, tmp_path):
    config, _ = tiny_config
    run_train(config, tmp_path, '--cfg-options', 'total_epochs=1', 'eval_config.interval=1')
    logs = [f for f in os.listdir(tmp_path) if f.endswith('.log.json')]
    with open(tmp_path / logs[0]) as f:
        text = f.read()
    assert '"mIoU"' in text and '"RayIoU"' in text


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_two_gloo_processes(tiny_config, tmp_path):
    config, _ = tiny_config
    env = dict(os.environ, PORT=str(free_port()), PYTHON=sys.executable)
    proc = subprocess.run(['bash', osp.join(ROOT, 'dist_train.sh'), '2', config, '--work-dir', str(tmp_path),
                           '--device', 'cpu', '--no-validate', '--no-progress',
                           '--cfg-options', 'total_epochs=1', 'batch_size=2'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'world size 2' in proc.stderr + proc.stdout
    assert 'total batch 2, 2 process(es), 1 sample(s) per process' in proc.stderr + proc.stdout
    assert os.readlink(tmp_path / 'latest.pth') == 'epoch_1.pth'
    state = torch.load(tmp_path / 'latest.pth', map_location='cpu', weights_only=False)
    # 3 training samples, 2 processes x 1: the distributed sampler pads to 4 -> 2 iterations
    assert state['meta']['iter'] == 2


def test_corrupt_checkpoint_gives_a_clear_error(tiny_config, tmp_path):
    config, _ = tiny_config
    (tmp_path / 'epoch_3.pth').write_bytes(b'PK\x03\x04 this is not a checkpoint')
    with pytest.raises(SystemExit, match='cannot resume from .*epoch_3.pth.*corrupt'):
        run_train(config, tmp_path, '--no-validate')


@pytest.mark.parametrize('option, message', [
    ('model.type=OPSS', "model.type: 'OPSS' is not a registered model; did you mean OPS?"),
    ('model.pts_bbox_head.num_qeury=3', 'num_qeury'),
    ('totl_epochs=3', 'unknown top-level key'),
])
def test_bad_config_values_give_clear_errors(tiny_config, tmp_path, option, message):
    config, _ = tiny_config
    with pytest.raises(SystemExit, match=message):
        run_train(config, tmp_path, '--no-validate', '--cfg-options', option)


def test_missing_image_file_names_the_file(tiny_config, tmp_path):
    config, infos = tiny_config
    with open(infos.train, 'rb') as f:
        data = pickle.load(f)
    cam = data['infos'][0]['cams']['CAM_FRONT']
    cam['data_path'] = cam['data_path'].replace('.jpg', '_missing.jpg')
    broken = tmp_path / 'broken_infos.pkl'
    with open(broken, 'wb') as f:
        pickle.dump(data, f)
    # found by the data check before training (loaders/data_check.py), one line
    with pytest.raises(SystemExit, match='data check: .*_missing.jpg'):
        run_train(config, tmp_path, '--no-validate', '--cfg-options', f'data.train.ann_file={broken}')
    # without it, when the sample is drawn: the worker's traceback is reduced to its last line
    with pytest.raises(SystemExit, match=r'^train.py: error: .*_missing.jpg[^\n]*$'):
        run_train(config, tmp_path, '--no-validate', '--skip-data-check', '--cfg-options',
                  f'data.train.ann_file={broken}', 'data.workers_per_gpu=1')


def test_fast_training_path_follows_the_faithful_loss_curve(tiny_config, tmp_path, caplog):
    """train.py --fast (lazy logging, fused AdamW that skips non-finite steps on the device, no
    gradient checkpointing) computes the faithful path's function: the same logged losses to float32
    rounding over an epoch, and nearly the same final weights."""
    import json
    config, _ = tiny_config
    faithful, fast = tmp_path / 'faithful', tmp_path / 'fast'
    run_train(config, faithful, '--no-validate', '--cfg-options', 'total_epochs=1')
    run_train(config, fast, '--no-validate', '--fast', '--cfg-options', 'total_epochs=1')

    def losses(work_dir):
        name = next(n for n in os.listdir(work_dir) if n.endswith('.log.json'))
        with open(osp.join(work_dir, name)) as f:
            return [r['loss'] for r in map(json.loads, f) if r.get('mode') == 'train']

    a, b = losses(faithful), losses(fast)
    assert len(a) == len(b) > 0
    # The fast projection rounds differently (~1e-7 of the losses, see tests/engine/test_train_step.py) and the
    # weights then differ where AdamW turned gradient noise into steps: on gradients that are zero or at the noise
    # level, which the losses feel only to second order (rtol 1e-5); the JSON log rounds to 5 decimals, so two
    # nearly equal losses can print one unit of the last decimal apart (atol 2e-5)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-5)
    wa, wb = final_weights(faithful), final_weights(fast)
    assert wa.keys() == wb.keys()
    # Worst case, the rounding noise gives a weight the opposite AdamW step in the two runs at every iteration: each
    # step is lr * m / (sqrt(v) + eps) with |m| / sqrt(v) <= 1.005 over three steps (beta 0.9, 0.999), and the lrs of
    # the three iterations (linear warmup from 1/3 over 2 iterations, then 2e-4) sum to 4e-4: <= 2 x 1.005 x 4e-4 =
    # 8.0e-4, whatever the weight's size
    for key in wa:
        if wa[key].is_floating_point():
            torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-3, msg=key)
    assert any('execution: fast' in r.getMessage() for r in caplog.records)


def test_a_second_run_in_the_same_process_writes_its_own_log_file(tmp_path):
    """mmcv sets its logger up once per process; train.setup_logger gives each run its own file all the same."""
    import train
    paths = []
    for run in ('first', 'second'):
        work_dir = tmp_path / run
        work_dir.mkdir()
        train.setup_logger(str(work_dir), rank=0).info(f'message of the {run} run')
        paths += list(work_dir.glob('train_*.log'))
    assert len(paths) == 2
    assert 'message of the first run' in paths[0].read_text() and 'second' not in paths[0].read_text()
    assert 'message of the second run' in paths[1].read_text()
