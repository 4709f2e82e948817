"""The nuScenes-Occupancy (OpenOccupancy) metric: geometry IoU and semantic mIoU over one confusion matrix.

The protocol (docs/evaluation.md, "nuScenes-Occupancy"), as the OPUS-V2 authors compute it
(`Metric_mIoU_Occupancy` of loaders/old_metrics.py, github.com/w1394945493/OPUS at 216dc53) and as
OpenOccupancy's SC / SSC numbers are defined (projects/occ_plugin/occupancy/detectors/occnet.py):

* labels: 0..K-1 the K classes (16), K = empty; grids [X, Y, Z] (512 x 512 x 40);
* counted voxels: those of the evaluation mask (`mask_valid`: every voxel except the release's noise
  voxels; empty voxels count). No camera-visibility mask;
* one (K+1) x (K+1) confusion matrix (rows ground truth, columns prediction) summed over the whole set;
* semantic IoU_c = TP / (row_c + col_c - TP) for c < K; NaN for a class without ground-truth voxels in the
  set (the authors' rule, as Occ3D's); mIoU = mean of the K classes without NaN, in percent, 2 decimals;
* geometry IoU: occupied (any class < K) against empty (K): TP = GT occupied and predicted occupied, whatever
  the classes; IoU = TP / (TP + FP + FN) in percent, 2 decimals (NaN when nothing is occupied in the ground
  truth). It is read off the same confusion matrix (its K x K block, last column, last row), which equals the
  authors' separate 2 x 2 histogram.

On the full val set every class occurs, so the NaN rule and OpenOccupancy's plain mean (NaN if any class is
missing) agree.
"""
import numpy as np

from .miou import OccMIoU

__all__ = ['SSCMetric', 'geometry_iou_from_confusion']


def geometry_iou_from_confusion(confusion):
    """Occupied-vs-empty IoU (fraction, float64; NaN without occupied ground truth) of a (K+1) x (K+1) confusion
    matrix whose last label is empty."""
    confusion = np.asarray(confusion, dtype=np.float64)
    occupied_both = confusion[:-1, :-1].sum()
    missed = confusion[:-1, -1].sum()        # GT occupied, predicted empty
    invented = confusion[-1, :-1].sum()      # GT empty, predicted occupied
    gt_occupied = occupied_both + missed
    if gt_occupied == 0:
        return float('nan')
    return float(occupied_both / (occupied_both + missed + invented))


class SSCMetric(OccMIoU):
    """Accumulates the nuScenes-Occupancy metric sample by sample.

    Args:
        class_names (sequence[str]): all label names, empty last (17 for nuScenes-Occupancy).

    `add_batch(pred, gt, mask)`: int label grids of one sample and the bool evaluation mask (`mask_valid`),
    all of one shape. `miou()` and `geometry_iou()` return percent, 2 decimals.
    """

    def __init__(self, class_names):
        super().__init__(class_names, use_camera_mask=True)   # the mask argument is required: the noise mask

    def add_batch(self, pred, gt, mask=None):
        """Accumulate one sample: pred, gt int [X, Y, Z] (0..K-1 classes, K empty), mask bool [X, Y, Z]."""
        if mask is None:
            raise ValueError('SSCMetric.add_batch needs the evaluation mask (mask_valid of the label file: False on '
                             'noise voxels)')
        super().add_batch(pred, gt, mask)

    def geometry_iou(self):
        """Occupied-vs-empty IoU in percent, rounded to 2 decimals (NaN without occupied ground truth)."""
        return round(geometry_iou_from_confusion(self.confusion) * 100, 2)

    def summary(self):
        """dict(mIoU=percent, IoU=percent): the two numbers nuScenes-Occupancy papers report."""
        return {'mIoU': self.miou(), 'IoU': self.geometry_iou()}

    def table(self):
        """Per-class IoU (percent) with the MEAN row, then the geometry IoU."""
        return f'{super().table()}\ngeometry IoU (occupied vs empty): {self.geometry_iou():.2f}'

    def summary_lines(self):
        """The authors' printout: one line per class, the mIoU, then the geometry IoU."""
        return super().summary_lines() + [f'===> IoU of {self.num_samples} samples: {self.geometry_iou()}']
