"""The sync-free training step (engine/train_step.py) computes the faithful step's update."""
import copy
import functools

import numpy as np
import pytest
import torch
from mmcv.runner import build_optimizer

from accel import accelerate, policy_from_config
from accel.cuda_graph import without_dropout
from accel.folded_backbone import unfold_batch_norms
from engine.train_step import (
    LazyLogBuffer,
    SyncFreeStep,
    merge_param_groups,
    parse_losses_lazy,
    regroup_optimizer_state,
)
from tiny_detector import build, gt, images, metas_for
from tiny_opusv2 import tiny_batch
from tiny_opusv2 import tiny_detector as tiny_opusv2_detector

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
    faithful = without_dropout(build()).train()
    fast = without_dropout(accelerate(build(), policy_from_config(fast=True)))
    # the folded backbone trains with other float32 roundings (tests/accel/test_fast_modules.py checks its outputs
    # and gradients against its faithful parent's); here the step around the model is compared, so its faithful
    # classes go back
    unfold_batch_norms(fast.img_backbone)
    fast.train()
    # its fused modules run the models/ code on the CPU (their kernels are CUDA's; tests/accel/test_fast_modules.py
    # checks them against their parents)
    layer = fast.pts_bbox_head.transformer.decoder.decoder_layers[0]
    assert type(layer.sampling).__name__ == 'FusedOPSSampling' and not layer.with_cp
    fast.load_state_dict(faithful.state_dict())
    opt_a = build_optimizer(faithful, dict(OPTIMIZER, foreach=False))
    opt_b = merge_param_groups(build_optimizer(fast, dict(OPTIMIZER, fused=True)))   # as train.py --fast
    assert len(opt_b.param_groups) < len(opt_a.param_groups) // 10
    assert per_parameter_lr(opt_a) == per_parameter_lr(opt_b)

    # faithful: mmdet's parsing (host floats), backward, clip at 35, AdamW
    loss_a, log_a = faithful._parse_losses(losses_of(faithful))
    opt_a.zero_grad()
    loss_a.backward()
    grads_a = {n: p.grad.clone() for n, p in faithful.named_parameters() if p.grad is not None}
    norm_a = torch.nn.utils.clip_grad_norm_([p for p in faithful.parameters() if p.grad is not None], 35, 2)
    opt_a.step()
    # fast: lazy parsing, the sync-free step
    loss_b, log_b = parse_losses_lazy(losses_of(fast))
    step = SyncFreeStep(opt_b, dict(max_norm=35, norm_type=2), loss_scale=1.0)
    norm_b = step(loss_b)
    assert list(log_a) == list(log_b)
    # On the CPU the fast forward is then the faithful one (TF32 and the fused kernels are CUDA's), but
    # the two models' tensors sit at other addresses, and MKL's kernels may take other paths for other alignments:
    # a few float32 ulps of the projected values at most. The bilinear samples move by that times the feature
    # gradient and every loss averages many samples: +-4 ulps on every projected value move the losses by ~1e-7
    # relative
    for key in log_a:
        assert isinstance(log_b[key], torch.Tensor) and log_b[key].dim() == 0
        assert log_b[key].item() == pytest.approx(log_a[key], rel=1e-6)   # ~1e-7 (above) x 10 for the loss sums
    # the same, plus the per-tensor norms reduced in another order (foreach kernel vs one reduction per tensor:
    # <= log2(2.4e6 elements) x 2^-24 = 1.3e-6 relative for cascaded float32 sums)
    assert norm_b.item() == pytest.approx(norm_a.item(), rel=1e-5)
    initial = build().state_dict()
    moved = 0
    for (name, a), b in zip(faithful.state_dict().items(), fast.state_dict().values()):
        # AdamW's first step moves each weight by lr * g / (|g| + eps), eps = 1e-8: a gradient difference dg changes
        # that by lr * eps * dg / (|g| + eps)^2, and where |g| is at the rounding noise of the gradient sums (the key
        # bias of an attention, whose exact gradient is zero) the noise picks the sign of a whole lr step. Compared
        # where |g| > 1e-6: gradient noise dg <= 1e-7 moves a weight by <= 2e-4 * 1e-8 * 1e-7 / 1e-12 = 2e-7 (atol
        # 1e-6 leaves room for dg up to 5e-7); the fused and the per-parameter AdamW kernels evaluate the formula in
        # another order: a few float32 ulps of the weight (rtol 1e-6 = 8 ulps)
        keep = grads_a[name].abs() > 1e-6 if name in grads_a else torch.ones_like(a, dtype=torch.bool)
        torch.testing.assert_close(b[keep], a[keep], rtol=1e-6, atol=1e-6, msg=name)
        moved += int(not torch.equal(a, initial[name]))
    assert moved > 50                                            # the step did update the weights
    assert step.read_counters() == (0, 0)


