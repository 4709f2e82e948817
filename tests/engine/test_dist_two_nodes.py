"""Two nodes on one machine (CPU, gloo): `NNODES=2 NODE_RANK=0|1 bash dist_train.sh 1 ...` (torchrun
--nnodes 2, rendezvous on 127.0.0.1) trains the first epoch (2 iterations) of the tiny config, each
node in its own folder (no shared filesystem): checkpoints are written by rank 0 only, the
evaluation at the end of the epoch gathers its results through the process group, and a run
resumed from rank 0's checkpoint on one process continues the schedule (epoch, iteration, lr).
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import train
from dist_helpers import ROOT, checkpoint_lr, free_port, subprocess_env, train_records, write_config

TIMEOUT = 300
# mmcv's cosine lr end + (start - end) * (cos(pi * progress) + 1) / 2 with end = start * 1e-3: three float64
# roundings (end, the difference, the sum; cos(0) + 1 = 2 and cos(pi / 2) + 1 = 1.0 exactly after rounding),
# <= 1.5 EPS relative; the literal on the other side adds its own half EPS
LR_REL = 4 * sys.float_info.epsilon


def start_node(node_rank, port, config, folder):
    folder.mkdir()
    env = subprocess_env(NNODES=2, NODE_RANK=node_rank, MASTER_ADDR='127.0.0.1', PORT=port)
    args = ['bash', osp.join(ROOT, 'dist_train.sh'), '1', config, '--work-dir', str(folder / 'work'), '--device', 'cpu',
            '--no-progress', '--skip-data-check', '--cfg-options', 'batch_size=2', 'eval_config.interval=1']
    log = open(folder / 'node.log', 'w')
    return subprocess.Popen(args, cwd=str(folder), env=env, stdout=log, stderr=subprocess.STDOUT), log


def test_two_nodes_then_resume_on_one_process(synthetic_infos, tmp_path):
    config = write_config(tmp_path / 'tiny_two_nodes.py', synthetic_infos)
    stopping = tmp_path / 'tiny_two_nodes_stop_after_epoch_1.py'  # the same 2-epoch schedule, ended after epoch 1
    stopping.write_text(f'_base_ = [{config!r}]\n'
                        'custom_hooks = [dict(type="StopAfterEpochHook", epochs=1, priority="LOWEST")]\n')
    port = free_port()
    nodes = [start_node(rank, port, str(stopping), tmp_path / f'node{rank}') for rank in (0, 1)]
    try:
        codes = [proc.wait(timeout=TIMEOUT) for proc, _ in nodes]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    output = [(tmp_path / f'node{rank}' / 'node.log').read_text() for rank in (0, 1)]
    assert codes == [0, 0], output[0][-3000:] + output[1][-3000:]

    work0, work1 = tmp_path / 'node0' / 'work', tmp_path / 'node1' / 'work'
    assert 'world size 2' in output[0] and 'total batch 2, 2 process(es), 1 sample(s) per process' in output[0]
    assert os.readlink(work0 / 'latest.pth') == 'epoch_1.pth'
    assert not work1.exists() or os.listdir(work1) == [], 'rank 1 wrote into its work dir (checkpoints, logs)'
    first = torch.load(work0 / 'latest.pth', map_location='cpu', weights_only=False)['meta']
    # 3 samples, global batch 2 -> 2 iterations per epoch
    assert (first['epoch'], first['iter']) == (1, 2)
    assert first['batch'] == dict(world_size=2, samples_per_gpu=1, cumulative_iters=1, total_batch=2, lr_scale=1.0)
    assert checkpoint_lr(work0 / 'epoch_1.pth') == pytest.approx(2e-4, rel=LR_REL)
    assert [(r['epoch'], r['iter']) for r in train_records(work0)] == [(1, 1), (1, 2)]
    # the evaluation of epoch 1 ran on both nodes, its results gathered without a shared folder
    evals = [r for r in _val_records(work0) if 'mIoU' in r]
    assert evals and evals[-1]['epoch'] == 1
    assert not [p for p in tmp_path.rglob('.eval_hook')], 'evaluation wrote a temporary folder'

    # resume on one process (world size 1, same total batch): epoch 2, iterations 3-4, the cosine lr of epoch 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(['--config', config, '--work-dir', str(work0), '--device', 'cpu', '--no-validate', '--no-progress',
                    '--skip-data-check', '--cfg-options', 'batch_size=2'])
    finally:
        torch.set_num_threads(threads)
    assert os.readlink(work0 / 'latest.pth') == 'epoch_2.pth'
    final = torch.load(work0 / 'latest.pth', map_location='cpu', weights_only=False)['meta']
    assert (final['epoch'], final['iter']) == (2, 4)
    assert final['batch']['world_size'] == 1 and final['batch']['samples_per_gpu'] == 2
    assert checkpoint_lr(work0 / 'epoch_2.pth') == pytest.approx(1.001e-4, rel=LR_REL)  # cosine: (2e-4 + 2e-7) / 2
    # the resumed run's own log: epoch 2, its 2 iterations, each at the lr of epoch 2 (0.0001 in 5 decimals)
    records = train_records(work0)
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [r['lr'] for r in records] == [0.0002, 0.0002, 0.0001, 0.0001]


def _val_records(work_dir):
    import json
    out = []
    for name in os.listdir(work_dir):
        if name.endswith('.log.json'):
            with open(work_dir / name) as f:
                out += [r for r in map(json.loads, f) if r.get('mode') == 'val']
    return out


@pytest.mark.parametrize('variables, expected', [
    (dict(), dict(nnodes='1', node_rank='0', nproc_per_node='3', master_addr='127.0.0.1')),
    (dict(NNODES='4', NODE_RANK='2', MASTER_ADDR='node-a'),
     dict(nnodes='4', node_rank='2', nproc_per_node='3', master_addr='node-a', master_port='29500')),
    (dict(NNODES='2', PORT='31234'), dict(nnodes='2', master_port='31234')),
    (dict(MASTER_PORT='31235'), dict(nnodes='1', master_port='31235')),
])
def test_dist_scripts_pass_the_node_variables_to_torchrun(tmp_path, variables, expected):
    """A stand-in interpreter records what dist_train.sh / dist_val.sh hand to torchrun."""
    fake = tmp_path / 'python'
    fake.write_text('#!/usr/bin/env bash\n'
                    'if [ "$1" = -c ]; then exec python3 "$@"; fi\n'  # the free-port one-liner
                    f'printf "%s\\n" "$@" > {tmp_path}/argv\n')
    fake.chmod(0o755)
    names = ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT', 'MASTER_PORT')
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(variables, PYTHON=str(fake))
    for script, args in (('dist_train.sh', ['3', 'cfg.py', '--seed', '1']), ('dist_val.sh', ['3', 'cfg.py', 'w.pth'])):
        subprocess.run(['bash', osp.join(ROOT, script), *args], env=env, check=True, timeout=60)
        argv = (tmp_path / 'argv').read_text().split('\n')[:-1]
        assert argv[:2] == ['-m', 'torch.distributed.run'], argv
        flags = dict(zip(argv[2:], argv[3:]))
        for name, value in expected.items():
            assert flags[f'--{name}'] == value, (script, name, argv)
        assert 1024 <= int(flags['--master_port']) < 65536
        assert flags['--launcher'] == 'pytorch' and flags['--config'] == 'cfg.py', argv
