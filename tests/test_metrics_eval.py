"""`evaluate_occupancy` end to end on small on-disk Occ3D files, against an independent recount."""
import math

import numpy as np
import pytest
import torch

from loaders.ego_pose import RayOrigins
from loaders.occ_eval import (SavedPredictions, compact_result, dense_prediction, evaluate_occupancy,
                              occ_gt_path, save_prediction)
from loaders.occ_metrics import FREE_LABEL as F
from loaders.ray_metrics import cast_ray_scalar, generate_lidar_rays

RAYS = generate_lidar_rays()[::97]  # 145 rays: keeps the scalar recount below fast


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Ray casting works on ~10^4-element tensors: extra threads only add contention on a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_world(root, num_samples=3, seed=0):
    """Infos + labels.npz files: two scenes, ego driving along x; ground, boxes, a camera mask."""
    rng = np.random.default_rng(seed)
    infos, gts, preds = [], [], []
    for i in range(num_samples):
        scene = 'scene-0001' if i < 2 else 'scene-0002'
        token = f'tok{i:02d}'
        infos.append(dict(scene_name=scene, token=token, timestamp=i,
                          lidar2ego_translation=[0.94, 0.0, 1.84], lidar2ego_rotation=[1.0, 0.0, 0.0, 0.0],
                          ego2global_translation=[600.0 + 6.3 * i, 1600.0, 0.0],
                          ego2global_rotation=[math.cos(0.05 * i), 0.0, 0.0, math.sin(0.05 * i)]))
        sem = np.full((200, 200, 16), F, np.uint8)
        sem[:, :, 1] = np.where(rng.random((200, 200)) < 0.7, 11, 13)
        for _ in range(60):
            x, y, z = rng.integers(0, 195), rng.integers(0, 195), rng.integers(2, 12)
            sem[x:x + rng.integers(1, 6), y:y + rng.integers(1, 6), z:z + rng.integers(1, 4)] = rng.integers(0, 17)
        mask = rng.random(sem.shape) < 0.8
        path = root / scene / token
        path.mkdir(parents=True)
        np.savez_compressed(path / 'labels.npz', semantics=sem, mask_lidar=mask, mask_camera=mask)
        pred = sem.copy()
        change = rng.random(sem.shape) < 0.05
        pred[change] = rng.integers(0, 18, int(change.sum()))
        pred = np.roll(pred, shift=i, axis=0)  # shifted predictions give depth errors
        loc = np.argwhere(pred != F)
        preds.append(dict(sem_pred=pred[tuple(loc.T)].astype(np.int64), occ_loc=loc.astype(np.int64)))
        gts.append((sem, mask))
    return infos, gts, preds


def reference_metrics(infos, gts, preds, rays):
    """Independent recount: explicit float64 confusion, scalar ray casting, Python counters."""
    confusion = np.zeros((18, 18))
    gt_cnt, pred_cnt, tp = np.zeros(18), np.zeros(18), np.zeros((3, 18))
    origins = RayOrigins(infos)
    scale = np.float64(np.float32(0.4))
    offset = np.array([-40.0, -40.0, -1.0])
    for i, ((gt, mask), result) in enumerate(zip(gts, preds)):
        pred = np.full(gt.shape, F, np.int64)
        for (x, y, z), label in zip(result['occ_loc'], result['sem_pred']):
            pred[x, y, z] = label
        np.add.at(confusion, (gt[mask].astype(np.int64), pred[mask]), 1.0)
        for origin in origins[i]:
            start = ((origin - offset) / scale).astype(np.float32)
            for ray in rays:
                end = ((ray.astype(np.float64) + origin - offset) / scale).astype(np.float32)
                d_gt, v_gt = cast_ray_scalar(gt != F, start.tolist(), end.tolist())
                if gt[v_gt] == F:
                    continue
                d_pr, v_pr = cast_ray_scalar(pred != F, start.tolist(), end.tolist())
                depth_gt = np.float32(np.float32(d_gt) * np.float32(0.4))
                depth_pr = np.float32(np.float32(d_pr) * np.float32(0.4))
                gt_cnt[gt[v_gt]] += 1
                pred_cnt[pred[v_pr]] += 1
                for j, tau in enumerate((1, 2, 4)):
                    if gt[v_gt] == pred[v_pr] and abs(depth_pr - depth_gt) < tau:
                        tp[j, gt[v_gt]] += 1
    tps = np.diag(confusion)
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = tps / (confusion.sum(0) + confusion.sum(1) - tps)
        ray_iou = (tp / (gt_cnt + pred_cnt - tp))[:, :17]
    return dict(mIoU=round(np.nanmean(iou[:17]) * 100, 2), RayIoU=np.nanmean(ray_iou),
                **{f'RayIoU@{t}': np.nanmean(ray_iou[j]) for j, t in enumerate((1, 2, 4))})


