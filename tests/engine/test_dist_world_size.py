"""Same training whatever the number of processes: the tiny config with a total batch of 4 trained on
1, 2 and 4 gloo processes (CPU), and on 1 process with 1 sample x 4 accumulated iterations, gives
the same per-iteration losses and final weights (fp32 tolerance).

What makes it hold (docs/distributed.md, "Same results for any GPU count"): the sampler deals the
same global batches for any world size and seeds each sample's augmentation from its position in
the epoch (loaders/samplers.py), the photometric distortion draws per sample (SampleSeedHook), the
backbone's BatchNorm is frozen (norm_eval), DDP averages the gradients of equal shares, and the
loss is a mean over samples (OPSHead normalises each sample by its own point counts). Dropout is off in
this config: its masks are drawn per process.

What is compared: the runs differ only in float32 summation order (another split of the batch, the
all-reduce's order), so the check must be exact in that. These runs train with SGD, whose update is linear
in the gradient: each parameter tensor's total update (final weights minus the common initial weights)
equals the reference's up to the gradients' rounding. The authors' AdamW is not used here because it
amplifies rounding: its update lr * g / (sqrt(v) + 1e-8) moves by up to lr * |dg| / 1e-8 for a gradient
near zero, so a summation-order difference of 1e-13 in such a gradient moves the weight by lr * 1e-5,
and a sign flip of a gradient that is zero up to rounding moves it by 2 * lr, as much as a real error.
"""
import os.path as osp
import subprocess

import numpy as np
import pytest
import torch

import train
from dist_helpers import ROOT, checkpoint_lr, free_port, subprocess_env, train_records, write_config
from throughput_checks import assert_samples_per_second

TIMEOUT = 300
LR = 0.02  # SGD's base lr: large enough that an update stands far above the weights' own float32 rounding
# SGD with momentum and weight decay (both linear), the tiny config's lr multipliers kept
SGD_CONFIG = f"""
optimizer = dict(type='SGD', lr={LR}, momentum=0.9, weight_decay=0.01,
                 paramwise_cfg=dict(custom_keys={{'img_backbone': dict(lr_mult=0.1),
                                                  'sampling_offset': dict(lr_mult=0.1)}}))
custom_hooks = [dict(type='SaveInitialWeightsHook')]
"""
# The gradients of two runs differ by float32 summation order alone. A float32 sum of K terms is within
# K * 2^-24 of the exact sum, relative to the sum of the terms' magnitudes; the longest reduction of this
# model is the FPN's stride-4 lateral weight gradient over 4 samples x 6 cameras x 16 x 40 positions,
# K = 15,360: 15,360 * 2^-24 = 9.2e-4. A tensor's update is compared in norm (its largest elements, not
# gradients that are zero up to rounding, set the scale). A real error (other samples, a sum instead of a
# mean, another lr) moves the update by tens of percent.
UPDATE_RTOL = 15_360 * 2.0 ** -24
# Each of the 2 steps rounds every weight to float32 once (half an ulp, 2^-24 relative, per run): the
# two runs' weights may differ by that much even for identical updates.
WEIGHT_ROUNDING = 2 * 2 * 2.0 ** -24
# A loss is the same function of the same weights and samples (iteration 1) or of weights apart by the
# rounding above (iteration 2), evaluated in another batch split: float32 rounding accumulated over the
# ~20 layers of the forward, with reductions of at most 576 terms (3 x 3 x 64 convolutions) whose errors
# add up like random ones, 20 * sqrt(576) * 2^-24 = 2.9e-5; below 1e-4 with margin. A different sample or
# weight moves a loss by percents.
LOSS_RTOL = 1e-4
# The JSON log rounds each value to 5 decimals (mmcv's TextLoggerHook): two equal losses may be logged
# 1e-5 apart.
LOSS_ATOL = 1e-5


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


def initial_weights(work_dir):
    return torch.load(osp.join(work_dir, 'initial_weights.pth'), map_location='cpu')


def assert_same_training(got, ref, initial, what):
    """Each floating tensor of `got` (a state dict) moved from `initial` as `ref` did, up to the rounding
    bounds above; the others (integer buffers such as batch-norm counters, buffers the model makes in its
    first step such as the image normalisation) are equal."""
    assert got.keys() == ref.keys()
    moved = 0
    for key, value in ref.items():
        if not value.is_floating_point() or key not in initial:   # counters; buffers made in the first step
            assert torch.equal(got[key], value), f'{what}: {key}'
            continue
        start = initial[key].double()
        update, difference = value.double() - start, got[key].double() - value.double()
        bound = UPDATE_RTOL * update.norm() + WEIGHT_ROUNDING * value.double().norm()
        assert difference.norm() <= bound, (
            f'{what}: {key}: moved {difference.norm():.3e} away from the reference, allowed {bound:.3e} '
            f'(the reference moved {update.norm():.3e})')
        moved += bool(update.norm() > 0)
    assert moved > 10, f'{what}: only {moved} tensors were trained'


