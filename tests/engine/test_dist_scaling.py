"""Batch, accumulation and learning rate for any world size (engine/scaling.py), and the pieces of
train.py that apply them (optimizer hook, resume with another world size)."""
import types

import pytest
import torch

from engine.scaling import apply_plan, continue_resumed_run, plan_batch, plan_from_config, resume_adjustment


def plan_tuple(plan):
    return plan.samples_per_gpu, plan.cumulative_iters, plan.total_batch, plan.lr_scale


@pytest.mark.parametrize('world_size, expected', [
    (1, (8, 1, 8, 1.0)), (2, (4, 1, 8, 1.0)), (4, (2, 1, 8, 1.0)), (8, (1, 1, 8, 1.0)),
    (16, (1, 1, 16, 2.0)),   # more GPUs than samples: 1 each, lr x 2 (auto_scale_lr, base 8)
    (32, (1, 1, 32, 4.0)),
    (3, (2, 1, 6, 0.75)),    # not a divisor: 2 each, lr x 6/8
    (6, (1, 1, 6, 0.75)),
])
def test_total_batch_8_on_any_world_size(world_size, expected):
    plan = plan_batch(8, world_size)
    assert plan_tuple(plan) == expected
    assert plan.world_size == world_size and plan.config_batch == 8 and plan.base_batch_size == 8
    assert bool(plan.messages) == (expected[2] != 8)  # every change of the total batch or lr is logged


def test_pinned_samples_per_gpu_accumulates_to_keep_the_total():
    assert plan_tuple(plan_batch(8, 2, samples_per_gpu=1)) == (1, 4, 8, 1.0)
    assert plan_tuple(plan_batch(8, 1, samples_per_gpu=2)) == (2, 4, 8, 1.0)
    assert plan_tuple(plan_batch(8, 4, samples_per_gpu=2)) == (2, 1, 8, 1.0)
    assert plan_tuple(plan_batch(8, 3, samples_per_gpu=1)) == (1, 1, 3, 3 / 8)  # 3 does not divide 8
    assert plan_tuple(plan_batch(8, 8, samples_per_gpu=2)) == (2, 1, 16, 2.0)
    plan = plan_batch(8, 2, samples_per_gpu=1)
    assert any('accumulated over 4 iterations' in m for m in plan.messages)
    assert plan.summary() == ('total batch 8, 2 process(es), 1 sample(s) per process, '
                              'gradients accumulated over 4 iterations')


def test_pinned_accumulation_and_lr():
    assert plan_tuple(plan_batch(8, 2, cumulative_iters=2)) == (2, 2, 8, 1.0)
    assert plan_tuple(plan_batch(8, 16, cumulative_iters=2)) == (1, 2, 32, 4.0)
    assert plan_tuple(plan_batch(8, 2, samples_per_gpu=1, cumulative_iters=2)) == (1, 2, 4, 0.5)
    assert plan_tuple(plan_batch(8, 16, auto_scale_lr=False)) == (1, 1, 16, 1.0)     # lr pinned
    assert plan_tuple(plan_batch(8, 16, base_batch_size=16)) == (1, 1, 16, 1.0)      # lr meant for 16
    assert plan_tuple(plan_batch(2, 4)) == (1, 1, 4, 2.0)  # the lr of a config belongs to its own batch_size
    for bad in (dict(samples_per_gpu=0), dict(cumulative_iters=-1), dict(base_batch_size=2.5)):
        with pytest.raises(ValueError):
            plan_batch(8, 2, **bad)
    with pytest.raises(ValueError):
        plan_batch(8, 0)


def test_plan_from_config_reads_the_pins():
    from mmcv import Config
    cfg = Config(dict(batch_size=8, data=dict(samples_per_gpu=1), optimizer_config=dict(cumulative_iters=None),
                      auto_scale_lr=dict(enable=True, base_batch_size=8)))
    assert plan_tuple(plan_from_config(cfg, 2)) == (1, 4, 8, 1.0)
    cfg = Config(dict(batch_size=8, data=dict(), optimizer_config=dict(cumulative_iters=2)))
    assert plan_tuple(plan_from_config(cfg, 1)) == (4, 2, 8, 1.0)
    with pytest.raises(ValueError, match='unknown key'):
        plan_from_config(Config(dict(batch_size=8, data=dict(), auto_scale_lr=dict(enabled=False))), 2)


