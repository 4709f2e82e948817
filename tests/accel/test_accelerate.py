"""accel/: the execution policy, `accelerate`'s swaps and scopes, and the accelerated detector against its
faithful parent (on the CPU; the CUDA paths are in tests/models/test_ops_cuda_graph.py and
tests/engine/test_train_step.py)."""
import copy

import numpy as np
import pytest
import torch

from accel import ExecutionConfigError, accelerate, policy_from_config
from accel.modules import FAST_MODULES, FUSED_MODULES, FastSelfAttention, FusedSelfAttention, MatmulPrecisionScope
from accel.precision import PRECISION_TABLES, matmul_precision
from models.ops_transformer import OPSSelfAttention
from tiny_detector import build, gt, images, metas_for


def test_policy_presets_overrides_and_bad_keys():
    faithful, fast = policy_from_config(), policy_from_config(fast=True)
    assert (faithful.kernels, faithful.precision, faithful.offline_autocast) == ('fused', 'float32', 'fp16')
    assert (fast.kernels, fast.precision, fast.lazy_logs, fast.checkpointing) == ('fast', 'tf32-decoder', True, False)
    # the config's dict, then the command line (None: not given)
    policy = policy_from_config(dict(train_cuda_graph=False), train_autocast='bf16', test_cuda_graph=None)
    assert (policy.preset, policy.train_cuda_graph, policy.train_autocast, policy.test_cuda_graph) == \
        ('faithful', False, 'bf16', True)
    assert policy.describe() == 'execution: faithful (train_autocast=bf16, train_cuda_graph=False)'
    assert policy_from_config(dict(preset='fast')) == fast
    assert policy_from_config(dict(preset='faithful'), fast=True) == fast      # --fast wins
    with pytest.raises(ExecutionConfigError, match=r"unknown key\(s\) \['cuda_graph'\]; known: preset, channels_last"):
        policy_from_config(dict(cuda_graph=False))
    with pytest.raises(ExecutionConfigError, match="execution.preset='quick'"):
        policy_from_config(dict(preset='quick'))
    with pytest.raises(ExecutionConfigError, match="execution.train_autocast=None; choose one of"):
        policy_from_config(dict(train_autocast=None))
    with pytest.raises(ExecutionConfigError, match='not a table of accel/precision.py'):
        policy_from_config(dict(precision='tf16'))
    with pytest.raises(ExecutionConfigError, match=r"execution.kernels='faster'; choose one of \['reference', 'fused'"):
        policy_from_config(dict(kernels='faster'))


@pytest.mark.parametrize('table', [FUSED_MODULES, FAST_MODULES], ids=['fused', 'fast'])
def test_swapped_modules_are_subclasses_without_state_of_their_own(table):
    for faithful, swapped in table.items():
        assert issubclass(swapped, faithful) and swapped is not faithful
        assert '__init__' not in vars(swapped)       # the swap keeps the faithful module's parameters and buffers
    # the fast table is the fused one with other classes where precision changes, or more swaps
    assert all(issubclass(FAST_MODULES[k], v) for k, v in FUSED_MODULES.items())


def layers(model):
    return model.pts_bbox_head.transformer.decoder.decoder_layers


