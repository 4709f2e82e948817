"""Occ3D-Waymo end to end on the tiny synthetic world (CPU): the release's info, pose and label files -> two
training iterations of configs/ops-demo_waymo_synthetic.py -> val.py -> metrics; and the metric path scored on the
ground truth itself (full marks) and on a hand-made corruption of it (an independent recount)."""
import json
import math
import os
import os.path as osp

import numpy as np
import pytest
import torch

import train
import val
from core.benchmarks import OCC3D_WAYMO
from evaluation import SavedPredictions
from evaluation.ray_iou import generate_lidar_rays
from loaders.waymo_occ_dataset import WaymoOccDataset
from waymo_world import waymo_world

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'ops-demo_waymo_synthetic.py')
FREE, VEHICLE = OCC3D_WAYMO.free_label, 1


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return waymo_world(tmp_path_factory)


@pytest.fixture
def one_thread():
    """The ray caster and the tiny model work on small tensors: a second thread only adds contention on CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def paths(world):
    """--cfg-options moving the demo config's datasets to the tiny world (its pipelines take the datasets' labels)."""
    options = ['data.workers_per_gpu=0']
    for split, ann, poses in (('train', world.train, world.train_poses), ('val', world.val, world.val_poses)):
        options += [f'data.{split}.ann_file={ann}', f'data.{split}.pose_file={poses}',
                    f'data.{split}.data_root={world.data_root}', f'data.{split}.occ_root={world.occ_root}']
    return options


def val_dataset(world):
    return WaymoOccDataset(world.val, world.val_poses, data_root=world.data_root, test_mode=True)


def test_demo_config_trains_evaluates_and_saves(world, tmp_path):
    work, preds = tmp_path / 'work', tmp_path / 'preds'
    # one epoch of the demo's every-2nd-frame training set: frames 0 and 2 of the 4-frame sequence
    train.main(['--config', DEMO, '--work-dir', str(work), '--device', 'cpu', '--no-progress', '--no-validate',
                '--cfg-options', 'total_epochs=1', *paths(world)])
    logs = [name for name in os.listdir(work) if name.endswith('.log.json')]
    with open(work / logs[0]) as f:
        records = [r for r in map(json.loads, f) if r.get('mode') == 'train']
    # the demo logs every 8 iterations and at the epoch's end: one record, after the 2nd iteration
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 2)] and math.isfinite(records[0]['loss'])
    metrics = val.main(['--config', DEMO, '--weights', str(work / 'latest.pth'), '--device', 'cpu',
                        '--save-dir', str(preds), '--cfg-options', *paths(world)])
    assert set(metrics) == {'mIoU', 'RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'}
    assert 0.0 <= metrics['mIoU'] <= 100.0 and all(0.0 <= metrics[k] <= 1.0 for k in metrics if k != 'mIoU')
    ds = val_dataset(world)
    tokens = [info['token'] for info in ds.data_infos]
    assert sorted(os.listdir(preds)) == sorted(f'{t}.npz' for t in tokens)
    # the saved predictions, evaluated by the dataset (what training's evaluation hook calls): the same numbers
    assert ds.evaluate(SavedPredictions(str(preds), tokens), logger='silent', show_progress=False) == metrics


def sparse(grid):
    occ = np.argwhere(grid != FREE)
    return dict(sem_pred=grid[tuple(occ.T)].astype(np.int64), occ_loc=occ)


def test_the_ground_truth_scores_full_marks_and_a_corruption_its_recount(world, one_thread):
    ds = val_dataset(world)
    labels = [OCC3D_WAYMO.read_labels(info['occ_path']) for info in ds.data_infos]
    truth = [sparse(lab['semantics']) for lab in labels]
    # every 50th of the 14,040 rays (281): the full set takes seconds per sample on a CI core
    quick = dict(logger='silent', show_progress=False, rays=generate_lidar_rays()[::50])
    full = {'mIoU': 100.0, 'RayIoU': 1.0, 'RayIoU@1': 1.0, 'RayIoU@2': 1.0, 'RayIoU@4': 1.0}
    assert ds.evaluate(truth, **quick) == full
    assert ds.evaluate(truth, camera_mask=False, **quick) == full
    # every VEHICLE voxel predicted free: VEHICLE's IoU is 0, every other class keeps 1; the mean runs over the
    # classes with ground truth among the counted voxels (recounted here from the files)
    no_vehicle = [sparse(np.where(lab['semantics'] == VEHICLE, FREE, lab['semantics'])) for lab in labels]
    for camera_mask in (True, False):
        present = set()
        for lab in labels:
            counted = lab['semantics'][lab['mask_camera']] if camera_mask else lab['semantics']
            present |= set(np.unique(counted).tolist()) - {FREE}
        assert VEHICLE in present
        got = ds.evaluate(no_vehicle, camera_mask=camera_mask, **quick)
        assert got['mIoU'] == round((len(present) - 1) / len(present) * 100, 2)
