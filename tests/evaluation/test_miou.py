"""Occ3D mIoU (docs/evaluation.md, "mIoU (Occ3D)") against hand-computed cases and a brute-force float64 count."""
import math

import numpy as np
import pytest

from core.occ3d import FREE_LABEL, LABEL_NAMES
from evaluation.miou import OccMIoU, iou_from_confusion, nanmean_or_nan

F = FREE_LABEL


def hand_case():
    """2x2x2 grids, listed in (x, y, z) order: voxel k = (k >> 2, (k >> 1) & 1, k & 1)."""
    gt = np.array([0, 0, 1, F, 1, F, F, 4], dtype=np.uint8).reshape(2, 2, 2)
    pred = np.array([0, 1, 1, F, F, F, 4, 4], dtype=np.uint8).reshape(2, 2, 2)
    return pred, gt


def test_hand_case_per_class_and_mean():
    pred, gt = hand_case()
    metric = OccMIoU()
    metric.add_batch(pred, gt, np.ones_like(gt, dtype=bool))
    iou = metric.per_class_iou()
    # class 0: TP 1, GT 2, pred 1 -> 1/2; class 1: TP 1, GT 2, pred 2 -> 1/3;
    # class 4: TP 1, GT 1, pred 2 -> 1/2; free: TP 2, GT 3, pred 3 -> 2/4.
    # Exact: one correctly rounded float64 division of the same small integers on both sides.
    assert iou[0] == 0.5
    assert iou[1] == 1 / 3
    assert iou[4] == 0.5
    assert iou[F] == 0.5
    absent = [c for c in range(17) if c not in (0, 1, 4)]
    assert np.isnan(iou[absent]).all()
    # Mean over the three classes present; free excluded; percent with 2 decimals.
    assert metric.miou() == round((0.5 + 1 / 3 + 0.5) / 3 * 100, 2) == 44.44


def test_predicted_class_without_ground_truth_is_skipped():
    # Occ3D rule: a class with no ground-truth voxel is NaN and left out of the mean, even when it
    # is predicted (the plain formula TP / (GT + pred - TP) would give 0 and pull the mean down).
    pred, gt = hand_case()
    pred[1, 0, 0] = 7  # pedestrian where the ground truth is class 1 (predicted free before)
    metric = OccMIoU()
    metric.add_batch(pred, gt, np.ones_like(gt, dtype=bool))
    iou = metric.per_class_iou()
    assert math.isnan(iou[7])
    # class 1: TP 1, GT 2, pred 2 -> 1/3 as before (one division of integers: exact); the mean stays over 0, 1, 4.
    assert iou[1] == 1 / 3
    assert metric.miou() == round((0.5 + 1 / 3 + 0.5) / 3 * 100, 2) == 44.44
    assert '===> pedestrian - IoU = nan' in metric.summary_lines()


def test_the_zero_rule_scores_a_predicted_class_without_ground_truth_0():
    """absent_class='zero' (the Occ3D-Waymo reference): the same case gives pedestrian IoU 0 (predicted once, no
    ground truth: 0 / (0 + 1 - 0)), which enters the mean; a class neither predicted nor present stays NaN."""
    pred, gt = hand_case()
    pred[1, 0, 0] = 7
    metric = OccMIoU(absent_class='zero')
    metric.add_batch(pred, gt, np.ones_like(gt, dtype=bool))
    iou = metric.per_class_iou()
    assert iou[7] == 0.0 and math.isnan(iou[2])
    assert metric.miou() == round((0.5 + 1 / 3 + 0.5 + 0.0) / 4 * 100, 2) == 33.33
    with pytest.raises(ValueError, match="absent_class must be 'skip' or 'zero'"):
        OccMIoU(absent_class='nan').per_class_iou()


def test_class_present_only_outside_the_camera_mask_is_skipped():
    # gt: class 2 (bicycle) only at voxel (0, 0, 1), which the camera does not see; the prediction
    # says bicycle at (0, 1, 0), which it does see (GT there is class 1).
    pred, gt = hand_case()
    gt[0, 0, 1] = 2
    pred[0, 0, 1] = 2
    pred[0, 1, 0] = 2
    mask = np.ones_like(gt, dtype=bool)
    mask[0, 0, 1] = False
    metric = OccMIoU()
    metric.add_batch(pred, gt, mask)
    iou = metric.per_class_iou()
    assert math.isnan(iou[2])
    # Visible: class 0 at (0,0,0) right; class 1 at (0,1,0)->2 and (1,0,0)->F: TP 0, GT 2, pred 0 -> 0;
    # class 4 at (1,1,1) right, (1,1,0) predicted 4 over free: TP 1, GT 1, pred 2 -> 1/2.
    assert iou[0] == 1.0 and iou[1] == 0.0 and iou[4] == 0.5
    assert metric.miou() == round((1.0 + 0.0 + 0.5) / 3 * 100, 2) == 50.0