def test_evaluate_matches_independent_recount(tmp_path):
    infos, gts, preds = make_world(tmp_path)
    got = evaluate_occupancy(preds, infos, str(tmp_path), logger='silent', device='cpu', rays=RAYS,
                             show_progress=False, ray_batch=2)
    expected = reference_metrics(infos, gts, preds, RAYS)
    assert set(got) == {'mIoU', 'RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'}
    assert got['mIoU'] == expected['mIoU']
    for key in ('RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0 < got['RayIoU@1'] < got['RayIoU@4'] < 1  # the shifted predictions leave room at 1 m


def test_perfect_prediction_with_the_protocol_rays(tmp_path, capsys):
    infos, gts, _ = make_world(tmp_path, num_samples=1)
    sem = gts[0][0]
    loc = np.argwhere(sem != F)
    got = evaluate_occupancy([dict(sem_pred=sem[tuple(loc.T)], occ_loc=loc)], infos, str(tmp_path),
                             device='cpu', show_progress=False)
    assert got['mIoU'] == 100.0
    assert got['RayIoU'] == got['RayIoU@1'] == got['RayIoU@4'] == 1.0
    printed = capsys.readouterr().out
    assert '===> mIoU of 1 samples: 100.0' in printed and 'RayIoU@2' in printed and 'MEAN' in printed


def test_occ_path_in_the_info_takes_precedence(tmp_path):
    infos, _, preds = make_world(tmp_path, num_samples=1)
    assert occ_gt_path(infos[0], str(tmp_path)) == str(tmp_path / 'scene-0001' / 'tok00' / 'labels.npz')
    moved = tmp_path / 'elsewhere.npz'
    (tmp_path / 'scene-0001' / 'tok00' / 'labels.npz').rename(moved)
    with pytest.raises(FileNotFoundError, match='labels.npz'):
        evaluate_occupancy(preds, infos, str(tmp_path), logger='silent', rays=RAYS, show_progress=False)
    infos[0]['occ_path'] = str(moved)
    evaluate_occupancy(preds, infos, str(tmp_path), logger='silent', rays=RAYS, show_progress=False)


def test_bad_results_are_reported(tmp_path):
    infos, _, preds = make_world(tmp_path, num_samples=1)
    with pytest.raises(ValueError, match='one entry per dataset sample'):
        evaluate_occupancy(preds * 2, infos, str(tmp_path), logger='silent', show_progress=False)
    with pytest.raises(ValueError, match='outside the grid'):
        dense_prediction(dict(sem_pred=np.array([1]), occ_loc=np.array([[0, 0, 16]])))
    with pytest.raises(ValueError, match='2 labels but occ_loc 1'):
        dense_prediction(dict(sem_pred=np.array([1, 2]), occ_loc=np.array([[0, 0, 0]])))
    with pytest.raises(KeyError, match='sem_pred'):
        dense_prediction(dict(labels=np.array([1])))


def test_dense_prediction_fills_free():
    dense = dense_prediction(dict(sem_pred=np.array([3, 16]), occ_loc=np.array([[0, 1, 2], [199, 199, 15]])))
    assert dense.shape == (200, 200, 16) and dense[0, 1, 2] == 3 and dense[199, 199, 15] == 16
    assert (dense != F).sum() == 2


def test_saved_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    results = [dict(sem_pred=rng.integers(0, 17, 50), occ_loc=np.stack(
        [rng.integers(0, 200, 50), rng.integers(0, 200, 50), rng.integers(0, 16, 50)], 1)) for _ in range(2)]
    for token, result in zip(['a', 'b'], results):
        save_prediction(str(tmp_path / f'{token}.npz'), result)
        small = compact_result(result)
        assert small['sem_pred'].dtype == np.uint8 and small['occ_loc'].dtype == np.uint8
    loaded = SavedPredictions(str(tmp_path), ['a', 'b'])
    assert len(loaded) == 2
    for got, want in zip(loaded, results):
        assert got['sem_pred'].dtype == np.int64
        np.testing.assert_array_equal(got['sem_pred'], want['sem_pred'])
        np.testing.assert_array_equal(got['occ_loc'], want['occ_loc'])
    with pytest.raises(FileNotFoundError, match='1 of 3 predictions are missing'):
        SavedPredictions(str(tmp_path), ['a', 'b', 'c'])
    with pytest.raises(FileNotFoundError, match='prediction folder not found'):
        SavedPredictions(str(tmp_path / 'nope'), ['a'])
