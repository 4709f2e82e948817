"""The dataset-bound evaluator: Occ3D mIoU + RayIoU of sparse predictions against `labels.npz` files.

`evaluate_occupancy` streams over the samples: for each one, the ground truth is read from its
`labels.npz`, the dense prediction grid is built, both metrics accumulate counts, and the grids
are dropped (a few samples are kept together only to cast their rays in one batch). The protocol:
docs/evaluation.md.
"""
import os.path as osp

import torch

from core.geometry import dense_from_sparse
from core.occ3d import FREE_LABEL, GRID_SHAPE, LABEL_NAMES, POINT_CLOUD_RANGE, VOXEL_SIZE, read_labels

from .miou import OccMIoU
from .ray_iou import RayIoU
from .ray_origins import RayOrigins

__all__ = ['evaluate_occupancy', 'OccEvaluator', 'occ_gt_path', 'load_occ_gt', 'dense_prediction', 'format_summary',
           'log_msg']


def log_msg(msg, logger=None):
    """Print `msg` (logger None), drop it (logger 'silent') or send it to `logger.info`."""
    if logger is None:
        print(msg, flush=True)
    elif logger != 'silent':
        logger.info(msg)


def occ_gt_path(info, occ_root):
    """`info['occ_path']` if given, else `<occ_root>/<scene_name>/<token>/labels.npz` (Occ3D layout)."""
    if info.get('occ_path'):
        return info['occ_path']
    if occ_root is None:
        raise ValueError('occ_root is None and the data info has no "occ_path": pass the Occ3D gts/ folder '
                         '(config key occ_root, e.g. data/nuscenes/gts/)')
    return osp.join(occ_root, info['scene_name'], info['token'], 'labels.npz')