def test_apply_plan_scales_lr_and_warmup():
    optimizer, lr_cfg = dict(type='AdamW', lr=2e-4), dict(policy='CosineAnnealing', warmup='linear', warmup_iters=500)
    new_opt, new_lr, messages = apply_plan(optimizer, lr_cfg, plan_batch(8, 16))
    assert new_opt['lr'] == 4e-4 and new_lr['warmup_iters'] == 500  # 2e-4 x (16 / 8 = 2.0): doubling is exact
    assert 'LR has been automatically scaled from 0.0002 to 0.0004' in messages
    assert optimizer['lr'] == 2e-4  # the inputs are not modified
    new_opt, new_lr, _ = apply_plan(optimizer, lr_cfg, plan_batch(8, 2, samples_per_gpu=1))
    assert new_opt['lr'] == 2e-4 and new_lr['warmup_iters'] == 2000  # 500 steps of 4 micro-iterations


def test_resume_adjustment():
    old8 = dict(batch=plan_batch(8, 8).as_meta())
    # same total batch on another world size: nothing to change (an epoch has as many iterations)
    assert resume_adjustment(old8, plan_batch(8, 2), epoch=3, iters_per_epoch=100) == (None, 1.0, [
        'resuming a run of world size 8 (total batch 8) with world size 2 (total batch 8)'])
    # 16 GPUs: the total batch doubles, epochs have half the iterations, the lr doubles
    new_iter, factor, _ = resume_adjustment(old8, plan_batch(8, 16), epoch=3, iters_per_epoch=50)
    assert (new_iter, factor) == (150, 2.0)
    # accumulation: as many optimizer steps, 4 micro-iterations each
    assert resume_adjustment(old8, plan_batch(8, 2, samples_per_gpu=1), 3, 400)[:2] == (1200, 1.0)
    assert resume_adjustment(dict(epoch=3), plan_batch(8, 2), 3, 100) == (None, 1.0, [])  # older checkpoints


def test_continue_resumed_run_moves_counter_and_lrs():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([dict(params=[param], lr=2e-4, initial_lr=2e-4), dict(params=[], lr=2e-5)])
    runner = types.SimpleNamespace(meta=dict(epoch=3, iter=300, batch=plan_batch(8, 8).as_meta()), epoch=3, _iter=300,
                                   optimizer=optimizer)
    continue_resumed_run(runner, plan_batch(8, 16), iters_per_epoch=50)
    assert runner._iter == 150
    # x 2.0 (the lr scale went from 1 to 2): doubling a float is exact
    assert [g['lr'] for g in optimizer.param_groups] == [4e-4, 4e-5]
    assert optimizer.param_groups[0]['initial_lr'] == 4e-4
    assert runner.meta['batch'] == plan_batch(8, 16).as_meta()


def test_optimizer_hook_for_accumulation():
    from mmcv import Config
    from mmcv.runner import HOOKS

    import engine.distributed_hooks  # noqa: F401  (registers the hooks)
    from train import optimizer_hook_config
    cfg = Config(dict(optimizer_config=dict(type='Fp16OptimizerHook', loss_scale=512.0, grad_clip=dict(max_norm=35))))
    cpu, gpu = torch.device('cpu'), torch.device('cuda', 0)
    assert optimizer_hook_config(cfg, cpu, 'fp16')['type'] == 'NanGuardOptimizerHook'
    hook_cfg = optimizer_hook_config(cfg, cpu, 'fp16', cumulative_iters=4)
    assert hook_cfg['type'] == 'NanGuardGradientCumulativeOptimizerHook' and hook_cfg['cumulative_iters'] == 4
    fp16 = optimizer_hook_config(cfg, gpu, 'fp16', cumulative_iters=4)
    assert fp16['type'] == 'NanGuardGradientCumulativeFp16OptimizerHook' and fp16['loss_scale'] == 512.0
    for hook_cfg in (hook_cfg, fp16):
        hook = HOOKS.build(dict(hook_cfg))
        assert hook.cumulative_iters == 4 and hook.max_consecutive_nan_steps == 5


def test_config_accepts_the_pins(tmp_path):
    from engine.config import ConfigError, load_config
    path = tmp_path / 'pins.py'
    path.write_text("model = dict(type='OPS')\ndata = dict(workers_per_gpu=0)\nbatch_size = 8\ntotal_epochs = 1\n"
                    "optimizer = dict(type='AdamW', lr=2e-4)\noptimizer_config = dict(type='Fp16OptimizerHook')\n"
                    "lr_config = dict(policy='step', step=[1])\ncheckpoint_config = dict(interval=1)\n"
                    "log_config = dict(interval=1, hooks=[])\n")
    cfg = load_config(str(path), {'data.samples_per_gpu': 1, 'optimizer_config.cumulative_iters': 2,
                                  'auto_scale_lr.enable': False, 'auto_scale_lr.base_batch_size': 8})
    assert plan_tuple(plan_from_config(cfg, 2)) == (1, 2, 4, 1.0)
    with pytest.raises(ConfigError, match='cumulative_itres'):
        load_config(str(path), {'optimizer_config.cumulative_itres': 2})
