"""tools/evaluate.py: saved predictions of any benchmark evaluated with the protocol stated above the tables;
the same numbers as val.py, from a config or from the infos; the camera mask switched off checked against an
independent count."""
import json
import os
import shutil

import numpy as np
import pytest

from tools import evaluate


def test_the_same_numbers_as_val_py_from_a_config_or_from_the_infos(tiny_val_setup, single_run, capsys, tmp_path):
    work, config, checkpoint, infos = tiny_val_setup
    metrics, preds, _ = single_run
    got = evaluate.main(['--benchmark', 'occ3d-nuscenes', '--pred-dir', str(preds), '--config', config,
                         '--device', 'cpu', '--json', str(tmp_path / 'm.json')])
    assert got == metrics                     # the same evaluation code as val.py: identical numbers
    out = capsys.readouterr().out
    assert ('protocol: Occ3D-nuScenes (occ3d-nuscenes): grid 200 x 200 x 16 of 0.4 m over '
            '[-40, -40, -1, 40, 40, 5.4] m') in out
    assert 'mIoU: 17 classes (others .. vegetation), free (17) not averaged; camera-visible voxels only' in out
    assert 'RayIoU: depth thresholds 1, 2, 4 m; 14,040 rays' in out
    assert out.index('protocol:') < out.index('IoU (%)')          # the protocol comes above the tables
    saved = json.loads((tmp_path / 'm.json').read_text())
    assert {k: saved[k] for k in metrics} == metrics and saved['benchmark'] == 'occ3d-nuscenes'
    assert saved['protocol'][0].startswith('protocol: Occ3D-nuScenes')
    from_infos = evaluate.main(['--benchmark', 'occ3d-nuscenes', '--pred-dir', str(preds), '--infos', infos.val,
                                '--data-root', infos.root, '--occ-root', os.path.join(infos.root, 'gts'),
                                '--device', 'cpu'])
    assert from_infos == metrics


def masked_ground_truth_predictions(infos, occ_root, out):
    """A prediction per val sample: its ground truth where the cameras see, free elsewhere (`<token>.npz`)."""
    import pickle
    with open(infos.val, 'rb') as f:
        data = pickle.load(f)
    out.mkdir()
    grids = []
    for info in data['infos']:
        labels = np.load(os.path.join(occ_root, info['scene_name'], info['token'], 'labels.npz'))
        gt, mask = labels['semantics'], labels['mask_camera']
        loc = np.argwhere(mask & (gt != 17))
        np.savez(out / f"{info['token']}.npz", sem_pred=gt[tuple(loc.T)].astype(np.int64), occ_loc=loc)
        pred = np.full(gt.shape, 17, np.uint8)
        pred[tuple(loc.T)] = gt[tuple(loc.T)]
        grids.append((pred, gt))
    return grids


def independent_miou(grids):
    """Occ3D mIoU over every voxel (no mask), counted here: per class TP / (TP + FP + FN) summed over the samples,
    classes 0..16 (free 17 not averaged), a class with an empty union skipped; percent, 2 decimals."""
    tp, union = np.zeros(17), np.zeros(17)
    for pred, gt in grids:
        for c in range(17):
            tp[c] += np.sum((pred == c) & (gt == c))
            union[c] += np.sum((pred == c) | (gt == c))
    return round(float(np.mean(tp[union > 0] / union[union > 0])) * 100, 2)


def test_camera_mask_off_counts_every_voxel(tiny_val_setup, capsys, tmp_path):
    work, config, _, infos = tiny_val_setup
    preds = tmp_path / 'masked_gt'
    grids = masked_ground_truth_predictions(infos, os.path.join(infos.root, 'gts'), preds)
    base = ['--benchmark', 'occ3d-nuscenes', '--pred-dir', str(preds), '--config', config, '--device', 'cpu']
    on = evaluate.main(base)
    off = evaluate.main(base + ['--camera-mask', 'off'])
    assert 'every voxel counted' in capsys.readouterr().out
    assert on['mIoU'] == 100.0               # the ground truth itself, where the mask looks
    # integer counts on both sides, one division per class and a mean of 17: equal to the 2 decimals printed
    assert off['mIoU'] == independent_miou(grids) < 100.0


def test_bad_inputs_are_one_line_each(tiny_val_setup, single_run, tmp_path):
    work, config, _, infos = tiny_val_setup
    _, preds, _ = single_run
    foreign = tmp_path / 'foreign'
    shutil.copytree(preds, foreign)
    first = sorted(foreign.iterdir())[0]
    np.savez(first, sem_pred=np.array([3]), occ_loc=np.array([[300, 12, 30]]))     # a 512 x 512 x 40 voxel
    base = ['--pred-dir', str(foreign), '--config', config, '--device', 'cpu']
    with pytest.raises(SystemExit, match=r'evaluate.py: error: .*: voxel indices reach \(300, 12, 30\), outside the '
                                         r'200 x 200 x 16 grid evaluated: predictions of another benchmark'):
        evaluate.main(['--benchmark', 'occ3d-nuscenes'] + base)
    with pytest.raises(SystemExit, match='is a occ3d-nuscenes config, not occ3d-waymo'):
        evaluate.main(['--benchmark', 'occ3d-waymo'] + base)
    with pytest.raises(SystemExit, match='nuScenes-Occupancy has no camera mask'):
        evaluate.main(['--benchmark', 'nuscenes-occupancy', '--camera-mask', 'on'] + base)
    first.unlink()
    with pytest.raises(SystemExit, match='1 of 3 predictions are missing'):
        evaluate.main(['--benchmark', 'occ3d-nuscenes'] + base)
