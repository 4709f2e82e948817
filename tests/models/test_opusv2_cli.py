"""OPUS-V2 through train.py, val.py (mIoU + RayIoU) and timing.py on the tiny synthetic world (CPU), and
the V2 training pipeline on a real sample of that world (GT flips recorded in ego2occ)."""
import numpy as np
import pytest
import torch

from tiny_ops import TINY_TRAIN_DATA_AND_ADAMW, write_tiny_config
from tiny_opusv2 import TINY_OPUSV2_MODEL_CONFIG, TINY_OPUSV2_PIPELINES

CONFIG = TINY_OPUSV2_MODEL_CONFIG + TINY_OPUSV2_PIPELINES + TINY_TRAIN_DATA_AND_ADAMW + '''
batch_size = 1
total_epochs = 1
optimizer_config = dict(type='OptimizerHook', grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(policy='CosineAnnealing', warmup='linear', warmup_iters=2, warmup_ratio=1.0 / 3, min_lr_ratio=1e-3)
checkpoint_config = dict(interval=1, max_keep_ckpts=1)
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook', interval=1, reset_flag=True)])
eval_config = dict(interval=total_epochs)
load_from = None
'''


@pytest.fixture(scope='module')
def v2_config(synthetic_infos, tmp_path_factory):
    work = tmp_path_factory.mktemp('opusv2_cli')
    return work, write_tiny_config(work / 'tiny_opusv2.py', CONFIG, synthetic_infos)


def test_train_val_and_timing(v2_config, capsys):
    import timing
    import train
    import val
    work, config = v2_config
    torch.set_num_threads(1)
    train.main(['--config', config, '--work-dir', str(work / 'train'), '--device', 'cpu', '--no-progress',
                '--no-validate'])
    ckpt = torch.load(work / 'train' / 'latest.pth', map_location='cpu', weights_only=False)
    state = ckpt['state_dict']
    assert 'pts_bbox_head.densifiers.1.cls_branch.2.weight' in state
    assert state['pts_bbox_head.densifiers.0.pfn_layers.0.norm.num_batches_tracked'] > 0   # BN saw training
    # untrained, p = 0.01 keeps nothing above 0.25; lift the last CPD module's prior so val sees voxels
    state['pts_bbox_head.densifiers.1.cls_branch.2.bias'] += 7.6
    weights = work / 'lifted.pth'
    torch.save({'state_dict': state, 'meta': {}}, weights)
    metrics = val.main(['--config', config, '--weights', str(weights), '--device', 'cpu',
                        '--summary-json', str(work / 'metrics.json')])
    assert {'mIoU', 'RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'} <= set(metrics)
    assert all(np.isfinite(metrics[k]) for k in ('mIoU', 'RayIoU'))
    fps = timing.main(['--config', config, '--weights', str(weights), '--device', 'cpu', '--num-warmup', '1',
                       '--samples', '2', '--log-interval', '1'])
    assert fps > 0 and 'Overall fps' in capsys.readouterr().out


def test_training_pipeline_flips_the_gt_and_records_it(v2_config):
    from mmcv import Config
    from mmdet.datasets import build_dataset

    import loaders  # noqa: F401
    _, config = v2_config
    cfg = Config.fromfile(config)
    dataset = build_dataset(cfg.data.train)
    plain = build_dataset(dict(cfg.data.train, pipeline=[
        dict(type='LoadOcc3DFromFile', occ_root=cfg.occ_root)]))
    raw = plain[0]['voxel_semantics']
    seen = set()
    for seed in range(12):
        np.random.seed(seed)
        sample = dataset[0]
        meta = sample['img_metas'].data
        ego2occ = np.asarray(meta['ego2occ'])
        flip_dx, flip_dy = ego2occ[0, 0] < 0, ego2occ[1, 1] < 0
        seen.add((flip_dx, flip_dy))
        np.testing.assert_array_equal(np.abs(ego2occ), np.eye(4))
        want = raw[::-1] if flip_dx else raw
        want = want[:, ::-1] if flip_dy else want
        assert np.array_equal(sample['voxel_semantics'], want)
        assert len(meta['ego2img']) == 12 and 'lidar2img' not in meta
    assert len(seen) == 4


def test_fast_training_path_runs_v2(v2_config):
    """train.py --fast on V2: the sync-free step and lazy logging work with the V2 head and the CPD modules."""
    import json
    import os

    import train
    work, config = v2_config
    torch.set_num_threads(1)
    train.main(['--config', config, '--work-dir', str(work / 'fast'), '--device', 'cpu', '--no-progress',
                '--no-validate', '--fast'])
    name = next(n for n in os.listdir(work / 'fast') if n.endswith('.log.json'))
    with open(work / 'fast' / name) as f:
        records = [r for r in map(json.loads, f) if r.get('mode') == 'train']
    assert records and all(np.isfinite(r['loss']) and 'grad_norm' in r for r in records)
    state = torch.load(work / 'fast' / 'latest.pth', map_location='cpu', weights_only=False)['state_dict']
    assert state['pts_bbox_head.densifiers.0.pfn_layers.0.norm.num_batches_tracked'] > 0