def per_parameter_lr(optimizer):
    return [(tuple(p.shape), g['lr']) for g in optimizer.param_groups for p in g['params']]


def adamw_steps(model, optimizer, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(5, 3, generator=g).to(next(model.parameters()).device)
        model(x).square().sum().backward()
        optimizer.step()


def three_layers():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))


def per_parameter_groups(model, lrs, foreach=False):
    """One group per parameter, as mmcv's constructor builds them with paramwise_cfg."""
    return torch.optim.AdamW([dict(params=[p], lr=lr) for p, lr in zip(model.parameters(), lrs)],
                             lr=1.0, weight_decay=0.01, foreach=foreach)


LRS = [0.1, 0.1, 1.0, 1.0, 0.1, 0.1]     # weight, bias of each layer: runs of equal lr merge, in order


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@pytest.mark.parametrize('device, foreach', [('cpu', False), ('cpu', True), pytest.param('cuda', True, marks=CUDA)])
def test_merged_param_groups_compute_the_same_adamw_update(device, foreach):
    """The same bits: the per-parameter loop (foreach=False) and the multi-tensor ops that the faithful step runs on
    CUDA (foreach=True) compute each element from its own state and its group's hyperparameters."""
    a, b = three_layers().to(device), three_layers().to(device)
    opt_a = per_parameter_groups(a, LRS, foreach)
    opt_b = merge_param_groups(per_parameter_groups(b, LRS, foreach))
    assert [len(g['params']) for g in opt_b.param_groups] == [2, 2, 2]
    assert [g['lr'] for g in opt_b.param_groups] == [0.1, 1.0, 0.1]
    assert opt_b.defaults['weight_decay'] == 0.01 and opt_b.defaults['foreach'] is foreach
    adamw_steps(a, opt_a, 4)
    adamw_steps(b, opt_b, 4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match='before the first step'):
        merge_param_groups(opt_b)


def test_optimizer_state_resumes_across_groupings():
    """A checkpoint of the per-parameter grouping continues in the merged one (train.py --fast) and back."""
    reference, a, b = three_layers(), three_layers(), three_layers()
    opt_ref = per_parameter_groups(reference, LRS)
    opt_a = per_parameter_groups(a, LRS)
    adamw_steps(reference, opt_ref, 3)
    adamw_steps(a, opt_a, 3)
    saved = copy.deepcopy(opt_a.state_dict())
    saved['param_groups'][0]['lr'] = saved['param_groups'][1]['lr'] = 0.05   # as the lr schedule left it
    for group in opt_ref.param_groups[:2]:
        group['lr'] = 0.05
    b.load_state_dict(a.state_dict())
    opt_b = merge_param_groups(per_parameter_groups(b, LRS))
    opt_b.load_state_dict(regroup_optimizer_state(saved, opt_b))
    assert [g['lr'] for g in opt_b.param_groups] == [0.05, 1.0, 0.1]
    adamw_steps(reference, opt_ref, 2, seed=1)
    adamw_steps(b, opt_b, 2, seed=1)
    for pr, pb in zip(reference.parameters(), b.parameters()):
        assert torch.equal(pr, pb)
    back = per_parameter_groups(three_layers(), LRS)      # and the merged state into per-parameter groups
    back.load_state_dict(regroup_optimizer_state(opt_b.state_dict(), back))
    assert [g['lr'] for g in back.param_groups] == [0.05, 0.05, 1.0, 1.0, 0.1, 0.1]
    assert regroup_optimizer_state(saved, opt_a) is saved
    small = torch.optim.AdamW(torch.nn.Linear(3, 4).parameters())
    with pytest.raises(ValueError, match='holds 6 parameters, this model has 2'):
        regroup_optimizer_state(saved, small)


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
    # loss: (2 * 2 + 4 * 2) / 4 in float64, exact; time: 0.2 and 0.4 (v / 10) and their sum rounded once each,
    # the products by 2 and the division by 4 exact: <= 1.5 float64 EPS relative
    assert buf.output['loss'] == 3.0
    assert buf.output['time'] == pytest.approx(0.3, rel=2 * np.finfo(np.float64).eps)
    assert isinstance(buf.output['loss'], float)


