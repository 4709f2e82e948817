"""The OPS detector end to end on the CPU with a down-sized config: a training step, inference, online mode."""
import numpy as np
import pytest
import torch
from mmdet.models import build_detector

from host_tensor_spy import HostTensorSpy
from models.feature_cache import FrameFeatureCache
from tiny_detector import NORM, H, N, T, W, build, gt, images, metas_for, tiny_cfg

EPS32 = float(torch.finfo(torch.float32).eps)   # 2^-23: one float32 rounding moves a value by <= half of it
# The backbone and FPN on another batch of the same images: the values are bitwise equal as long as the
# convolution kernels keep their per-image summation order; a library that reblocks the sums for another batch
# size moves each convolution's output by ~sqrt(K) * 2^-24 of its scale (rounding errors of random sign), summed
# over the deepest path of ResNet-18 + FPN (stem K = 147, 16 convolutions of K = 9 * 64 ... 9 * 512, downsampling
# 64 ... 256, lateral 512, output 9 * 32): sum sqrt(K) ≈ 780; the largest of a level's values sits at ~4 such
# sigmas: 4 * 800 * 2^-24 ≈ 1.9e-4 of the level's largest value.
FEATURE_REL = 4 * 800 * EPS32 / 2


def test_training_step_and_optimizer_update():
    model = build().train()
    B = 2
    img = torch.stack([torch.cat([images(3, b), images(2, b)]) for b in range(B)])        # [B, T*N, 3, H, W]
    sem, mask = gt(B)
    data = dict(img=img, img_metas=[metas_for([3, 2]) for _ in range(B)], voxel_semantics=sem, mask_camera=mask)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    layers = model.pts_bbox_head.transformer.decoder.decoder_layers
    watched = {'head': layers[1].cls_branch[-1].weight, 'offset': layers[2].sampling.sampling_offset.weight,
               'init_points': model.pts_bbox_head.init_points.weight,
               # the shortcut conv: every residual branch's last BN starts at 0 (mmdet's ResNet), so its convs get
               # no gradient at the first step and only AdamW's weight decay would move them
               'layer3': model.img_backbone.layer3[0].downsample[0].weight,
               'fpn': model.img_neck.fpn_convs[0].conv.weight,
               'frozen_stem': model.img_backbone.conv1.weight}
    before = {k: v.detach().clone() for k, v in watched.items()}
    np.random.seed(0)
    out = model.train_step(data, optimizer)
    assert set(out['log_vars']) == {'init_loss_pts', 'd0.loss_cls', 'd0.loss_pts', 'd1.loss_cls', 'd1.loss_pts',
                                    'loss_cls', 'loss_pts', 'loss'}
    assert out['num_samples'] == B and torch.isfinite(out['loss'])
    # the total is the float32 sum of the 7 nonnegative terms: 6 additions, each rounding by <= 2^-24 of a
    # running sum <= the total: < 7 * 2^-24 relative to the exact sum of the logged float32 values
    assert out['log_vars']['loss'] == pytest.approx(sum(v for k, v in out['log_vars'].items() if k != 'loss'),
                                                    rel=7 * EPS32 / 2)
    optimizer.zero_grad()
    out['loss'].backward()
    assert watched['layer3'].grad.abs().sum() > 0          # the loss reaches the backbone
    optimizer.step()
    for name in ('head', 'offset', 'init_points', 'layer3', 'fpn'):
        assert not torch.equal(watched[name], before[name]), f'{name} did not change'
    assert torch.equal(watched['frozen_stem'], before['frozen_stem'])
    assert model.img_backbone.conv1.weight.grad is None
    # layers 0 and 1 see one point per query: offsets are scaled by std = 0 and get no gradient
    # (docs/method.md, "Decoder layer")
    for i in (0, 1):
        assert torch.all(layers[i].sampling.sampling_offset.weight.grad == 0)
    assert layers[2].sampling.sampling_offset.weight.grad.abs().sum() > 0


def test_inference_output_format():
    model = build().eval()
    # make every point confident so that the output is not empty
    torch.nn.init.constant_(model.pts_bbox_head.transformer.decoder.decoder_layers[-1].cls_branch[-1].bias, 4.0)
    img = torch.cat([images(1), images(0)])[None]
    with torch.no_grad():
        res = model(img=[img], img_metas=[[metas_for([1, 0])]], return_loss=False, rescale=True)
    assert isinstance(res, list) and len(res) == 1 and set(res[0]) == {'sem_pred', 'occ_loc'}
    sem, loc = res[0]['sem_pred'], res[0]['occ_loc']
    assert isinstance(sem, np.ndarray) and sem.dtype == np.int64 and loc.dtype == np.int64
    assert loc.ndim == 2 and loc.shape[1] == 3 and len(sem) == len(loc) > 0
    assert sem.min() >= 0 and sem.max() <= 16
    assert loc.min() >= 0 and (loc.max(0) < np.array([200, 200, 16])).all()
    with pytest.raises(ValueError, match='one-element lists'):
        model(img=[img, img], img_metas=[[metas_for([1, 0])]] * 2, return_loss=False)


