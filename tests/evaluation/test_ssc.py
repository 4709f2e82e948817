"""evaluation/ssc.py (the nuScenes-Occupancy metric) and its use by the evaluator.

Reference semantics: the OPUS-V2 authors' `Metric_mIoU_Occupancy` (loaders/old_metrics.py) and
`NuScenesOccupancyDataset.evaluate` (loaders/nuscenes_occupancy_dataset.py), github.com/w1394945493/OPUS at
216dc53: a 17 x 17 histogram and a 2 x 2 occupied(0)/empty(1) histogram over the voxels whose release label is
not noise, summed over the set; per-class IoU NaN where the class has no ground truth; mIoU = nanmean of the 16
classes and IoU = the binary histogram's IoU of 'occupied', both x100 rounded to 2 decimals. The expected values
below are a hand count and a recount with boolean masks per class (no confusion matrix), in float64
(tests/ssc_oracle.py).
"""
import numpy as np
import pytest

from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY
from evaluation.evaluator import evaluate_occupancy, format_summary
from evaluation.ssc import SSCMetric, geometry_iou_from_confusion
from ssc_oracle import boolean_recount

LABELS = NUSCENES_OCCUPANCY.label_names     # 16 classes + free


def test_hand_counted_case():
    """Two classes + empty; the last voxel is noise (mask False) and must not count."""
    metric = SSCMetric(('a', 'b', 'empty'))
    gt = np.array([0, 0, 1, 2, 2, 1, 0])
    pred = np.array([0, 1, 1, 2, 0, 2, 2])
    mask = np.array([True] * 6 + [False])
    metric.add_batch(pred, gt, mask)
    # class a: TP 1 (voxel 0), GT 2 (0, 1), predicted 2 (0, 4) -> 1 / 3; class b: TP 1 (2), GT 2 (2, 5),
    # predicted 2 (1, 2) -> 1 / 3; mIoU 33.33. Occupied: GT {0, 1, 2, 5}, predicted {0, 1, 2, 4}: TP 3, FN 1 (5),
    # FP 1 (4) -> 3 / 5 = 60 %. Counting the noise voxel would give a: 1/4, IoU 3/6.
    assert metric.miou() == 33.33 and metric.geometry_iou() == 60.0
    assert metric.summary() == {'mIoU': 33.33, 'IoU': 60.0}
    lines = metric.summary_lines()
    assert lines[-2] == '===> mIoU of 1 samples: 33.33' and lines[-1] == '===> IoU of 1 samples: 60.0'
    assert 'geometry IoU (occupied vs empty): 60.00' in metric.table()


def test_a_class_without_ground_truth_is_skipped_and_no_occupied_ground_truth_is_nan():
    metric = SSCMetric(('a', 'b', 'empty'))
    # b is predicted once but never in the ground truth: NaN, not 0 (the authors' rule)
    metric.add_batch(np.array([0, 1, 2]), np.array([0, 2, 2]), np.ones(3, bool))
    assert metric.miou() == 100.0 and metric.geometry_iou() == 50.0
    assert np.isnan(geometry_iou_from_confusion(np.diag([0, 0, 5])))
    with pytest.raises(ValueError, match='needs the evaluation mask'):
        metric.add_batch(np.array([0]), np.array([0]))


def test_random_grids_match_a_boolean_recount():
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(3):
        gt = rng.choice(17, size=(64, 32, 8), p=[0.02] * 15 + [0.0, 0.7]).astype(np.uint8)   # class 15 never in GT
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 17, gt.shape)).astype(np.uint8)
        mask = rng.random(gt.shape) > 0.1
        samples.append((pred, gt, mask))
    metric = SSCMetric(LABELS)
    for s in samples:
        metric.add_batch(*s)
    iou, geometry = boolean_recount(samples)
    got = metric.per_class_iou()[:16]
    # both sides divide the same integer counts in float64: identical quotients, NaN at the same class
    np.testing.assert_array_equal(got, iou)
    assert np.isnan(got[15])
    assert geometry_iou_from_confusion(metric.confusion) == geometry
    # the mean of 15 values in [0, 1]: summation order may move the last bit (<= 15 eps); far below 0.005 rounding
    assert abs(metric.miou() - np.nanmean(iou) * 100) <= 0.005 + 15 * np.finfo(np.float64).eps * 100
    assert metric.geometry_iou() == round(geometry * 100, 2)


def write_release_file(root, scene_token, lidar_token, rows):
    folder = root / f'scene_{scene_token}' / 'occupancy'
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f'{lidar_token}.npy', np.asarray(rows, dtype=np.int64))


def test_the_evaluator_reads_release_files_and_skips_noise(tmp_path):
    """Two samples on the real 512 x 512 x 40 grid, counted by hand."""
    # sample 1: a car (release 4 -> 3) at x=10, y=20, z=5 and a noise voxel at x=0, y=0, z=0
    write_release_file(tmp_path, 'sc', 'l1', [[5, 20, 10, 4], [0, 0, 0, 0]])
    # sample 2: two driveable-surface voxels (release 11 -> 10)
    write_release_file(tmp_path, 'sc', 'l2', [[15, 100, 200, 11], [15, 100, 201, 11]])
    infos = [dict(token='t1', scene_name='scene-1', scene_token='sc', lidar_token='l1'),
             dict(token='t2', scene_name='scene-1', scene_token='sc', lidar_token='l2')]
    preds = [dict(sem_pred=np.array([3, 7]), occ_loc=np.array([[10, 20, 5], [0, 0, 0]])),   # car right; noise: any
             dict(sem_pred=np.array([10, 0]), occ_loc=np.array([[200, 100, 15], [300, 300, 30]]))]
    got = evaluate_occupancy(preds, infos, str(tmp_path), logger='silent', show_progress=False,
                             benchmark='nuscenes-occupancy')
    # car: 1/1; driveable surface: TP 1 / (GT 2 + pred 1 - 1) = 1/2; others no GT -> NaN; mIoU 75.
    # occupied: GT 3, predicted 3 (the prediction in the noise voxel is not counted): TP 2, FN 1, FP 1 -> 50 %.
    assert got == {'mIoU': 75.0, 'IoU': 50.0}
    assert format_summary(got) == 'mIoU 75.00 | IoU 50.00  (percent)'
