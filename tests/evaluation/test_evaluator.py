"""`evaluate_occupancy` end to end on small on-disk Occ3D files, against an independent recount."""
import numpy as np
import pytest

from core.occ3d import FREE_LABEL as F
from core.occ3d import LabelFileError
from evaluation.evaluator import (
    EvaluationThread,
    OccEvaluator,
    dense_prediction,
    evaluate_occupancy,
    format_summary,
    occ_gt_path,
)
from evaluation.ray_iou import generate_lidar_rays
from evaluation.ray_origins import RayOrigins
from occ_world import make_world
from ray_oracle import cast_ray_scalar

RAYS = generate_lidar_rays()[::97]  # 145 rays: keeps the scalar recount below fast


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
    # Both sides divide the same integer counts (identical float64 IoUs); only the summation order of the mean
    # differs (masked .mean() vs np.nanmean): <= (n - 1) EPS / 2 each for n <= 3 x 17 values in [0, 1].
    mean_tol = 3 * 17 * np.finfo(np.float64).eps
    for key in ('RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'):
        assert got[key] == pytest.approx(expected[key], abs=mean_tol), key
    assert 0 < got['RayIoU@1'] < got['RayIoU@4'] < 1  # the shifted predictions leave room at 1 m


def test_the_evaluation_thread_gives_the_same_metrics_in_any_order(tmp_path):
    infos, gts, preds = make_world(tmp_path)
    expected = evaluate_occupancy(preds, infos, str(tmp_path), logger='silent', device='cpu', rays=RAYS,
                                  show_progress=False, ray_batch=2)
    thread = EvaluationThread(OccEvaluator(infos, str(tmp_path), device='cpu', ray_batch=2, rays=RAYS))
    for index in reversed(range(len(preds))):
        thread.put(index, preds[index])
    assert thread.summary('silent') == expected     # integer counts: the same in any order


def test_the_evaluation_thread_raises_the_error_of_a_sample():
    class MissingLabels:
        def update(self, index, result):
            raise FileNotFoundError(f'no labels for sample {index}')

    thread = EvaluationThread(MissingLabels())
    thread.put(3, {})
    with pytest.raises(FileNotFoundError, match='sample 3'):
        thread.summary()


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


def test_the_label_root_wins_over_the_infos_occ_path(tmp_path):
    """The one label-path rule (docs/data.md, "Label files"): a label root given wins; the info's occ_path is
    used only without one."""
    infos, _, preds = make_world(tmp_path, num_samples=1)
    labels = tmp_path / 'scene-0001' / 'tok00' / 'labels.npz'
    moved = tmp_path / 'elsewhere.npz'
    infos[0]['occ_path'] = str(moved)
    assert occ_gt_path(infos[0], str(tmp_path)) == str(labels)     # the root wins over occ_path
    assert occ_gt_path(infos[0], None) == str(moved)                # no root: the info's path
    evaluate_occupancy(preds, infos, str(tmp_path), logger='silent', rays=RAYS, show_progress=False)
    labels.rename(moved)
    with pytest.raises(FileNotFoundError, match=r'ground truth not found: .*tok00/labels.npz\. Check occ_root'):
        evaluate_occupancy(preds, infos, str(tmp_path), logger='silent', rays=RAYS, show_progress=False)
    evaluate_occupancy(preds, infos, None, logger='silent', rays=RAYS, show_progress=False)
    del infos[0]['occ_path']
    with pytest.raises(ValueError, match="no label root given and the sample info has no 'occ_path': set occ_root"):
        evaluate_occupancy(preds, infos, None, logger='silent', rays=RAYS, show_progress=False)


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


def test_format_summary_is_in_percent():
    line = format_summary({'mIoU': 33.2, 'RayIoU': 0.384, 'RayIoU@1': 0.317, 'RayIoU@2': 0.392, 'RayIoU@4': 0.443})
    assert line == 'mIoU 33.20 | RayIoU 38.40 | RayIoU@1 31.70 | RayIoU@2 39.20 | RayIoU@4 44.30  (percent)'


def test_another_benchmark_is_evaluated_by_its_description(tmp_path, monkeypatch):
    """The made-up toy description (tests/toy_benchmark.py): its label layout, its grid, mIoU over every voxel (no
    camera mask), no RayIoU; against a confusion matrix counted by hand."""
    from toy_benchmark import TOY, register_toy
    register_toy(monkeypatch)
    gt = np.full((4, 4, 2), 3, np.uint8)           # 3 = free
    gt[0, :, 0] = 1                                # 4 road voxels
    gt[1, 0, 1] = 0                                # 1 car
    (tmp_path / 'scene-a').mkdir()
    # an all-false mask_camera: the toy's mIoU does not use it (with it, no voxel would count)
    np.savez(tmp_path / 'scene-a' / 'tok.npz', semantics=gt, mask_camera=np.zeros(gt.shape, bool))
    # prediction: 3 of the 4 road voxels, the car as a tree, one extra road voxel
    pred = dict(sem_pred=np.array([1, 1, 1, 2, 1]), occ_loc=np.array([[0, 0, 0], [0, 1, 0], [0, 2, 0], [1, 0, 1],
                                                                     [3, 3, 0]]))
    infos = [dict(scene_name='scene-a', token='tok')]  # no poses: without RayIoU none are read
    got = evaluate_occupancy([pred], infos, str(tmp_path), logger='silent', show_progress=False, benchmark='toy-street')
    # by hand: car TP 0 of (gt 1 + pred 0) -> 0; road TP 3 / (gt 4 + pred 4 - 3) = 3/5; tree: no GT voxel -> NaN,
    # skipped; mIoU = mean(0, 0.6) = 30 %
    assert got == {'mIoU': 30.0}
    assert format_summary(got) == 'mIoU 30.00  (percent)'
    # the same file evaluated as Occ3D-nuScenes (reached through the info's occ_path): the grid is refused by name
    occ_infos = [dict(infos[0], occ_path=str(tmp_path / 'scene-a' / 'tok.npz'))]
    with pytest.raises(LabelFileError, match=r'tok\.npz: semantics has shape \(4, 4, 2\), expected \(200, 200, 16\)'):
        evaluate_occupancy([pred], occ_infos, None, logger='silent', show_progress=False)
    assert TOY.ray_iou is False and TOY.camera_mask is False