def test_samples_with_different_class_sets_pool_before_the_rule():
    # Sample A holds classes 0 and 3, sample B classes 0 and 5; B predicts class 9, in no ground truth.
    a_gt = np.array([0, 0, 3, 3, F, F, F, F], np.uint8).reshape(2, 2, 2)
    a_pr = np.array([0, 3, 3, F, F, F, F, F], np.uint8).reshape(2, 2, 2)
    b_gt = np.array([0, 5, 5, 5, F, F, F, F], np.uint8).reshape(2, 2, 2)
    b_pr = np.array([0, 5, F, 9, 5, F, F, 9], np.uint8).reshape(2, 2, 2)
    ones = np.ones((2, 2, 2), bool)
    metric = OccMIoU()
    metric.add_batch(a_pr, a_gt, ones)
    metric.add_batch(b_pr, b_gt, ones)
    iou = metric.per_class_iou()
    # class 0: TP 2, GT 3, pred 2 -> 2/3. class 3: TP 1, GT 2, pred 2 -> 1/3.
    # class 5: TP 1, GT 3, pred 2 -> 1/4. class 9: no GT -> NaN although predicted twice.
    # (one division of integers, correctly rounded on both sides: exact)
    assert iou[0] == 2 / 3 and iou[3] == 1 / 3 and iou[5] == 1 / 4
    assert math.isnan(iou[9])
    assert np.isnan(np.delete(iou[:17], [0, 3, 5])).all()
    assert metric.miou() == round((2 / 3 + 1 / 3 + 1 / 4) / 3 * 100, 2) == 41.67
    # Per-sample confusions added up (what pooling the counts of several processes gives) give the
    # same numbers: the rule is applied to the pooled matrix.
    first, second = OccMIoU(), OccMIoU()
    first.add_batch(a_pr, a_gt, ones)
    second.add_batch(b_pr, b_gt, ones)
    pooled = first.confusion + second.confusion
    np.testing.assert_array_equal(pooled, metric.confusion)
    np.testing.assert_array_equal(iou_from_confusion(pooled), iou)
    assert round(nanmean_or_nan(iou_from_confusion(pooled)[:17]) * 100, 2) == metric.miou()


def test_camera_mask_removes_voxels_from_both_sides():
    pred, gt = hand_case()
    mask = np.ones_like(gt, dtype=bool)
    mask[1, 1, 0] = False  # the wrong class-4 prediction is outside the camera view
    metric = OccMIoU()
    metric.add_batch(pred, gt, mask)
    assert metric.per_class_iou()[4] == 1.0
    assert metric.miou() == round((0.5 + 1 / 3 + 1.0) / 3 * 100, 2) == 61.11
    # Without the mask protocol the voxel counts again.
    unmasked = OccMIoU(use_camera_mask=False)
    unmasked.add_batch(pred, gt)
    assert unmasked.per_class_iou()[4] == 0.5


def test_one_confusion_over_all_samples_not_a_mean_of_samples():
    full = np.zeros((2, 2, 2), dtype=np.uint8)          # 8 voxels of class 0, predicted right
    one = np.full((2, 2, 2), F, dtype=np.uint8)
    one[0, 0, 0] = 0                                    # 1 voxel of class 0, missed
    metric = OccMIoU()
    metric.add_batch(full, full, np.ones((2, 2, 2), bool))
    metric.add_batch(np.full_like(one, F), one, np.ones((2, 2, 2), bool))
    # Pooled: TP 8, GT 9, pred 8 -> 8/9 (a per-sample mean would give 50).
    assert metric.miou() == round(8 / 9 * 100, 2) == 88.89
    assert metric.num_samples == 2


def test_all_classes_absent_gives_nan_without_warning():
    free = np.full((2, 2, 2), F, dtype=np.uint8)
    predicted = free.copy()
    predicted[0, 0, 0] = 4  # a car predicted where everything is free: still no class has GT
    metric = OccMIoU()
    with np.errstate(all='raise'):
        metric.add_batch(predicted, free, np.ones((2, 2, 2), bool))
        assert np.isnan(metric.per_class_iou()[:17]).all()
        assert math.isnan(metric.miou())
    assert metric.per_class_iou()[F] == 7 / 8


