"""Occ3D-nuScenes mIoU: one 18x18 confusion matrix over the whole set, camera mask.

The protocol: docs/evaluation.md, "mIoU (Occ3D)". Pure metric math on label grids, no files: the
dataset-bound evaluator (evaluation/evaluator.py) feeds it.
Grids are dense label volumes ``[X, Y, Z]`` (``[200, 200, 16]`` for Occ3D) indexed (x, y, z), labels
0..16 = semantic classes, 17 = free (core/occ3d.py).
"""
import numpy as np

from core.occ3d import LABEL_NAMES, NUM_LABELS

__all__ = ['OccMIoU', 'iou_from_confusion', 'nanmean_or_nan', 'check_label_grid']


def check_label_grid(grid, name, num_labels=NUM_LABELS, shape=None):
    """Raise ValueError unless `grid` is an integer array with values in [0, num_labels)."""
    grid = np.asarray(grid)
    if grid.dtype.kind not in 'iu':
        raise ValueError(f'{name} must hold integer labels, got dtype {grid.dtype}; '
                         f'cast class ids to an integer type (free = {num_labels - 1})')
    if shape is not None and tuple(grid.shape) != tuple(shape):
        raise ValueError(f'{name} has shape {tuple(grid.shape)}, expected {tuple(shape)} (Occ3D [x, y, z] grid)')
    if grid.size and (grid.min() < 0 or grid.max() >= num_labels):
        raise ValueError(f'{name} has labels outside [0, {num_labels - 1}] (min {grid.min()}, max {grid.max()}); '
                         f'Occ3D labels are 0..{num_labels - 2} and {num_labels - 1} = free')
    return grid


def iou_from_confusion(confusion, absent_class='skip'):
    """Per-class IoU from a confusion matrix (rows ground truth, columns prediction), float64.

    IoU_c = TP / (row_c + col_c - TP). A class with no ground-truth voxel in the accumulated set (row sum 0):
    `absent_class='skip'` gives it NaN whatever was predicted, the Occ3D-nuScenes rule of the official Occ3D
    code (a NaN class is skipped by the mean, so a class predicted but absent does not pull the mIoU down);
    'zero' gives it 0 when it was predicted and NaN only when neither exists, the Occ3D-Waymo reference's rule
    (docs/evaluation.md).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    gt_count = confusion.sum(1)
    denom = gt_count + confusion.sum(0) - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = tp / denom
    if absent_class == 'skip':
        iou[gt_count == 0] = np.nan
    elif absent_class == 'zero':
        iou[denom == 0] = np.nan
    else:
        raise ValueError(f"absent_class must be 'skip' or 'zero', got {absent_class!r}")
    return iou


def nanmean_or_nan(values):
    """np.nanmean without the all-NaN RuntimeWarning (returns NaN then)."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else float('nan')


class OccMIoU:
    """Occ3D mIoU accumulator (the `Metric_mIoU(num_classes=18, use_image_mask=True)` protocol).

    Args:
        class_names (sequence[str]): names of all labels, free last (18 for Occ3D).
        use_camera_mask (bool): evaluate only voxels whose `mask_camera` is true.
    """

    def __init__(self, class_names=LABEL_NAMES, use_camera_mask=True, absent_class='skip'):
        self.class_names = tuple(class_names)
        self.absent_class = absent_class
        self.num_labels = len(self.class_names)
        self.use_camera_mask = use_camera_mask
        # int64 counts are exact; the original's float64 histogram is exact up to 2**53 as well.
        self.confusion = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)
        self.num_samples = 0

    def add_batch(self, pred, gt, mask_camera=None):
        """Accumulate one sample.

        Args:
            pred (ndarray): int predicted labels [X, Y, Z] (0..16, 17 = free).
            gt (ndarray): int ground-truth labels [X, Y, Z].
            mask_camera (ndarray | None): bool [X, Y, Z]; required when `use_camera_mask`.
        """
        gt = check_label_grid(gt, 'ground truth', self.num_labels)
        pred = check_label_grid(pred, 'prediction', self.num_labels, shape=gt.shape)
        if self.use_camera_mask:
            if mask_camera is None:
                raise ValueError('mask_camera is required by the Occ3D protocol (use_camera_mask=True); '
                                 'load it from labels.npz["mask_camera"]')
            mask_camera = np.asarray(mask_camera)
            if mask_camera.shape != gt.shape:
                raise ValueError(f'mask_camera has shape {mask_camera.shape}, ground truth {gt.shape}')
            mask_camera = mask_camera.astype(bool)
            gt, pred = gt[mask_camera], pred[mask_camera]
        flat = gt.reshape(-1).astype(np.int64) * self.num_labels + pred.reshape(-1).astype(np.int64)
        self.confusion += np.bincount(flat, minlength=self.num_labels ** 2).reshape(self.num_labels, self.num_labels)
        self.num_samples += 1

    def per_class_iou(self):
        """float64 [num_labels] IoU per label (fractions, NaN = label without ground-truth voxels)."""
        return iou_from_confusion(self.confusion, self.absent_class)

    def miou(self):
        """mIoU in percent over the semantic classes (free excluded), rounded to 2 decimals like Occ3D."""
        return round(nanmean_or_nan(self.per_class_iou()[:-1]) * 100, 2)

    def table(self):
        """Per-class IoU (percent, 2 decimals) as a PrettyTable with a MEAN row."""
        from prettytable import PrettyTable
        ious = self.per_class_iou()
        table = PrettyTable(['Class Names', 'IoU (%)'])
        table.float_format = '.2'
        for i, (name, iou) in enumerate(zip(self.class_names[:-1], ious[:-1])):
            table.add_row([name, iou * 100], divider=(i == len(self.class_names) - 2))
        table.add_row(['MEAN', self.miou()])
        return table.get_string()

    def summary_lines(self):
        """The Occ3D printout: one line per semantic class, then the mIoU."""
        ious = self.per_class_iou()
        lines = [f'===> per class IoU of {self.num_samples} samples:']
        for name, iou in zip(self.class_names[:-1], ious[:-1]):
            lines.append(f'===> {name} - IoU = {round(iou * 100, 2)}')
        lines.append(f'===> mIoU of {self.num_samples} samples: {self.miou()}')
        return lines