def test_a_non_fused_optimizer_is_refused():
    model = build()
    with pytest.raises(ValueError, match='fused'):
        SyncFreeStep(build_optimizer(model, OPTIMIZER))


def test_graphed_parameter_gradients_accumulate_over_backward_passes():
    """A graph returns each parameter's gradient in a static buffer that its next replay overwrites
    (accel/cuda_graph.py: _own_parameter_grads). Here a stand-in for the graphed backward node."""
    from accel.cuda_graph import _own_parameter_grads
    static_grad = torch.zeros(3)

    class Replayed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            return x * w

        @staticmethod
        def backward(ctx, grad):
            static_grad.copy_(grad)                # the replay writes its buffer
            return grad, static_grad.detach()

    def accumulated(hooked):
        w = torch.zeros(3, requires_grad=True)
        for scale in (1.0, 2.0):                   # two micro-batches before the optimizer step
            y = Replayed.apply(torch.ones(3, requires_grad=True), w)
            if hooked:
                y.grad_fn.register_hook(functools.partial(_own_parameter_grads, 1))
            (y * scale).sum().backward()
        return w.grad

    assert torch.equal(accumulated(hooked=True), torch.full((3,), 3.0))     # 1 + 2
    assert torch.equal(accumulated(hooked=False), torch.full((3,), 4.0))    # the buffer added to itself


def ops_inputs(seed):
    """A training batch of the tiny OPS (tiny_detector.py); `seed` picks the images."""
    sem, mask = gt(1)
    img = torch.cat([images(1, seed=seed), images(0, seed=seed)])[None]
    return dict(img=img, img_metas=[metas_for([1, 0])], voxel_semantics=sem, mask_camera=mask)


