"""The OPS detector end to end on the CPU with a down-sized config: a training step, inference, online mode."""
import logging

import numpy as np
import pytest
import torch

import models  # noqa: F401
import models.ops as ops_module
from models.feature_cache import FrameFeatureCache
from mmdet.models import build_detector

from camera_rig import pinhole_rig

logging.getLogger('mmcv').setLevel(logging.WARNING)   # init_weights logs one line per parameter

T, N, H, W = 2, 6, 64, 160
PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def tiny_cfg(**kw):
    embed = 32
    cfg = dict(
        type='OPS', use_grid_mask=False, stop_prev_grad=0,
        data_aug=dict(img_color_aug=True, img_norm_cfg=NORM, img_pad_cfg=dict(size_divisor=32)),
        img_backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                          norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=True, style='pytorch',
                          with_cp=True),
        img_neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=embed, num_outs=4),
        pts_bbox_head=dict(
            type='OPSHead', num_classes=17, in_channels=embed, num_query=12, pc_range=PC_RANGE,
            voxel_size=[0.4, 0.4, 0.4],
            transformer=dict(type='OPSTransformer', embed_dims=embed, num_frames=T, num_points=2, num_layers=3,
                             num_levels=4, num_classes=17, num_refines=[1, 2, 4], scales=[0.5], pc_range=PC_RANGE,
                             ffn_dims=64, mixing_out_points=8),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
            loss_pts=dict(type='SmoothL1Loss', beta=0.2, loss_weight=0.5)),
        train_cfg=dict(pts=dict(cls_weights=[10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1])),
        test_cfg=dict(pts=dict(score_thr=0.5, padding=True)))
    cfg.update(kw)
    return cfg


def build(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_detector(tiny_cfg(**kw))
    model.init_weights()
    return model


def rig(frames):
    """lidar2img of six cameras around the car, one set per frame (the car moved 0.5 m per frame)."""
    return list(pinhole_rig(frames, [0, -55, 55, 180, 110, -110], H, W, W / 2, 0.5).astype(np.float32))


def metas_for(frames):
    """frames: frame ids of the T frames (key frame first)."""
    return dict(filename=[f'samples/CAM_{n}/frame{t}.jpg' for t in frames for n in range(N)],
                lidar2img=rig(frames), ego2lidar=np.eye(4, dtype=np.float32),
                img_timestamp=[0.5 * t for t in frames for _ in range(N)])


def images(frame, seed=0):
    return torch.from_numpy(np.random.RandomState(1000 * seed + frame).randint(0, 256, (N, 3, H, W))).to(torch.uint8)


def gt(B):
    sem = np.full((B, 200, 200, 16), 17, np.uint8)
    sem[:, 105:110, 98:103, 2:4] = 4          # a car ahead
    sem[:, 80:120, 80:120, 1] = 11            # road
    sem[:, 95:100, 110:112, 3:6] = 7          # a pedestrian
    mask = np.zeros((B, 200, 200, 16), bool)
    mask[:, 90:130] = True
    return torch.from_numpy(sem), torch.from_numpy(mask)


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
               'layer3': model.img_backbone.layer3[0].conv1.weight, 'fpn': model.img_neck.fpn_convs[0].conv.weight,
               'frozen_stem': model.img_backbone.conv1.weight}
    before = {k: v.detach().clone() for k, v in watched.items()}
    np.random.seed(0)
    out = model.train_step(data, optimizer)
    assert set(out['log_vars']) == {'init_loss_pts', 'd0.loss_cls', 'd0.loss_pts', 'd1.loss_cls', 'd1.loss_pts',
                                    'loss_cls', 'loss_pts', 'loss'}
    assert out['num_samples'] == B and torch.isfinite(out['loss'])
    assert out['log_vars']['loss'] == pytest.approx(sum(v for k, v in out['log_vars'].items() if k != 'loss'),
                                                    rel=1e-5)
    optimizer.zero_grad()
    out['loss'].backward()
    optimizer.step()
    for name in ('head', 'offset', 'init_points', 'layer3', 'fpn'):
        assert not torch.equal(watched[name], before[name]), f'{name} did not change'
    assert torch.equal(watched['frozen_stem'], before['frozen_stem'])
    assert model.img_backbone.conv1.weight.grad is None
    # layers 0 and 1 see one point per query: offsets are scaled by std = 0 and get no gradient (spec 3.5)
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
    torch.testing.assert_close(model.preprocess(img), expected)
    model.train()
    np.random.seed(1)
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
            cached = model.feature_cache.read(slots)
            full = torch.cat([images(t) for t in frames])[None]
            offline_feats = model.extract_feat(full, [metas_for(frames)])
            for a, b in zip(cached, offline_feats):
                assert a.shape == b.shape == (1, T * N) + a.shape[2:]
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
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


def test_online_offline_decision(monkeypatch):
    model = build().eval()
    cur, full = images(1)[None], torch.cat([images(1), images(0)])[None]
    metas = [metas_for([1, 0])]
    monkeypatch.setattr(ops_module, 'get_dist_info', lambda: (0, 1))
    assert model.use_online(cur, metas) is True
    assert model.use_online(full, metas) is False
    monkeypatch.setattr(ops_module, 'get_dist_info', lambda: (0, 2))
    with pytest.raises(ValueError, match='offline test mode needs all 12 images'):
        model.use_online(cur, metas)
    model.online = True
    assert model.use_online(full, metas) is True
    with pytest.raises(ValueError, match='online test mode needs the 6 key-frame images'):
        model.use_online(full[:, :4], metas)


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
        torch.testing.assert_close(a, b)

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