def test_photometric_only_in_training_and_normalisation():
    model = build()
    img = images(0)[:2].float()
    expected = (img.flip(1) - torch.tensor(NORM['mean']).view(1, 3, 1, 1)) / torch.tensor(NORM['std']).view(1, 3, 1, 1)
    expected = torch.nn.functional.pad(expected, (0, 0, 0, 0))      # 64x160: already multiples of 32
    model.eval()
    # the same two float32 operations (subtract the mean, divide by the std) on the same values: bitwise equal
    assert torch.equal(model.preprocess(img), expected)
    model.train()
    np.random.seed(1)
    # the distortion moves pixels by grey levels (1 / 57 ≈ 0.018 after normalisation), far above 1e-3 and
    # float32 rounding (~1e-7 of values <= 2.6)
    assert not torch.allclose(model.preprocess(img), expected, atol=1e-3)
    odd = torch.zeros(1, 3, 50, 70)
    assert model.preprocess(odd).shape == (1, 3, 64, 96)          # zero padding right/bottom


def test_online_cache_equals_offline_features_and_predictions():
    model = build().eval()
    torch.nn.init.constant_(model.pts_bbox_head.transformer.decoder.decoder_layers[-1].cls_branch[-1].bias, 4.0)
    seq = [[0, 0], [1, 0], [2, 1], [3, 2]]           # the first sample of a scene repeats its own frame
    with torch.no_grad():
        for frames in seq:
            metas = [metas_for(frames)]
            online = model(img=[images(frames[0])[None]], img_metas=[metas], return_loss=False)[0]
            slots = torch.tensor([model.feature_cache.slots[f'samples/CAM_0/frame{t}.jpg'] for t in frames])
            cached = [f.flatten(0, 1) for f in model.feature_cache.read(slots)]   # [T*G, N, H, W, C/G]
            full = torch.cat([images(t) for t in frames])[None]
            offline_feats = model.extract_feat(full, [metas_for(frames)])
            for a, b in zip(cached, model.pts_bbox_head.transformer.sampling_layout(offline_feats)):
                assert a.shape == b.shape and a.shape[:2] == (T * model.pts_bbox_head.transformer.num_groups, N)
                # online: the key frame's 6 images alone; offline: all 12 (FEATURE_REL)
                torch.testing.assert_close(a, b, rtol=0, atol=FEATURE_REL * b.abs().max().item())
            assert metas[0]['img_shape'] == [(H, W, 3)] * (T * N)
            offline = model(img=[full], img_metas=[[metas_for(frames)]], return_loss=False)[0]
            assert len(online['sem_pred']) > 0
            np.testing.assert_array_equal(online['occ_loc'], offline['occ_loc'])
            np.testing.assert_array_equal(online['sem_pred'], offline['sem_pred'])
    assert list(model.feature_cache.slots) == [f'samples/CAM_0/frame{t}.jpg' for t in range(4)]


def test_online_cache_is_fifo_of_15_and_needs_history():
    cache = FrameFeatureCache(15)
    seen = {}
    for t in range(20):
        slot, frame_slots = cache.assign([f'f{t}', f'f{max(t - 1, 0)}'])
        seen[t] = slot
        assert frame_slots == [slot, seen[max(t - 1, 0)]]
    assert len(cache.slots) == 15 and next(iter(cache.slots)) == 'f5'
    assert sorted(cache.slots.values()) == list(range(15))            # every slot used once
    assert seen[15] == seen[0] and seen[19] == seen[4]                # a new frame takes the oldest's slot
    assert cache.assign(['f19', 'f18']) == (seen[19], [seen[19], seen[18]])   # cached: same slot, no change
    assert next(iter(cache.slots)) == 'f5'
    with pytest.raises(KeyError):
        cache.assign(['f30', 'f29'])
    # the model turns that into an error that says what to do, and training drops the cache
    model = build().eval()
    with torch.no_grad():
        model(img=[images(0)[None]], img_metas=[[metas_for([0, 0])]], return_loss=False)
        with pytest.raises(RuntimeError, match='not in the cache'):
            model(img=[images(30)[None]], img_metas=[[metas_for([30, 29])]], return_loss=False)
    model.train()
    assert len(model.feature_cache.slots) == 0      # features of old weights are dropped when training resumes


@pytest.mark.parametrize('cache_size, reaches', [(5, False), (6, True)])
def test_the_cache_size_bounds_how_far_back_online_history_reaches(cache_size, reaches):
    """A history frame 5 samples back (Occ3D-Waymo's test_interval) needs the 5 frames after it in the cache too:
    cache_size 6 holds it when sample 5 arrives, cache_size 5 has dropped it (FIFO)."""
    model = build(cache_size=cache_size).eval()
    assert model.cache_size == cache_size
    with torch.no_grad():
        for t in range(5):
            model(img=[images(t)[None]], img_metas=[[metas_for([t, max(t - 5, 0)])]], return_loss=False)
        if reaches:
            model(img=[images(5)[None]], img_metas=[[metas_for([5, 0])]], return_loss=False)
        else:
            with pytest.raises(RuntimeError, match='not in the cache'):
                model(img=[images(5)[None]], img_metas=[[metas_for([5, 0])]], return_loss=False)