def opusv2_inputs(seed):
    """A training batch of the tiny OPUS-V2 (tiny_opusv2.py); `seed` picks the images and the BDA flip."""
    img, metas, sem, mask = tiny_batch(flip=bool(seed % 2))
    img = torch.randint(0, 256, img.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return dict(img=img, img_metas=metas, voxel_semantics=sem, mask_camera=mask)


# OPUS-V2: the decoder is graphed, its CPD modules (sparse, data-dependent sizes) run eagerly after it
DETECTORS = {'ops': (build, ops_inputs), 'opusv2': (tiny_opusv2_detector, opusv2_inputs)}


@CUDA
@pytest.mark.parametrize('detector', sorted(DETECTORS))
@pytest.mark.parametrize('mode', ['faithful', 'fast'])
def test_graphed_training_decoder_equals_eager_on_cuda(mode, detector):
    """Training on CUDA replays the decoder's forward and backward from CUDA graphs: the same losses and
    gradients as the eager decoder over three steps of two accumulated backward passes each, with new
    images and weights updated in place (without dropout, whose random numbers differ between a graph
    and eager code). Gradients may differ by the rounding of the atomic additions in the sampling
    op's and cuDNN's backward: a second eager model measures that noise, and the graph must stay
    within 1e-4 or 4x it. In fast mode the graph holds the backward's TF32 products, so the eager
    backward runs under TF32 there; and the fast losses stay within TF32 rounding of a faithful model's."""
    from accel.cuda_graph import EAGER
    from accel.precision import tf32_matmuls
    build_detector, inputs = DETECTORS[detector]

    def model(cuda_graph, mode=mode):
        built = accelerate(build_detector(), policy_from_config(dict(preset=mode, train_cuda_graph=cuda_graph,
                                                                     checkpointing=False)))
        return without_dropout(built).cuda().train()

    eager, eager_again, graphed = model(False), model(False), model(True)
    eager_again.load_state_dict(eager.state_dict())
    graphed.load_state_dict(eager.state_dict())

    def log_values(model, seed):
        np.random.seed(seed)                       # photometric distortion
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs(seed).items()}
        return parse_losses_lazy(model(**batch))

    if mode == 'fast':
        reference = model(False, mode='faithful')
        reference.load_state_dict(eager.state_dict())
        with torch.no_grad():
            fast_values = torch.stack(list(log_values(eager, 0)[1].values()))
            faithful_values = torch.stack(list(log_values(reference, 0)[1].values()))
        # TF32 rounds both inputs of every matmul product to 10 mantissa bits (2^-11 relative each, so 2^-10 =
        # 9.8e-4 per product); the losses are means over many such products: rtol 2e-3 = 2 x 2^-10. atol: terms
        # near zero (a loss of ~1e-2 at 2^-10)
        torch.testing.assert_close(fast_values, faithful_values, rtol=2e-3, atol=1e-5)

    def relative_differences(grads, reference):
        return {n: ((grads[n] - g).norm() / g.norm().clamp(min=1e-12)).item() for n, g in reference.items()}

    for step in range(3):                          # capture at the first call, replays after
        grads, values = [], []
        for model in (eager, eager_again, graphed):
            model.zero_grad(set_to_none=True)
            for seed in (2 * step, 2 * step + 1):  # gradient accumulation: grads add up in param.grad
                loss, log_vars = log_values(model, seed)
                with tf32_matmuls(mode == 'fast'):
                    loss.backward()
                values.append(torch.stack(list(log_vars.values())))
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        with torch.no_grad():
            # one SGD step of the eager model's gradients written into all three in place (the graph must see
            # weights updated in place): the next step's models share their weights again, whatever the
            # gradients' atomic-add noise
            for p, p_again, p_graphed in zip(eager.parameters(), eager_again.parameters(), graphed.parameters()):
                if p.grad is not None:
                    p.add_(p.grad, alpha=-1e-3)
                    p_again.copy_(p)
                    p_graphed.copy_(p)
        # the same weights and inputs, the graph replaying the eager forward kernels: float32 rounding of the loss
        # sums, ~8 float32 eps (rtol 1e-6), atol for terms near zero
        torch.testing.assert_close(values[4], values[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(values[5], values[1], rtol=1e-6, atol=1e-7)
        assert grads[0].keys() == grads[2].keys() and len(grads[0]) > 50
        noise = max(relative_differences(grads[1], grads[0]).values())
        # 4 x the measured eager-vs-eager noise; the floor 1e-4 (~840 float32 eps) keeps a noiseless measurement
        # (two eager runs whose atomic additions happened to come in the same order) from demanding bit equality
        # of a replay whose additions come in another order: a reordered float32 sum moves by a few eps of the
        # sum of magnitudes, amplified by cancellation between terms
        for name, err in relative_differences(grads[2], grads[0]).items():
            assert err < max(1e-4, 4 * noise), (f'step {step}, {name}: gradients differ by {err:.2e} (relative '
                                                f'norm); two eager models by up to {noise:.2e}')
    graphs = graphed.graphed_steps['train_decoder'].graphs
    assert len(graphs) == 1 and next(iter(graphs.values())) is not EAGER
