"""nuScenes-Occupancy end to end on the tiny synthetic world (CPU): the release's label layout -> gen_sweep_info.py
infos -> train.py (a few iterations of the demo config's OPUS-V2, shrunk further) -> val.py -> geometry IoU and
mIoU, checked against an independent recount from the saved predictions and the label files."""
import numpy as np
import pytest
import torch
from mmcv import Config

from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY
from evaluation import SavedPredictions
from nusc_occupancy_world import nusc_occupancy_world
from ssc_oracle import boolean_recount

DEMO = 'configs/opusv2-demo_nusc-occupancy_synthetic.py'
OPS_T = 'configs/ops-t_r50_704x256_8f_nusc-occupancy_24e.py'
R18 = dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
           norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=False, style='pytorch', with_cp=False)


def tiny_config(source, world, path, num_frames, **transformer):
    """`source` on the tests' world, written to `path`: ResNet-18, 32 channels, 12 queries, 2 layers,
    `num_frames` frames, 160 x 90 images, fp32, one epoch over the 3 training samples, evaluated at its end."""
    cfg = Config.fromfile(source)
    ida = dict(cfg.ida_aug_conf, resize_lim=(0.9, 1.1), final_dim=(64, 160), H=90, W=160)
    for pipeline in (cfg.data.train.pipeline, cfg.data.val.pipeline):
        for step in pipeline:
            if step['type'] == 'RandomTransformImage':
                step['ida_aug_conf'] = ida
            if step['type'] == 'LoadOccFromFile':
                step['occ_root'] = world.occ_root
            if step['type'] == 'LoadMultiViewImageFromMultiSweeps':
                step['sweeps_num'] = num_frames - 1
    for split, ann in (('train', world.train), ('val', world.val), ('test', world.val)):
        cfg.data[split].update(data_root=world.root, occ_root=world.occ_root, ann_file=ann)
    cfg.data.test.pipeline = cfg.data.val.pipeline
    cfg.data.workers_per_gpu = 0
    cfg.model.img_backbone = R18
    cfg.model.img_neck.update(in_channels=[64, 128, 256, 512], out_channels=32)
    cfg.model.pts_bbox_head.update(num_query=12, in_channels=32)
    cfg.model.pts_bbox_head.transformer.update(embed_dims=32, num_layers=2, num_points=2, num_frames=num_frames,
                                               ffn_dims=64, mixing_out_points=8, with_cp=False, **transformer)
    cfg.merge_from_dict(dict(total_epochs=1, batch_size=1, eval_config=dict(interval=1), lr_config=dict(warmup_iters=2),
                             optimizer_config=dict(type='OptimizerHook'), load_from=None,
                             log_config=dict(interval=1, hooks=[dict(type='TextLoggerHook', interval=1)])))
    cfg.dump(str(path))
    return str(path)


@pytest.fixture(scope='module')
def config(synthetic_world, tmp_path_factory):
    """The demo config (OPUS-V2) on the tests' world, 12 queries x 8 points: (work dir, config file, world)."""
    world = nusc_occupancy_world(synthetic_world, tmp_path_factory)
    work = tmp_path_factory.mktemp('nusc_occupancy_e2e')
    path = tiny_config(DEMO, world, work / 'tiny_nusc_occupancy.py', num_frames=1, num_refines=[4, 8],
                       num_pt_channels=8)
    cfg = Config.fromfile(path)
    cfg.model.pts_bbox_head.pfn_channels = [16, 16]
    cfg.dump(path)
    return work, path, world


def test_train_val_and_metrics(config):
    import train
    import val
    work, path, world = config
    torch.set_num_threads(1)
    train.main(['--config', path, '--work-dir', str(work / 'train'), '--device', 'cpu', '--no-progress'])
    logs = (work / 'train').glob('*.log.json')
    text = ''.join(p.read_text() for p in logs)
    assert '"mIoU"' in text and '"IoU"' in text                     # the evaluation hook ran the SSC metric
    ckpt = torch.load(work / 'train' / 'latest.pth', map_location='cpu', weights_only=False)
    state = ckpt['state_dict']
    assert state['pts_bbox_head.voxel_num'].tolist() == [512, 512, 40]
    assert state['pts_bbox_head.densifiers.1.cls_branch.2.weight'].shape[-1] == 16
    # untrained, p = 0.01 keeps nothing above 0.25: lift the last CPD module's prior so val sees voxels
    state['pts_bbox_head.densifiers.1.cls_branch.2.bias'] += 7.6
    weights = work / 'lifted.pth'
    torch.save({'state_dict': state, 'meta': {}}, weights)
    preds = work / 'preds'
    metrics = val.main(['--config', path, '--weights', str(weights), '--device', 'cpu', '--save-dir', str(preds)])
    assert set(metrics) == {'mIoU', 'IoU'}

    import mmcv
    infos = sorted(mmcv.load(world.val)['infos'], key=lambda e: e['timestamp'])
    saved = SavedPredictions(str(preds), [info['token'] for info in infos])
    samples = []
    for i, info in enumerate(infos):
        pred = np.full(NUSCENES_OCCUPANCY.grid_shape, NUSCENES_OCCUPANCY.free_label, np.int64)
        loc = np.asarray(saved[i]['occ_loc'], np.int64)
        pred[loc[:, 0], loc[:, 1], loc[:, 2]] = saved[i]['sem_pred']
        labels = NUSCENES_OCCUPANCY.read_labels(info['occ_path'])
        samples.append((pred, labels['semantics'], labels['mask_valid']))
    assert sum(len(saved[i]['sem_pred']) for i in range(len(saved))) > 0     # the lifted model predicts voxels
    iou, geometry = boolean_recount(samples)
    # both sides divide the same integer counts in float64; the class mean may differ in the last bits by the
    # summation order (<= 16 EPS), far below the 0.005 of rounding to 2 decimals, which decides the comparison
    assert metrics['IoU'] == round(geometry * 100, 2)
    assert abs(metrics['mIoU'] - np.nanmean(iou) * 100) <= 0.005 + 16 * np.finfo(np.float64).eps * 100


def test_ops_trains_on_the_benchmark(synthetic_world, tmp_path_factory):
    """The OPS (V1) config's training path: the full camera mask, 16 classes, empty = 16, the 0.2 m grid."""
    import train
    world = nusc_occupancy_world(synthetic_world, tmp_path_factory)
    work = tmp_path_factory.mktemp('nusc_occupancy_ops')
    path = tiny_config(OPS_T, world, work / 'tiny_ops.py', num_frames=2, num_refines=[1, 4])
    torch.set_num_threads(1)
    # no evaluation: OPS's closing holds a [16, 512, 512, 40] float32 grid per sample (671 MB), too much for CI
    train.main(['--config', path, '--work-dir', str(work / 'train'), '--device', 'cpu', '--no-progress',
                '--no-validate'])
    logs = ''.join(p.read_text() for p in (work / 'train').glob('*.log.json'))
    losses = [float(x.split(': ')[1].split(',')[0]) for x in logs.split('"loss"')[1:]]
    assert len(losses) == 3 and all(np.isfinite(losses))
    state = torch.load(work / 'train' / 'latest.pth', map_location='cpu', weights_only=False)['state_dict']
    assert state['pts_bbox_head.voxel_num'].tolist() == [512, 512, 40]
    assert state['pts_bbox_head.transformer.decoder.decoder_layers.1.cls_branch.6.weight'].shape[0] == 16 * 4