def test_random_grids_against_brute_force():
    rng = np.random.default_rng(0)
    metric = OccMIoU()
    tp = np.zeros(18)
    gt_count = np.zeros(18)
    pred_count = np.zeros(18)
    for _ in range(3):
        gt = rng.integers(0, 18, size=(6, 5, 4)).astype(np.uint8)
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 18, size=gt.shape)).astype(np.uint8)
        mask = rng.random(gt.shape) < 0.7
        metric.add_batch(pred, gt, mask)
        for x, y, z in np.ndindex(gt.shape):
            if mask[x, y, z]:
                gt_count[gt[x, y, z]] += 1.0
                pred_count[pred[x, y, z]] += 1.0
                tp[gt[x, y, z]] += float(gt[x, y, z] == pred[x, y, z])
    expected = []
    for c in range(18):
        denom = gt_count[c] + pred_count[c] - tp[c]
        expected.append(tp[c] / denom if gt_count[c] > 0 else float('nan'))
    # the same integer counts divided once in float64 on both sides: equal bit for bit (NaN where no GT)
    np.testing.assert_array_equal(metric.per_class_iou(), expected)
    present = [e for e in expected[:17] if not math.isnan(e)]
    assert metric.miou() == round(sum(present) / len(present) * 100, 2)


def test_confusion_is_additive_over_samples():
    rng = np.random.default_rng(1)
    grids = [(rng.integers(0, 18, (4, 4, 2)), rng.integers(0, 18, (4, 4, 2)), rng.random((4, 4, 2)) < 0.5)
             for _ in range(4)]
    single, a, b = OccMIoU(), OccMIoU(), OccMIoU()
    for i, (p, g, m) in enumerate(grids):
        single.add_batch(p, g, m)
        (a if i % 2 else b).add_batch(p, g, m)
    np.testing.assert_array_equal(a.confusion + b.confusion, single.confusion)
    assert a.num_samples + b.num_samples == single.num_samples == 4


def test_iou_from_confusion_rows_are_ground_truth():
    confusion = np.array([[3, 1], [2, 0]])  # GT 0: 3 right, 1 predicted as 1; GT 1: 2 predicted as 0
    np.testing.assert_array_equal(iou_from_confusion(confusion), [3 / (4 + 5 - 3), 0 / (2 + 1)])  # 1/2, 0: exact
    # A column without its row (class 1 predicted, never in GT) is NaN, not 0.
    iou = iou_from_confusion(np.array([[3, 1], [0, 0]]))
    assert iou[0] == 3 / 4 and math.isnan(iou[1])


def test_summary_lines_follow_the_occ3d_printout():
    pred, gt = hand_case()
    metric = OccMIoU()
    metric.add_batch(pred, gt, np.ones_like(gt, dtype=bool))
    lines = metric.summary_lines()
    assert lines[0] == '===> per class IoU of 1 samples:'
    assert lines[1] == '===> others - IoU = 50.0'
    assert lines[2] == '===> barrier - IoU = 33.33'
    assert lines[3] == '===> bicycle - IoU = nan'
    assert len(lines) == 1 + 17 + 1
    assert lines[-1] == '===> mIoU of 1 samples: 44.44'
    assert LABEL_NAMES[-1] == 'free' and len(LABEL_NAMES) == 18


def test_table():
    pred, gt = hand_case()
    metric = OccMIoU()
    metric.add_batch(pred, gt, np.ones_like(gt, dtype=bool))
    rows = [line for line in metric.table().splitlines() if line.startswith('|')]
    assert rows[0].split('|')[1].strip() == 'Class Names' and len(rows) == 1 + 17 + 1
    assert rows[2].split('|')[2].strip() == '33.33'    # barrier
    assert rows[3].split('|')[2].strip() == 'nan'      # bicycle
    assert rows[-1].split('|')[1].strip() == 'MEAN' and rows[-1].split('|')[2].strip() == '44.44'


def test_bad_inputs_name_the_problem():
    gt = np.zeros((2, 2, 2), np.uint8)
    metric = OccMIoU()
    with pytest.raises(ValueError, match='outside'):
        metric.add_batch(np.full_like(gt, 18), gt, np.ones_like(gt, bool))
    with pytest.raises(ValueError, match='shape'):
        metric.add_batch(np.zeros((2, 2, 3), np.uint8), gt, np.ones_like(gt, bool))
    with pytest.raises(ValueError, match='mask_camera is required'):
        metric.add_batch(gt, gt)
    with pytest.raises(ValueError, match='integer'):
        metric.add_batch(gt.astype(np.float32), gt, np.ones_like(gt, bool))
