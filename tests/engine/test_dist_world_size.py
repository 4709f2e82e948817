"""Same training whatever the number of processes: the tiny config with a total batch of 4 trained on
1, 2 and 4 gloo processes (CPU) gives the same per-iteration losses and final weights (fp32 tolerance).

What makes it hold (docs/distributed.md, "Same results for any GPU count"): the sampler deals the
same global batches for any world size and seeds each sample's augmentation from its position in
the epoch (loaders/samplers.py), the photometric distortion draws per sample (SampleSeedHook), the
backbone's BatchNorm is frozen (norm_eval), DDP averages the gradients of equal shares, and the
loss is a mean over samples (dist_helpers.PerSampleLossOPSHead; OPSHead itself normalises one term
by the batch's GT point count). Dropout is off in this config: its masks are drawn per process.
"""
import os.path as osp
import subprocess

import pytest
import torch

import train
from dist_helpers import ROOT, free_port, subprocess_env, train_records, write_config

TIMEOUT = 240


@pytest.fixture(scope='module')
def config(synthetic_infos, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp('world_size') / 'tiny_world_size.py', synthetic_infos)


def run_dist(nproc, config, work_dir):
    proc = subprocess.run(['bash', osp.join(ROOT, 'dist_train.sh'), str(nproc), config, '--work-dir', str(work_dir),
                           '--device', 'cpu', '--no-validate', '--no-progress', '--skip-data-check'],
                          cwd=ROOT, env=subprocess_env(PORT=free_port()), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def state(work_dir):
    return torch.load(osp.join(work_dir, 'latest.pth'), map_location='cpu', weights_only=False)


def test_one_two_and_four_processes_train_the_same(config, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(['--config', config, '--work-dir', str(tmp_path / 'w1'), '--device', 'cpu', '--no-validate',
                    '--no-progress', '--skip-data-check'])
    finally:
        torch.set_num_threads(threads)
    logs = {2: run_dist(2, config, tmp_path / 'w2'), 4: run_dist(4, config, tmp_path / 'w4')}
    assert 'total batch 4, 2 process(es), 2 sample(s) per process' in logs[2]
    assert 'total batch 4, 4 process(es), 1 sample(s) per process' in logs[4]

    reference = train_records(tmp_path / 'w1')
    # 3 samples, global batch 4: one iteration per epoch, 2 epochs (each epoch its own order)
    assert [(r['epoch'], r['iter']) for r in reference] == [(1, 1), (2, 1)]
    ref_state = state(tmp_path / 'w1')
    assert ref_state['meta']['iter'] == 2 and ref_state['meta']['batch']['total_batch'] == 4
    for world_size in (2, 4):
        records = train_records(tmp_path / f'w{world_size}')
        assert [(r['epoch'], r['iter']) for r in records] == [(1, 1), (2, 1)]
        for ref, got in zip(reference, records):
            assert got['lr'] == pytest.approx(ref['lr'], rel=1e-12)
            for key in ref:
                if 'loss' in key:
                    assert got[key] == pytest.approx(ref[key], rel=2e-5, abs=1e-6), (world_size, key)
        got_state = state(tmp_path / f'w{world_size}')
        assert got_state['meta']['batch']['world_size'] == world_size
        weights, ref_weights = got_state['state_dict'], ref_state['state_dict']
        assert weights.keys() == ref_weights.keys()
        for key, ref in ref_weights.items():
            torch.testing.assert_close(weights[key], ref, rtol=1e-4, atol=2e-6, msg=lambda m: f'{world_size}: {key}: {m}')