def load_occ_gt(path):
    """Read an Occ3D `labels.npz`: (semantics uint8 [X, Y, Z], mask_camera bool [X, Y, Z])."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'Occ3D ground truth not found: {path}. Check occ_root (the gts/ folder of '
                                f'Occ3D-nuScenes) or regenerate the info pickles with gen_sweep_info.py')
    labels = read_labels(path, ('semantics', 'mask_camera'))
    return labels['semantics'], labels['mask_camera'].astype(bool)


def dense_prediction(result, shape=GRID_SHAPE, free_label=FREE_LABEL):
    """Dense uint8 label grid [X, Y, Z] of one model result (free everywhere else).

    Args:
        result (dict): `sem_pred` int [M] labels and `occ_loc` int [M, 3] (x, y, z) voxel indices.
    """
    if 'sem_pred' not in result or 'occ_loc' not in result:
        raise KeyError(f'a prediction must be dict(sem_pred=[M], occ_loc=[M, 3]); got keys {sorted(result)}')
    return dense_from_sparse(result['sem_pred'], result['occ_loc'], shape, free_label)


class OccEvaluator:
    """Accumulates mIoU and RayIoU sample by sample; `summary()` gives the final numbers.

    Args:
        data_infos (list[dict]): dataset infos (dataset order), see `RayOrigins` and `occ_gt_path`.
        occ_root (str | None): Occ3D `gts/` folder.
        device (str | torch.device | None): ray-casting device; None = CUDA when available.
        ray_batch (int | None): samples cast together (default 16 on CUDA, 1 on CPU).
        rays (array | None): ray directions (default: the 14,040 virtual LiDAR rays).
    """

    def __init__(self, data_infos, occ_root, device=None, ray_batch=None, rays=None,
                 class_names=LABEL_NAMES, pc_range=POINT_CLOUD_RANGE, voxel_size=VOXEL_SIZE[0],
                 grid_shape=GRID_SHAPE):
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        device = torch.device(device)
        self.data_infos = data_infos
        self.occ_root = occ_root
        self.grid_shape = tuple(grid_shape)
        self.origins = RayOrigins(data_infos)
        self.miou = OccMIoU(class_names)
        self.ray_iou = RayIoU(class_names, rays=rays, pc_range=pc_range, voxel_size=voxel_size, device=device)
        # On the GPU the traversal's cost is mostly kernel launches (a few dozen per step, the same for
        # any number of rays): batching samples amortises them (16 samples ~ 1 GB of ray state).
        self.ray_batch = ray_batch or (16 if device.type == 'cuda' else 1)
        self._pending = []

    def update(self, index, result):
        """Add the prediction for dataset sample `index`."""
        info = self.data_infos[index]
        gt, mask_camera = load_occ_gt(occ_gt_path(info, self.occ_root))
        if tuple(gt.shape) != self.grid_shape:
            raise ValueError(f'{occ_gt_path(info, self.occ_root)}: semantics has shape {gt.shape}, '
                             f'expected {self.grid_shape}')
        pred = dense_prediction(result, self.grid_shape)
        self.miou.add_batch(pred, gt, mask_camera)
        self._pending.append((pred, gt, self.origins[index]))
        if len(self._pending) >= self.ray_batch:
            self.flush()

    def flush(self):
        if self._pending:
            preds, gts, origins = zip(*self._pending)
            self.ray_iou.add_batch(list(preds), list(gts), list(origins))
            self._pending = []

    def summary(self, logger=None):
        """Log the per-class tables and return dict(mIoU=percent, RayIoU, RayIoU@1/2/4 as fractions)."""
        self.flush()
        log_msg(f'Occ3D mIoU over {self.miou.num_samples} samples (camera mask):\n{self.miou.table()}', logger)
        log_msg(self.miou.summary_lines()[-1], logger)
        log_msg(f'RayIoU over {self.ray_iou.num_samples} samples:\n{self.ray_iou.table()}', logger)
        out = {'mIoU': self.miou.miou()}
        out.update(self.ray_iou.summary())
        return out


def evaluate_occupancy(results, data_infos, occ_root, logger=None, device=None, ray_batch=None,
                       show_progress=True, rays=None):
    """Occ3D mIoU and RayIoU of `results` against the ground truth of `data_infos`.

    Args:
        results (Sequence[dict]): one `dict(sem_pred=int [M], occ_loc=int [M, 3])` per sample, in
            dataset order (any Sequence, e.g. a lazy loader of saved predictions).
        data_infos (list[dict]): the dataset's infos (sorted by timestamp), with `scene_name`,
            `token`, `lidar2ego_*`, `ego2global_*` and optionally `occ_path`.
        occ_root (str | None): Occ3D `gts/` folder (used when an info has no `occ_path`).
        logger (logging.Logger | str | None): where tables go (None = print, 'silent' = nowhere).
        device: ray-casting device (None = CUDA when available, else CPU).
        ray_batch (int | None): samples whose rays are cast together.
        show_progress (bool): tqdm bar.
        rays (array | None): float32 [R, 3] ray directions (default: the protocol's 14,040).
    Returns:
        dict(mIoU=percent rounded to 2 decimals, RayIoU, RayIoU@1, RayIoU@2, RayIoU@4 as fractions).
    """
    if len(results) != len(data_infos):
        raise ValueError(f'{len(results)} predictions for {len(data_infos)} samples: results must hold one entry '
                         f'per dataset sample, in dataset order')
    evaluator = OccEvaluator(data_infos, occ_root, device=device, ray_batch=ray_batch, rays=rays)
    indices = range(len(data_infos))
    if show_progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc='evaluating', dynamic_ncols=True)
    for index in indices:
        evaluator.update(index, results[index])
    return evaluator.summary(logger)


def format_summary(metrics):
    """One line with every number of `evaluate_occupancy`'s dict in percent (as the README reports them)."""
    keys = ['mIoU', 'RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4']
    values = [metrics['mIoU']] + [metrics[k] * 100 for k in keys[1:]]
    return ' | '.join(f'{k} {v:.2f}' for k, v in zip(keys, values)) + '  (percent)'
