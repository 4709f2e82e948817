"""The dataset-bound evaluator: Occ3D mIoU + RayIoU of sparse predictions against `labels.npz` files.

The protocol's numbers (label names, grid, camera mask, RayIoU on/off) and the label-path rule come from
the benchmark description (core/benchmarks/), given by name.

`evaluate_occupancy` streams over the samples: for each one, the ground truth is read from its
`labels.npz`, the dense prediction grid is built, both metrics accumulate counts, and the grids
are dropped (a few samples are kept together only to cast their rays in one batch). The protocol:
docs/evaluation.md.
"""
import os.path as osp
import queue
import threading

import torch

from core.benchmarks import DEFAULT_BENCHMARK, LABEL_ROOT_KEY, OCC3D_NUSCENES, BenchmarkError, get_benchmark
from core.geometry import dense_from_sparse

from .miou import OccMIoU
from .ray_iou import RayIoU
from .ray_origins import RayOrigins
from .ssc import SSCMetric

__all__ = ['evaluate_occupancy', 'OccEvaluator', 'EvaluationThread', 'occ_gt_path', 'load_occ_gt', 'dense_prediction',
           'format_summary', 'log_msg', 'protocol_lines']


def log_msg(msg, logger=None):
    """Print `msg` (logger None), drop it (logger 'silent') or send it to `logger.info`."""
    if logger is None:
        print(msg, flush=True)
    elif logger != 'silent':
        logger.info(msg)


def occ_gt_path(info, occ_root, benchmark=DEFAULT_BENCHMARK):
    """The label file of `info`: the benchmark's one rule (`Benchmark.label_path`, docs/data.md "Label files"):
    `<occ_root>/<scene_name>/<token>/labels.npz` when occ_root is given, else `info['occ_path']`."""
    try:
        return get_benchmark(benchmark).label_path(info, occ_root)
    except BenchmarkError as exc:
        raise BenchmarkError(f'evaluation: {exc}') from None


def evaluation_mask_name(benchmark, camera_mask=None):
    """The label array whose true voxels the metrics count: the description's `eval_mask` when it has one
    (nuScenes-Occupancy: 'mask_valid'), else 'mask_camera' with `camera_mask`, else None (every voxel).

    `camera_mask` (bool | None) overrides the description's camera mask (None: the description's); asking for
    a mask the benchmark's label files do not hold is an error naming the benchmark."""
    bench = get_benchmark(benchmark)
    if hasattr(bench, 'eval_mask'):
        if camera_mask:
            raise BenchmarkError(f'{bench.title} has no camera mask (its metric counts the {bench.eval_mask} voxels); '
                                 f'evaluate with --camera-mask off')
        return bench.eval_mask
    if camera_mask is None:
        camera_mask = bench.camera_mask
    if camera_mask and 'mask_camera' not in bench.label_array_names:
        raise BenchmarkError(f'{bench.title} label files hold no mask_camera ({list(bench.label_array_names)}); '
                             f'evaluate with --camera-mask off')
    return 'mask_camera' if camera_mask else None


def protocol_lines(benchmark, camera_mask=None, num_rays=None):
    """What an evaluation of `benchmark` counts, as printed above its tables (docs/evaluation.md, "Protocols").

    Args:
        benchmark (str | Benchmark): the description.
        camera_mask (bool | None): the override of `evaluation_mask_name`.
        num_rays (int | None): rays cast per origin when RayIoU is computed.
    """
    bench = get_benchmark(benchmark)
    mask = evaluation_mask_name(bench, camera_mask)
    grid = ' x '.join(str(n) for n in bench.grid_shape)
    voxel = '/'.join(f'{v:g}' for v in sorted(set(bench.voxel_size)))
    rng = ', '.join(f'{v:g}' for v in bench.point_cloud_range)
    names = bench.class_names
    lines = [f'protocol: {bench.title} ({bench.name}): grid {grid} of {voxel} m over [{rng}] m',
             f'  mIoU: {len(names)} classes ({names[0]} .. {names[-1]}), free ({bench.free_label}) not averaged; '
             + {None: 'every voxel counted', 'mask_camera': 'camera-visible voxels only (mask_camera)'}.get(
                 mask, f'{mask} voxels only')]
    if getattr(bench, 'geometry_iou', False):
        lines.append('  IoU: geometry (occupied vs free) over the same voxels')
    if bench.ray_iou:
        from .ray_iou import RAY_THRESHOLDS
        rays = f'{num_rays:,} rays' if num_rays else 'the virtual LiDAR rays'
        lines.append(f'  RayIoU: depth thresholds {", ".join(f"{t:g}" for t in RAY_THRESHOLDS)} m; {rays} from the '
                     f'ego origins of the frames of each scene (evaluation/ray_iou.py, ray_origins.py), no mask')
    return lines