def test_accelerate_swaps_exact_types_keeps_the_weights_and_runs_once():
    faithful = build()
    fast = accelerate(copy.deepcopy(faithful), policy_from_config(fast=True))
    assert type(fast).__name__ == 'AcceleratedOPS' and isinstance(fast, type(faithful))
    assert type(layers(fast)[0].sampling).__name__ == 'FusedOPSSampling'
    assert type(fast.pts_bbox_head).__name__ == 'FusedOPSHead'
    # the state dict, names and values, is the faithful one's: checkpoints load and save as before
    a, b = faithful.state_dict(), fast.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    # checkpointing off (the fast preset), precision scopes on the per-query layers, at test time only
    assert not any(m.with_cp for m in fast.modules() if hasattr(m, 'with_cp'))
    assert isinstance(layers(fast)[0].ffn, MatmulPrecisionScope) and layers(fast)[0].ffn.matmul_precisions == \
        {'test': 'highest'}
    assert not isinstance(layers(fast)[0].mixing, MatmulPrecisionScope)
    with pytest.raises(ValueError, match='already accelerated'):
        accelerate(fast, policy_from_config())
    # a subclass of a faithful module is not swapped: it may compute something else
    class MyAttention(OPSSelfAttention):
        pass
    model = build()
    layers(model)[0].self_attn.__class__ = MyAttention
    accelerate(model, policy_from_config(fast=True))
    # (both get the precision scope, a subclass of their own class)
    mine = layers(model)[0].self_attn
    assert isinstance(mine, MyAttention) and not isinstance(mine, FastSelfAttention)
    assert isinstance(layers(model)[1].self_attn, FastSelfAttention)
    # the faithful policy keeps the config's backbone checkpointing; the graphed decoder trains without it
    faithful = accelerate(build(), policy_from_config())
    assert faithful.img_backbone.layer1[0].with_cp and not any(layer.with_cp for layer in layers(faithful))
    # its kernels are the fused ones (float32), the attention without half precision; 'reference' swaps none
    attention = layers(faithful)[0].self_attn
    assert isinstance(attention, FusedSelfAttention) and not isinstance(attention, FastSelfAttention)
    reference = accelerate(build(), policy_from_config(dict(kernels='reference')))
    assert type(layers(reference)[0].self_attn) is OPSSelfAttention
    eager = accelerate(build(), policy_from_config(dict(train_cuda_graph=False)))
    assert all(layer.with_cp for layer in layers(eager))


@pytest.mark.parametrize('training', [False, True])
def test_the_precision_table_reaches_each_part(training):
    """'tf32-decoder': inside the decoder's scope (TF32), the per-query layers run with full float32 products at
    test time, the sampling and mixing with TF32; training keeps TF32 throughout; the setting is restored after."""
    model = accelerate(build(), policy_from_config(dict(precision='tf32-decoder')))
    layer = layers(model)[0].train(training)
    seen = {}
    # a module each part calls inside its forward (a scoped part's own pre-hook would run before its scope)
    probes = dict(position_encoder=layer.position_encoder[0], sampling=layer.sampling.sampling_offset,
                  mixing=layer.mixing, self_attn=layer.self_attn.gen_tau, ffn=layer.ffn.layers[0][0],
                  cls_branch=layer.cls_branch[0], reg_branch=layer.reg_branch[0])

    def record(name):
        def hook(module, args):
            seen.setdefault(name, torch.get_float32_matmul_precision())
        return hook
    for name, probe in probes.items():
        probe.register_forward_pre_hook(record(name))
    g = torch.Generator().manual_seed(2)
    Q, P = 12, layer.in_points
    pts, qf = torch.rand(1, Q, P, 3, generator=g), torch.randn(1, Q, 32, generator=g)
    feats = [torch.randn(1 * 2 * 4, 6, h, w, 8, generator=g) for h, w in ((16, 40), (8, 20), (4, 10), (2, 5))]
    occ2img = torch.from_numpy(np.stack(metas_for([0, 0])['lidar2img']))[None]
    before = torch.get_float32_matmul_precision()
    phase = 'train' if training else 'test'
    with torch.no_grad(), matmul_precision(PRECISION_TABLES['tf32-decoder'][(phase, 'decoder')]):
        layer(pts, qf, feats, occ2img, 64, 160)
        assert torch.get_float32_matmul_precision() == 'high'
    assert torch.get_float32_matmul_precision() == before
    precise = {'high'} if training else {'highest'}
    assert {seen[n] for n in ('position_encoder', 'self_attn', 'ffn', 'cls_branch', 'reg_branch')} == precise
    assert {seen['sampling'], seen['mixing']} == {'high'}


