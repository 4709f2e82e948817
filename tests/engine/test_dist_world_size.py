"""Same training whatever the number of processes: the tiny config with a total batch of 4 trained on
1, 2 and 4 gloo processes (CPU), and on 1 process with 1 sample x 4 accumulated iterations, gives
the same per-iteration losses and final weights (fp32 tolerance).

What makes it hold (docs/distributed.md, "Same results for any GPU count"): the sampler deals the
same global batches for any world size and seeds each sample's augmentation from its position in
the epoch (loaders/samplers.py), the photometric distortion draws per sample (SampleSeedHook), the
backbone's BatchNorm is frozen (norm_eval), DDP averages the gradients of equal shares, and the
loss is a mean over samples (OPSHead normalises each sample by its own point counts). Dropout is off in
this config: its masks are drawn per process.
"""
import os.path as osp
import subprocess

import numpy as np
import pytest
import torch

import train
from dist_helpers import ROOT, checkpoint_lr, free_port, subprocess_env, train_records, write_config

TIMEOUT = 300
# Adam's first steps move every weight by about lr = 2e-4 in the direction of its gradient's sign: another
# batch, order or augmentation moves weights by that much. What the runs do differ by is float32 rounding
# (sums over another split of the batch), which Adam passes on, at most ~1e-6 here, to the attention key bias
# (a parameter whose gradient is zero up to rounding).
WEIGHT_ATOL, WEIGHT_RTOL = 5e-6, 1e-4


def run_in_process(config, work_dir, *extra):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(['--config', config, '--work-dir', str(work_dir), '--device', 'cpu', '--no-validate',
                    '--no-progress', '--skip-data-check', *extra])
    finally:
        torch.set_num_threads(threads)


def run_dist(nproc, config, work_dir):
    proc = subprocess.run(['bash', osp.join(ROOT, 'dist_train.sh'), str(nproc), config, '--work-dir', str(work_dir),
                           '--device', 'cpu', '--no-validate', '--no-progress', '--skip-data-check'],
                          cwd=ROOT, env=subprocess_env(PORT=free_port()), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def checkpoint(work_dir):
    return torch.load(osp.join(work_dir, 'latest.pth'), map_location='cpu', weights_only=False)


def assert_same_weights(got, ref, what):
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL,
                                   msg=lambda m: f'{what}: {key}: {m}')


@pytest.fixture(scope='module')
def config(synthetic_infos, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp('world_size') / 'tiny_world_size.py', synthetic_infos)


@pytest.fixture(scope='module')
def reference(config, tmp_path_factory):
    """One process, 4 samples per iteration: (per-iteration log records, checkpoint)."""
    work_dir = tmp_path_factory.mktemp('world_size_1')
    run_in_process(config, work_dir)
    records = train_records(work_dir)
    # 3 samples, global batch 4: one iteration per epoch, 2 epochs (each epoch its own order)
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 1), (2, 1)]
    # cosine by epoch: 2e-4, then (2e-4 + 2e-7) / 2
    assert checkpoint_lr(work_dir / 'epoch_1.pth') == pytest.approx(2e-4, rel=1e-9)
    assert checkpoint_lr(work_dir / 'epoch_2.pth') == pytest.approx(1.001e-4, rel=1e-9)
    state = checkpoint(work_dir)
    assert state['meta']['iter'] == 2 and state['meta']['batch']['total_batch'] == 4
    return records, state


def test_two_and_four_processes_train_like_one(config, reference, tmp_path):
    ref_records, ref_state = reference
    logs = {2: run_dist(2, config, tmp_path / 'w2'), 4: run_dist(4, config, tmp_path / 'w4')}
    assert 'total batch 4, 2 process(es), 2 sample(s) per process' in logs[2]
    assert 'total batch 4, 4 process(es), 1 sample(s) per process' in logs[4]
    for world_size in (2, 4):
        records = train_records(tmp_path / f'w{world_size}')
        assert [(r['epoch'], r['iter']) for r in records] == [(1, 1), (2, 1)]
        for ref, got in zip(ref_records, records):
            assert got['lr'] == ref['lr']
            for key in ref:
                if 'loss' in key:  # the logged losses are the mean over all processes' samples
                    assert got[key] == pytest.approx(ref[key], rel=2e-5, abs=1e-6), (world_size, key)
        state = checkpoint(tmp_path / f'w{world_size}')
        assert state['meta']['batch']['world_size'] == world_size
        assert checkpoint_lr(tmp_path / f'w{world_size}' / 'epoch_2.pth') == pytest.approx(1.001e-4, rel=1e-9)
        assert_same_weights(state['state_dict'], ref_state['state_dict'], f'{world_size} processes')


def test_gradient_accumulation_trains_like_one_batch(config, reference, tmp_path):
    """1 sample per process pinned (memory): 4 iterations are accumulated into each step of 4 samples."""
    ref_records, ref_state = reference
    run_in_process(config, tmp_path, '--cfg-options', 'data.samples_per_gpu=1')
    records = train_records(tmp_path)
    assert [(r['epoch'], r['iter']) for r in records] == [(e, i) for e in (1, 2) for i in (1, 2, 3, 4)]
    for epoch, ref in zip((1, 2), ref_records):
        micro = [r for r in records if r['epoch'] == epoch]
        assert all(r['lr'] == ref['lr'] for r in micro)
        for key in ref:
            if 'loss' in key:  # each micro-iteration logs its sample's loss; the step's loss is their mean
                assert np.mean([r[key] for r in micro]) == pytest.approx(ref[key], rel=2e-5, abs=1e-6), key
    state = checkpoint(tmp_path)
    assert checkpoint_lr(tmp_path / 'epoch_2.pth') == pytest.approx(1.001e-4, rel=1e-9)
    assert state['meta']['iter'] == 8
    assert state['meta']['batch'] == dict(world_size=1, samples_per_gpu=1, cumulative_iters=4, total_batch=4,
                                          lr_scale=1.0)
    assert_same_weights(state['state_dict'], ref_state['state_dict'], 'accumulation')