@pytest.fixture(scope='module')
def config(synthetic_infos, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp('world_size') / 'tiny_world_size.py', synthetic_infos, SGD_CONFIG)


@pytest.fixture(scope='module')
def reference(config, tmp_path_factory):
    """One process, 4 samples per iteration: (per-iteration log records, checkpoint, initial weights)."""
    work_dir = tmp_path_factory.mktemp('world_size_1')
    run_in_process(config, work_dir)
    records = train_records(work_dir)
    # 3 samples, global batch 4: one iteration per epoch, 2 epochs (each epoch its own order)
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 1), (2, 1)]
    assert_samples_per_second(records, samples_per_iter=4)
    assert_epoch_lrs(work_dir)
    state = checkpoint(work_dir)
    assert state['meta']['iter'] == 2 and state['meta']['batch']['total_batch'] == 4
    return records, state, initial_weights(work_dir)


def assert_epoch_lrs(work_dir):
    """Cosine by epoch from LR to LR * 1e-3: LR in epoch 1, then (LR + LR * 1e-3) / 2 (a float64 schedule:
    equal to 1e-12 relative)."""
    assert checkpoint_lr(work_dir / 'epoch_1.pth') == pytest.approx(LR, rel=1e-12)
    assert checkpoint_lr(work_dir / 'epoch_2.pth') == pytest.approx(LR * 1.001 / 2, rel=1e-12)


def test_two_and_four_processes_train_like_one(config, reference, tmp_path):
    ref_records, ref_state, initial = reference
    logs = {2: run_dist(2, config, tmp_path / 'w2'), 4: run_dist(4, config, tmp_path / 'w4')}
    assert 'total batch 4, 2 process(es), 2 sample(s) per process' in logs[2]
    assert 'total batch 4, 4 process(es), 1 sample(s) per process' in logs[4]
    for world_size in (2, 4):
        records = train_records(tmp_path / f'w{world_size}')
        assert [(r['epoch'], r['iter']) for r in records] == [(1, 1), (2, 1)]
        assert_samples_per_second(records, samples_per_iter=4)   # over all processes: W x 4 / W samples each
        for ref, got in zip(ref_records, records):
            assert got['lr'] == ref['lr']
            for key in ref:
                if 'loss' in key:  # the logged losses are the mean over all processes' samples
                    assert got[key] == pytest.approx(ref[key], rel=LOSS_RTOL, abs=LOSS_ATOL), (world_size, key)
        work_dir = tmp_path / f'w{world_size}'
        state = checkpoint(work_dir)
        assert state['meta']['batch']['world_size'] == world_size
        assert_epoch_lrs(work_dir)
        assert_same_tensors(initial_weights(work_dir), initial)  # the same seed builds the same model
        assert_same_training(state['state_dict'], ref_state['state_dict'], initial, f'{world_size} processes')


def test_gradient_accumulation_trains_like_one_batch(config, reference, tmp_path):
    """1 sample per process pinned (memory): 4 iterations are accumulated into each step of 4 samples."""
    ref_records, ref_state, initial = reference
    run_in_process(config, tmp_path, '--cfg-options', 'data.samples_per_gpu=1')
    records = train_records(tmp_path)
    assert [(r['epoch'], r['iter']) for r in records] == [(e, i) for e in (1, 2) for i in (1, 2, 3, 4)]
    assert_samples_per_second(records, samples_per_iter=1)   # an iteration is one micro-batch of 1 sample
    for epoch, ref in zip((1, 2), ref_records):
        micro = [r for r in records if r['epoch'] == epoch]
        assert all(r['lr'] == ref['lr'] for r in micro)
        for key in ref:
            if 'loss' in key:  # each micro-iteration logs its sample's loss; the step's loss is their mean
                assert np.mean([r[key] for r in micro]) == pytest.approx(ref[key], rel=LOSS_RTOL, abs=LOSS_ATOL), key
    state = checkpoint(tmp_path)
    assert_epoch_lrs(tmp_path)
    assert_same_tensors(initial_weights(tmp_path), initial)
    assert state['meta']['iter'] == 8
    assert state['meta']['batch'] == dict(world_size=1, samples_per_gpu=1, cumulative_iters=4, total_batch=4,
                                          lr_scale=1.0)
    assert_same_training(state['state_dict'], ref_state['state_dict'], initial, 'accumulation')


def assert_same_tensors(got, ref):
    assert got.keys() == ref.keys() and all(torch.equal(got[k], v) for k, v in ref.items())
