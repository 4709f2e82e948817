"""OPUS-Fusion end to end on the tiny synthetic world (CPU): its infos' LiDAR scans -> the points pipeline ->
train.py (one epoch of the demo config, shrunk further: the tiny Fusion model of tests/tiny_fusion.py) with the
evaluation at its end -> val.py -> metrics equal to an evaluation of the saved predictions."""
import os
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
from mmcv import Config

from core.occ3d import POINT_CLOUD_RANGE
from evaluation import SavedPredictions, evaluate_occupancy
from loaders.pipelines.points import read_points
from tiny_fusion import EMBED, TINY_LIDAR

DEMO = 'configs/opus-fusion-demo_synthetic.py'


@pytest.fixture(scope='module')
def config(synthetic_infos, tmp_path_factory):
    """The demo config on the tests' world, the tiny model, 160 x 90 images, one epoch: (work dir, config file)."""
    cfg = Config.fromfile(DEMO)
    ida = dict(cfg.ida_aug_conf, resize_lim=(0.9, 1.1), final_dim=(64, 160), H=90, W=160)
    occ_root = osp.join(synthetic_infos.root, 'gts')
    for pipeline in (cfg.data.train.pipeline, cfg.data.val.pipeline):
        for step in pipeline:
            if step['type'] == 'RandomTransformImage':
                step['ida_aug_conf'] = ida
            if step['type'] == 'LoadOccFromFile':
                step['occ_root'] = occ_root
    for split, ann in (('train', synthetic_infos.train), ('val', synthetic_infos.val), ('test', synthetic_infos.val)):
        cfg.data[split].update(data_root=synthetic_infos.root, occ_root=occ_root, ann_file=ann)
    cfg.data.test.pipeline = cfg.data.val.pipeline
    cfg.data.workers_per_gpu = 0
    cfg.model.update({key: value for key, value in TINY_LIDAR.items()})
    cfg.model.img_neck.out_channels = EMBED
    cfg.model.pts_bbox_head.update(num_query=12, in_channels=EMBED)
    cfg.model.pts_bbox_head.transformer.update(embed_dims=EMBED, num_layers=2, num_points=2, num_refines=[1, 4],
                                               ffn_dims=64)
    cfg.merge_from_dict(dict(total_epochs=1, eval_config=dict(interval=1), lr_config=dict(warmup_iters=2),
                             log_config=dict(interval=1, hooks=[dict(type='TextLoggerHook', interval=1)])))
    work = tmp_path_factory.mktemp('fusion_e2e')
    path = str(work / 'tiny_fusion.py')
    cfg.dump(path)
    return work, path, synthetic_infos


def test_the_points_reach_the_batch(config):
    from engine.build import build_dataset
    _, path, infos = config
    cfg = Config.fromfile(path)
    sample = build_dataset(cfg.data.train)[0]
    points = sample['points'].data
    info = sorted(mmcv.load(infos.train)['infos'], key=lambda e: e['timestamp'])[0]
    key = read_points(info['lidar_path'], 5)
    assert points.dtype == torch.float32 and points.shape[1] == 5 and sample['points'].stack is False
    # the first key frame has no earlier sweep: its scan, close points removed, 9 more times at time lag 0
    assert info['lidar_sweeps'] == [] and (points[:, 4] == 0).all()
    lo, hi = torch.tensor(POINT_CLOUD_RANGE[:3]), torch.tensor(POINT_CLOUD_RANGE[3:])
    assert ((points[:, :3] > lo) & (points[:, :3] < hi)).all() and len(points) <= 10 * len(key)
    assert set(sample['img_metas'].data) >= {'ego2img', 'ego2occ', 'ego2points'}