def load_occ_gt(path, benchmark=DEFAULT_BENCHMARK, camera_mask=None):
    """Read a label file: (semantics [X, Y, Z] as stored, the evaluation mask bool [X, Y, Z]: `mask_camera` for
    Occ3D, `mask_valid` for nuScenes-Occupancy); the mask is None when the metric uses none (`camera_mask`:
    `evaluation_mask_name`'s override)."""
    bench = get_benchmark(benchmark)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{bench.title} ground truth not found: {path}. Check {LABEL_ROOT_KEY} (the '
                                f'{bench.label_root_dir}/ folder of {bench.label_source}) or regenerate the info '
                                f'pickles with gen_sweep_info.py')
    mask_name = evaluation_mask_name(bench, camera_mask)
    labels = bench.read_labels(path, ('semantics',) + ((mask_name,) if mask_name else ()))
    return labels['semantics'], (labels[mask_name].astype(bool) if mask_name else None)


def dense_prediction(result, shape=OCC3D_NUSCENES.grid_shape, free_label=OCC3D_NUSCENES.free_label):
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
        occ_root (str | None): the label folder (Occ3D `gts/`).
        device (str | torch.device | None): ray-casting device; None = CUDA when available.
        ray_batch (int | None): samples cast together (default 16 on CUDA, 1 on CPU).
        rays (array | None): ray directions (default: the 14,040 virtual LiDAR rays).
        benchmark (str | Benchmark): the protocol (core/benchmarks/): labels, grid, the camera mask of the
            mIoU, whether RayIoU is computed.
        camera_mask (bool | None): count only camera-visible voxels in the mIoU (None: as the benchmark says).
    """

    def __init__(self, data_infos, occ_root, device=None, ray_batch=None, rays=None, benchmark=DEFAULT_BENCHMARK,
                 camera_mask=None):
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        device = torch.device(device)
        self.benchmark = bench = get_benchmark(benchmark)
        self.camera_mask = camera_mask
        self.mask_name = evaluation_mask_name(bench, camera_mask)
        self.data_infos = data_infos
        self.occ_root = occ_root
        self.grid_shape = bench.grid_shape
        # nuScenes-Occupancy: geometry IoU + mIoU on the non-noise voxels (evaluation/ssc.py)
        self.miou = SSCMetric(bench.label_names) if getattr(bench, 'geometry_iou', False) else \
            OccMIoU(bench.label_names, use_camera_mask=self.mask_name is not None, absent_class=bench.absent_class)
        self.origins = self.ray_iou = None
        if bench.ray_iou:
            if len(set(bench.voxel_size)) != 1:
                raise ValueError(f'RayIoU casts rays through cubic voxels; benchmark {bench.name} has voxel_size '
                                 f'{bench.voxel_size}: set ray_iou=False in its description')
            self.origins = RayOrigins(data_infos)
            self.ray_iou = RayIoU(bench.label_names, rays=rays, pc_range=bench.point_cloud_range,
                                  voxel_size=bench.voxel_size[0], device=device)
        # On the GPU the traversal's cost is mostly kernel launches (a few dozen per step, the same for
        # any number of rays): batching samples amortises them (16 samples ~ 1 GB of ray state).
        self.ray_batch = ray_batch or (16 if device.type == 'cuda' else 1)
        self._pending = []

    def update(self, index, result):
        """Add the prediction for dataset sample `index`."""
        info = self.data_infos[index]
        # read_labels checks the grid shape against the benchmark's, naming the file
        path = occ_gt_path(info, self.occ_root, self.benchmark)
        gt, mask_camera = load_occ_gt(path, self.benchmark, self.camera_mask)
        pred = dense_prediction(result, self.grid_shape, self.benchmark.free_label)
        self.miou.add_batch(pred, gt, mask_camera)
        if self.ray_iou is None:
            return
        self._pending.append((pred, gt, self.origins[index]))
        if len(self._pending) >= self.ray_batch:
            self.flush()

    def flush(self):
        if self._pending:
            preds, gts, origins = zip(*self._pending)
            self.ray_iou.add_batch(list(preds), list(gts), list(origins))
            self._pending = []

    def summary(self, logger=None):
        """Log the per-class tables and return dict(mIoU=percent, RayIoU, RayIoU@1/2/4 as fractions); with a
        geometry IoU (nuScenes-Occupancy) dict(mIoU=percent, IoU=percent)."""
        self.flush()
        num_rays = None if self.ray_iou is None else len(self.ray_iou.rays)
        log_msg('\n'.join(protocol_lines(self.benchmark, self.camera_mask, num_rays)), logger)
        mask = {None: '', 'mask_camera': ' (camera mask)'}.get(self.mask_name, f' ({self.mask_name} voxels)')
        log_msg(f'{self.benchmark.title} mIoU over {self.miou.num_samples} samples{mask}:\n{self.miou.table()}',
                logger)
        # the lines after the header and the per-class ones: the mIoU (and the geometry IoU)
        log_msg('\n'.join(self.miou.summary_lines()[self.miou.num_labels:]), logger)
        out = self.miou.summary() if isinstance(self.miou, SSCMetric) else {'mIoU': self.miou.miou()}
        if self.ray_iou is not None:
            log_msg(f'RayIoU over {self.ray_iou.num_samples} samples:\n{self.ray_iou.table()}', logger)
            out.update(self.ray_iou.summary())
        return out


class EvaluationThread:
    """Feeds an `OccEvaluator` from a background thread while the caller produces results (val.py's inference loop
    in one process: reading the labels, the mIoU counts and the rays overlap the model's steps).

    `put(index, result)` queues a sample (waiting while `max_pending` are queued); `summary(logger)` waits for the
    queued samples and returns `OccEvaluator.summary`. An error of the thread is raised by the next `put` or by
    `summary`, and the thread drops what is queued after it.
    """

    def __init__(self, evaluator, max_pending=64):
        self.evaluator = evaluator
        self._queue = queue.Queue(maxsize=max_pending)
        self._error = None
        self._thread = threading.Thread(target=self._run, name='evaluation', daemon=True)
        self._thread.start()

    def _run(self):
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.evaluator.update(*item)
                except BaseException as err:   # noqa: BLE001 (re-raised in the caller's thread)
                    self._error = err

    def put(self, index, result):
        if self._error is not None:
            raise self._error
        self._queue.put((index, result))

    def summary(self, logger=None):
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.evaluator.summary(logger)


def evaluate_occupancy(results, data_infos, occ_root, logger=None, device=None, ray_batch=None,
                       show_progress=True, rays=None, benchmark=DEFAULT_BENCHMARK, camera_mask=None):
    """mIoU and RayIoU of `results` against the ground truth of `data_infos` (the benchmark's protocol).

    Args:
        results (Sequence[dict]): one `dict(sem_pred=int [M], occ_loc=int [M, 3])` per sample, in
            dataset order (any Sequence, e.g. a lazy loader of saved predictions).
        data_infos (list[dict]): the dataset's infos (sorted by timestamp), with `scene_name`,
            `token`, `lidar2ego_*`, `ego2global_*` and optionally `occ_path`.
        occ_root (str | None): the label folder (Occ3D `gts/`); given, it wins over the infos' `occ_path`
            (`Benchmark.label_path`).
        logger (logging.Logger | str | None): where tables go (None = print, 'silent' = nowhere).
        device: ray-casting device (None = CUDA when available, else CPU).
        ray_batch (int | None): samples whose rays are cast together.
        show_progress (bool): tqdm bar.
        rays (array | None): float32 [R, 3] ray directions (default: the protocol's 14,040).
        benchmark (str | Benchmark): registered benchmark name (default Occ3D-nuScenes).
        camera_mask (bool | None): the mIoU on camera-visible voxels only, or on all (None: the benchmark's).
    Returns:
        dict(mIoU=percent rounded to 2 decimals, RayIoU, RayIoU@1, RayIoU@2, RayIoU@4 as fractions); mIoU only
        when the benchmark's RayIoU is off.
    """
    if len(results) != len(data_infos):
        raise ValueError(f'{len(results)} predictions for {len(data_infos)} samples: results must hold one entry '
                         f'per dataset sample, in dataset order')
    evaluator = OccEvaluator(data_infos, occ_root, device=device, ray_batch=ray_batch, rays=rays, benchmark=benchmark,
                             camera_mask=camera_mask)
    indices = range(len(data_infos))
    if show_progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc='evaluating', dynamic_ncols=True)
    for index in indices:
        evaluator.update(index, results[index])
    return evaluator.summary(logger)


def format_summary(metrics):
    """One line with every number of `evaluate_occupancy`'s dict in percent (as the README reports them)."""
    percent = [k for k in ['mIoU', 'IoU'] if k in metrics]      # IoU: nuScenes-Occupancy's geometry IoU
    keys = percent + [k for k in ['RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4'] if k in metrics]
    values = [metrics[k] for k in percent] + [metrics[k] * 100 for k in keys[len(percent):]]
    return ' | '.join(f'{k} {v:.2f}' for k, v in zip(keys, values)) + '  (percent)'
