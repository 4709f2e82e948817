"""Evaluation of OPS: the Occ3D mIoU and SparseOcc's RayIoU (docs/evaluation.md).

* pure metric math on label grids: `miou` (OccMIoU), `ray_iou` (virtual LiDAR rays, the voxel
  ray caster, RayIoU) and `ray_origins` (RayOrigins, from the data infos' poses);
* the dataset-bound evaluator: `evaluator` (`evaluate_occupancy`: reads `labels.npz`, builds the
  dense predictions, runs both metrics);
* the saved-prediction format: `predictions` (`<token>.npz` files of `val.py --save-dir`).

Running a model over a data set (the inference loop, distributed result gathering) is
`engine/inference.py`.
"""
from .evaluator import OccEvaluator, evaluate_occupancy
from .miou import OccMIoU
from .predictions import SavedPredictions, compact_result, save_prediction
from .ray_iou import RayIoU
from .ray_origins import RayOrigins

__all__ = ['OccEvaluator', 'evaluate_occupancy', 'OccMIoU', 'RayIoU', 'RayOrigins', 'SavedPredictions',
           'compact_result', 'save_prediction']