def test_the_faithful_policy_computes_what_the_bare_model_computes_on_the_cpu():
    """On the CPU the faithful policy changes nothing (autocast, graphs and the fused kernels are CUDA's): the same
    test results and training losses, bit for bit; the fast policy's differ from them by float32 rounding only (its
    backbone's batch norms folded into the convolutions at test time; TF32 and compiled kernels are CUDA's)."""
    torch.manual_seed(0)
    bare = build()
    torch.nn.init.constant_(layers(bare)[-1].cls_branch[-1].bias, 4.0)    # points pass the score threshold
    faithful = accelerate(copy.deepcopy(bare), policy_from_config())
    fast = accelerate(copy.deepcopy(bare), policy_from_config(fast=True))
    results = []
    for model in (bare, faithful, fast):
        model.eval()
        with torch.no_grad():
            results.append(model(img=[images(0)[None]], img_metas=[[metas_for([0, 0])]], return_loss=False)[0])
    assert len(results[0]['sem_pred']) > 0
    for key in ('sem_pred', 'occ_loc'):
        np.testing.assert_array_equal(results[1][key], results[0][key])
    # fast: folded batch norms move the features by float32 rounding; a point within a few ulps of a voxel border
    # may change voxel; ~all agree
    same = len(set(map(tuple, results[2]['occ_loc'])) & set(map(tuple, results[0]['occ_loc'])))
    assert same >= 0.99 * len(results[0]['occ_loc'])

    sem, mask = gt(1)
    img = torch.cat([images(1), images(0)])[None]
    logs = []
    for model in (bare, faithful, fast):
        model.train()
        torch.manual_seed(1)
        np.random.seed(1)
        out = model.train_step(dict(img=img, img_metas=[metas_for([1, 0])], voxel_semantics=sem,
                                    mask_camera=mask), None)
        logs.append(out['log_vars'])
    assert logs[1] == logs[0]                                      # host floats, mmdet's parsing
    assert all(isinstance(v, torch.Tensor) for v in logs[2].values())  # lazy: device tensors
    # the fast model's tensors sit at other addresses (MKL's paths may differ by alignment): +-4 float32 ulps of each
    # projected value move the losses by ~1e-7 relative (derived in tests/engine/test_train_step.py); rel 1e-6
    # leaves a factor 10 for the loss sums' rounding
    for key, value in logs[0].items():
        assert logs[2][key].item() == pytest.approx(value, rel=1e-6)   # ~1e-7 reordering x 10 (see above)


@pytest.mark.parametrize('training', [False, True])
def test_the_fast_table_scopes_the_cpd_modules_in_training(training):
    """OPUS-V2's CPD modules run after the training decoder, outside its scope: the 'cpd' part gives them the
    decoder's TF32 in training; at test time they run inside the decoder's scope and keep what encloses them. The
    faithful table scopes nothing."""
    from tiny_opusv2 import tiny_detector
    faithful = accelerate(tiny_detector(), policy_from_config())
    assert not any(isinstance(d, MatmulPrecisionScope) for d in faithful.pts_bbox_head.densifiers)
    model = accelerate(tiny_detector(), policy_from_config(fast=True))
    densifier = model.pts_bbox_head.densifiers[0].train(training)
    assert isinstance(densifier, MatmulPrecisionScope) and densifier.matmul_precisions == {'train': 'high'}
    seen = []
    # the first VFE layer runs inside the CPD module's forward, so its pre-hook sees the module's scope
    densifier.pfn_layers[0].register_forward_pre_hook(lambda m, a: seen.append(torch.get_float32_matmul_precision()))
    g = torch.Generator().manual_seed(3)
    before = torch.get_float32_matmul_precision()
    with torch.no_grad():
        densifier(torch.randn(1, 4, 2, densifier.in_channels, generator=g), torch.rand(1, 4, 2, 3, generator=g))
    assert seen == ['high' if training else before] and torch.get_float32_matmul_precision() == before
