"""OPS-T (configs/ops-t_r50_704x256_8f_12e.py, random init, no pretrained weights) on the real nuScenes
keyframe of ../shared/data, on the CPU.

* Test mode: the full OPS-T (ResNet-50 + FPN, 6 layers, 600 queries x 128 points, 8 frames, online
  mode: the keyframe has no history, so its frame stands in for all 8) returns a well-formed prediction.
* Training: one step with the real Occ3D grid as ground truth gives finite losses and gradients. To keep
  it CI-sized on a 2-core CPU it runs OPS-T with **one frame** instead of eight (num_frames = 1,
  sweeps_num = 0): the eight frames would be eight copies of the same six images here, and the backbone's
  forward + backward over 48 images at 704x256 would take minutes. Everything else is OPS-T.
"""
import os.path as osp
import time

import numpy as np
import pytest
import torch
from mmcv import Config
from mmcv.parallel import collate
from mmdet.models import build_detector

import models  # noqa: F401  (registers OPS)
import real_data
from engine.parallel import unpack_batch

CONFIG = osp.join(real_data.REPO_ROOT, 'configs', 'ops-t_r50_704x256_8f_12e.py')
T, N, FH, FW = 8, 6, 256, 704


def ops_t(num_frames=T, online=None):
    """(cfg, model) of OPS-T, randomly initialised; `online=True`: the one-process test mode of val.py."""
    cfg = Config.fromfile(CONFIG)
    cfg.load_from = None  # random init: no pretrained backbone
    if online is not None:
        from engine.build import set_test_mode
        set_test_mode(cfg, online=online)
    if num_frames != T:
        cfg.model.pts_bbox_head.transformer.num_frames = num_frames
        for key in ('train_pipeline', 'test_pipeline'):
            for step in cfg[key]:
                if step['type'] == 'LoadMultiViewImageFromMultiSweeps':
                    step['sweeps_num'] = num_frames - 1
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    model.init_weights()
    return cfg, model


def batch(infos, cfg, pipeline, test_mode):
    ds = real_data.keyframe_dataset(infos, cfg, pipeline, test_mode)
    return unpack_batch(collate([ds[0]], samples_per_gpu=1), torch.device('cpu'))


def last_cls_bias(model):
    """The class-logit bias of the last decoder layer (the layer the prediction is read from)."""
    name, bias = [(n, p) for n, p in model.named_parameters() if 'cls_branch' in n and n.endswith('bias')][-1]
    return name, bias


def check_prediction(res):
    assert isinstance(res, list) and len(res) == 1 and set(res[0]) == {'sem_pred', 'occ_loc'}
    sem, loc = res[0]['sem_pred'], res[0]['occ_loc']
    assert isinstance(sem, np.ndarray) and isinstance(loc, np.ndarray)
    assert sem.dtype == np.int64 and loc.dtype == np.int64
    assert sem.ndim == 1 and loc.shape == (len(sem), 3)
    if len(sem):
        assert sem.min() >= 0 and sem.max() <= 16
        assert loc.min() >= 0 and (loc.max(0) < [200, 200, 16]).all()
        assert len(np.unique(loc, axis=0)) == len(loc)  # one label per voxel
    return sem, loc


def test_ops_t_test_mode_on_the_real_keyframe(real_keyframe_infos):
    cfg, model = ops_t(online=True)
    assert cfg.model.pts_bbox_head.num_query == 600 and cfg.model.pts_bbox_head.transformer.num_frames == T
    data = batch(real_keyframe_infos, cfg, cfg.data.test.pipeline, True)
    img, meta = data['img'][0], data['img_metas'][0][0]
    assert tuple(img.shape) == (1, N, 3, FH, FW) and img.dtype == torch.uint8  # online: key-frame images only
    assert len(meta['lidar2img']) == T * N
    # random init gives class scores ~ 0.01 (prior 0.01), so nothing passes the 0.5 score threshold; make
    # the last layer confident (bias +4: p ~ 0.98) so that the prediction is not trivially empty
    name, bias = last_cls_bias(model)
    with torch.no_grad():
        bias.fill_(4.0)
    model.eval()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        res = model(return_loss=False, rescale=True, **data)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    sem, loc = check_prediction(res)
    assert len(sem) > 100, f'{name} = 4 should make many voxels occupied, got {len(sem)}'
    print(f'\nOPS-T test forward on the CPU: {elapsed:.1f} s wall, {cpu:.1f} s CPU; {len(sem)} occupied voxels, '
          f'classes {np.unique(sem).tolist()}')


def test_ops_t_training_step_with_the_real_occ3d_grid(real_keyframe_infos, real_occ3d):
    cfg, model = ops_t(num_frames=1)  # see the module docstring
    np.random.seed(0)
    data = batch(real_keyframe_infos, cfg, 'train_pipeline', False)
    assert tuple(data['img'].shape) == (1, N, 3, FH, FW)
    np.testing.assert_array_equal(data['voxel_semantics'][0].numpy(), real_occ3d['semantics'])
    np.testing.assert_array_equal(data['mask_camera'][0].numpy(), real_occ3d['mask_camera'])
    model.train()
    model.zero_grad()
    t0, c0 = time.perf_counter(), time.process_time()
    out = model.train_step(data, None)
    t_forward = time.perf_counter() - t0
    log = out['log_vars']
    expected = {'init_loss_pts', 'loss_cls', 'loss_pts'} | {f'd{i}.loss_{k}' for i in range(5) for k in ('cls', 'pts')}
    assert expected <= set(log), sorted(log)
    assert all(np.isfinite(v) for v in log.values()), log
    assert torch.isfinite(out['loss']) and out['loss'] > 0 and out['num_samples'] == 1
    # the total is the float32 sum of the 13 nonnegative terms: 12 additions, each rounding by <= 2^-24 of a
    # running sum <= the total: < 13 * 2^-24 relative to the exact sum of the logged float32 values
    terms = [v for k, v in log.items() if 'loss' in k and k != 'loss']
    assert log['loss'] == pytest.approx(sum(terms), rel=len(terms) * float(np.finfo(np.float32).eps) / 2)
    t0 = time.perf_counter()
    out['loss'].backward()
    t_backward, cpu = time.perf_counter() - t0, time.process_time() - c0
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert len(grads) > 100 and all(torch.isfinite(g).all() for g in grads)
    # the loss reaches the backbone (its residual branches start at zero: mmdet's zero_init_residual, so
    # the gradient shows on their last norm's scale and on the shortcut convolutions)
    backbone = model.img_backbone
    assert backbone.layer4[-1].norm3.weight.grad.abs().sum() > 0
    assert backbone.layer2[0].downsample[0].weight.grad.abs().sum() > 0
    print(f'\nOPS-T (1 frame) training step on the CPU: forward {t_forward:.1f} s, backward {t_backward:.1f} s wall, '
          f'{cpu:.1f} s CPU in all; loss '
          f'{log["loss"]:.3f} (' + ', '.join(f'{k} {v:.3f}' for k, v in sorted(log.items()) if k != 'loss') + ')')