def test_online_offline_decision():
    model = build().eval()
    cur, full = images(1)[None], torch.cat([images(1), images(0)])[None]
    metas = [metas_for([1, 0])]
    # online=None decides from the input alone: only the key frame's images -> online
    assert model.use_online(cur, metas) is True
    assert model.use_online(full, metas) is False
    model.online = False
    with pytest.raises(ValueError, match='offline test mode needs all 12 images'):
        model.use_online(cur, metas)
    model.online = True
    assert model.use_online(full, metas) is True
    with pytest.raises(ValueError, match='online test mode needs the 6 key-frame images'):
        model.use_online(full[:, :4], metas)
    assert build(online=False).online is False
    # the bare model computes in float32; autocast is the execution policy's (tests/accel/test_accelerate.py)
    assert model.test_amp_dtype(online=True) is None and model.test_amp_dtype(online=False) is None
    # the execution settings the model config used to hold: one line naming the new place
    for key, where in (('mode', 'preset'), ('cuda_graph', 'train_cuda_graph'), ('offline_fp16', 'offline_autocast')):
        with pytest.raises(ValueError, match=f'test_cfg.{key} is an execution setting; set execution=dict.{where}'):
            build(test_cfg={'pts': dict(score_thr=0.5), key: True})
    with pytest.raises(ValueError, match='train_cfg.amp_dtype is an execution setting'):
        build(train_cfg=dict(tiny_cfg()['train_cfg'], amp_dtype='bf16'))
    with pytest.raises(ValueError, match='unknown test_cfg keys'):
        build(test_cfg=dict(pts=dict(score_thr=0.5), cuda_graphs=True))


def test_stop_prev_grad_and_no_autocast_on_cpu():
    model = build(data_aug=dict(img_color_aug=False, img_norm_cfg=NORM, img_pad_cfg=dict(size_divisor=32))).train()
    full = torch.cat([images(1), images(0)])[None]
    ref = model.extract_feat(full, [metas_for([1, 0])])
    model.stop_prev_grad = 1
    model.fp16_enabled = True                   # the fp16 hook's flag has no effect on the CPU
    assert model.train_amp_dtype() == torch.float16
    got = model.extract_feat(full, [metas_for([1, 0])])
    for a, b in zip(ref, got):
        assert b.dtype == torch.float32
        # the key frame's and the history's images now run as two batches of 6 instead of one of 12 (FEATURE_REL)
        torch.testing.assert_close(a, b, rtol=0, atol=FEATURE_REL * a.abs().max().item())

    def grad_norm_from(part):
        model.zero_grad(set_to_none=True)
        feats = model.extract_feat(full, [metas_for([1, 0])])
        feats[0][:, part].sum().backward()
        return sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)

    assert grad_norm_from(slice(0, N)) > 0          # the key frame keeps its gradient path
    assert grad_norm_from(slice(N, None)) == 0      # history frames: no gradient with stop_prev_grad > 0
    model.stop_prev_grad = 0
    assert grad_norm_from(slice(N, None)) > 0


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match='use_grid_mask'):
        build_detector(tiny_cfg(use_grid_mask=True))
    model = build().train()
    with pytest.raises(ValueError, match='voxel_semantics and mask_camera'):
        model(img=torch.cat([images(1), images(0)])[None], img_metas=[metas_for([1, 0])])
    with pytest.raises(ValueError, match=r'\[B, views, 3, H, W\]'):
        model.extract_feat(images(1), [metas_for([1, 0])])


@pytest.mark.parametrize('offline', [False, True])
def test_the_test_step_makes_no_tensor_from_host_values(offline):
    with HostTensorSpy() as control:                    # the spy does see such tensors
        x = torch.zeros(3)
        x[torch.tensor([1])] = 1.0
    assert control.count == 2
    model = build().eval()
    torch.nn.init.constant_(model.pts_bbox_head.transformer.decoder.decoder_layers[-1].cls_branch[-1].bias, 4.0)
    name = 'offline_step' if offline else 'online_step'
    step_fn, counts = getattr(model, name), []

    def spied(*args, **kwargs):
        with HostTensorSpy() as spy:
            out = step_fn(*args, **kwargs)
        counts.append(spy.count)
        return out
    setattr(model, name, spied)
    with torch.no_grad():
        for frames in ([0, 0], [1, 0]):
            img = torch.cat([images(t) for t in frames]) if offline else images(frames[0])
            result = model(img=[img[None]], img_metas=[[metas_for(frames)]], return_loss=False)[0]
    assert counts == [0, 0] and len(result['sem_pred']) > 0
