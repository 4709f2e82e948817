"""The sync-free training step (engine/train_step.py) computes the faithful step's update."""
import copy

import numpy as np
import pytest
import torch
from mmcv.runner import build_optimizer

from engine.train_step import LazyLogBuffer, SyncFreeStep, parse_losses_lazy
from tiny_detector import build, gt, images, metas_for

OPTIMIZER = dict(type='AdamW', lr=2e-4, weight_decay=0.01,
                 paramwise_cfg=dict(custom_keys={'img_backbone': dict(lr_mult=0.1),
                                                 'sampling_offset': dict(lr_mult=0.1)}))


def losses_of(model, seed=0):
    torch.manual_seed(seed)                        # dropout masks
    np.random.seed(seed)                           # photometric distortion
    sem, mask = gt(1)
    img = torch.cat([images(1), images(0)])[None]
    return model(img=img, img_metas=[metas_for([1, 0])], voxel_semantics=sem, mask_camera=mask)


def test_one_fast_step_equals_one_faithful_step():
    faithful = build().train()
    fast = no_checkpointing(build()).train()
    fast.load_state_dict(faithful.state_dict())
    opt_a = build_optimizer(faithful, dict(OPTIMIZER, foreach=False))
    opt_b = build_optimizer(fast, dict(OPTIMIZER, fused=True))
    assert [g['lr'] for g in opt_a.param_groups] == [g['lr'] for g in opt_b.param_groups]

    # faithful: mmdet's parsing (host floats), backward, clip at 35, AdamW
    loss_a, log_a = faithful._parse_losses(losses_of(faithful))
    opt_a.zero_grad()
    loss_a.backward()
    norm_a = torch.nn.utils.clip_grad_norm_([p for p in faithful.parameters() if p.grad is not None], 35, 2)
    opt_a.step()
    # fast: lazy parsing, the sync-free step
    loss_b, log_b = parse_losses_lazy(losses_of(fast))
    step = SyncFreeStep(opt_b, dict(max_norm=35, norm_type=2), loss_scale=1.0)
    norm_b = step(loss_b)
    assert list(log_a) == list(log_b)
    for key in log_a:
        assert isinstance(log_b[key], torch.Tensor) and log_b[key].dim() == 0
        assert log_b[key].item() == pytest.approx(log_a[key], rel=1e-6)
    assert norm_b.item() == pytest.approx(norm_a.item(), rel=1e-5)
    initial = build().state_dict()
    moved = 0
    for (name, a), b in zip(faithful.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(a, initial[name]))
    assert moved > 50                                            # the step did update the weights
    assert step.read_counters() == (0, 0)


def no_checkpointing(model):
    """The fast path trains without gradient checkpointing (same function, more memory)."""
    for module in model.modules():
        if hasattr(module, 'with_cp'):
            module.with_cp = False
    return model


def test_non_finite_gradients_skip_the_step_on_the_device():
    model = build().train()
    opt = build_optimizer(model, dict(OPTIMIZER, fused=True))
    before = copy.deepcopy(model.state_dict())
    step = SyncFreeStep(opt, dict(max_norm=35, norm_type=2), loss_scale=1.0)
    loss, _ = parse_losses_lazy(losses_of(model))
    step(loss * float('nan'))
    step(loss.detach().requires_grad_() * 0 + sum(p.sum() for p in model.parameters()) * float('inf'))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name           # both steps skipped: nothing moved
    assert step.read_counters() == (2, 2)
    loss, _ = parse_losses_lazy(losses_of(model))
    step(loss)
    assert step.read_counters() == (2, 0)                        # the streak ended; the total stays
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_lazy_log_buffer_reads_tensors_at_average():
    buf = LazyLogBuffer()
    for v in (1.0, 2.0, 4.0):
        buf.update({'loss': torch.tensor(v), 'time': v / 10}, count=2)
    buf.average(2)
    assert buf.output['loss'] == pytest.approx(3.0) and buf.output['time'] == pytest.approx(0.3)
    assert isinstance(buf.output['loss'], float)


def test_a_non_fused_optimizer_is_refused():
    model = build()
    with pytest.raises(ValueError, match='fused'):
        SyncFreeStep(build_optimizer(model, OPTIMIZER))
