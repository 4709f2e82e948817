"""Test oracle of the nuScenes-Occupancy metric (evaluation/ssc.py): counts with boolean masks per class, no
confusion matrix, float64 (a reference for the tests only, not product code)."""
import numpy as np


def boolean_recount(samples, num_classes=16):
    """Per-class IoU (NaN without ground truth) and the occupied-vs-empty IoU of `samples`.

    Args:
        samples: iterable of (pred, gt, mask): int label grids (0..K-1 classes, K = empty) and the bool mask of
            the counted voxels, all of one shape.
    Returns:
        (float64 [K] IoU per class, float geometry IoU), fractions.
    """
    empty = num_classes
    tp, gt_n, pred_n = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    geo = np.zeros(3)   # TP, FN, FP of 'occupied'
    for pred, gt, mask in samples:
        p, g = pred[mask], gt[mask]
        for c in range(num_classes):
            tp[c] += np.logical_and(g == c, p == c).sum()
            gt_n[c] += (g == c).sum()
            pred_n[c] += (p == c).sum()
        geo += [np.logical_and(g != empty, p != empty).sum(), np.logical_and(g != empty, p == empty).sum(),
                np.logical_and(g == empty, p != empty).sum()]
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = tp / (gt_n + pred_n - tp)
    iou[gt_n == 0] = np.nan
    return iou, geo[0] / geo.sum()