def test_train_val_and_metrics(config):
    import train
    import val
    work, path, infos = config
    torch.set_num_threads(1)
    train.main(['--config', path, '--work-dir', str(work / 'train'), '--device', 'cpu', '--no-progress'])
    text = ''.join(p.read_text() for p in (work / 'train').glob('*.log.json'))
    losses = [float(x.split(': ')[1].split(',')[0]) for x in text.split('"loss"')[1:]]
    assert len(losses) == 3 and all(np.isfinite(losses))              # 3 training samples, batch 1
    assert '"RayIoU"' in text                                         # the evaluation hook ran at the epoch's end
    state = torch.load(work / 'train' / 'latest.pth', map_location='cpu', weights_only=False)['state_dict']
    assert 'pts_middle_encoder.conv_input.0.weight' in state and 'pts_bbox_head.init_points.weight' not in state
    assert state['pts_bbox_head.transformer.decoder.decoder_layers.1.img_pts_mixing.out_proj.weight'].shape == \
        (EMBED, 4 * 2 * 2 * (EMBED // 4))                             # G x (T+1)*np x C_g, T = 1, np = 2
    # untrained, the class prior (p = 0.01) keeps nothing above 0.3: lift the last layer's bias so val sees voxels
    state['pts_bbox_head.transformer.decoder.decoder_layers.1.cls_branch.6.bias'] += 7.6
    weights = work / 'lifted.pth'
    torch.save({'state_dict': state, 'meta': {}}, weights)
    preds = work / 'preds'
    metrics = val.main(['--config', path, '--weights', str(weights), '--device', 'cpu', '--save-dir', str(preds)])
    assert set(metrics) == {'mIoU', 'RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'}
    data_infos = sorted(mmcv.load(infos.val)['infos'], key=lambda e: e['timestamp'])
    tokens = [info['token'] for info in data_infos]
    assert sorted(os.listdir(preds)) == sorted(f'{t}.npz' for t in tokens)
    saved = SavedPredictions(str(preds), tokens)
    assert sum(len(saved[i]['sem_pred']) for i in range(len(saved))) > 0
    direct = evaluate_occupancy(saved, data_infos, osp.join(infos.root, 'gts'), logger='silent', device='cpu',
                                show_progress=False)
    assert direct == metrics


def test_infos_without_lidar_and_points_of_another_dimension_are_named(config, tmp_path):
    """The Fusion config on infos without the LiDAR fields, and on a LiDAR file of 4 values per point: one-line
    errors naming the info file / LiDAR file and the fix (`user_error`: printed without a traceback)."""
    import pickle

    from engine.build import build_dataset
    from loaders.pipelines.points import PointCloudError
    _, path, infos = config
    cfg = Config.fromfile(path)
    data = mmcv.load(infos.val)
    for info in data['infos']:
        info.pop('lidar_path')
    stripped = tmp_path / 'no_lidar.pkl'
    with open(stripped, 'wb') as f:
        pickle.dump(data, f)
    with pytest.raises(PointCloudError) as err:
        build_dataset(dict(cfg.data.val, ann_file=str(stripped)))[0]
    assert 'has no lidar_path' in str(err.value) and str(stripped) in str(err.value)
    assert err.value.user_error and str(err.value).count('\n') == 0

    data = mmcv.load(infos.val)
    info = sorted(data['infos'], key=lambda e: e['timestamp'])[0]
    four = tmp_path / 'four_values.pcd.bin'
    # 101 points of 4 float32 values: 1,616 bytes, not a whole number of 20-byte points
    read_points(info['lidar_path'], 5)[:101, :4].tofile(four)
    info['lidar_path'] = str(four)
    info['lidar_sweeps'] = []
    odd = tmp_path / 'four_values.pkl'
    with open(odd, 'wb') as f:
        pickle.dump(dict(data, infos=[info]), f)
    with pytest.raises(PointCloudError, match='holds points of another dimension') as err:
        build_dataset(dict(cfg.data.val, ann_file=str(odd)))[0]
    assert str(four) in str(err.value) and str(err.value).count('\n') == 0
