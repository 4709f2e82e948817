"""nuScenes-Occupancy (OpenOccupancy, Wang et al., ICCV 2023), as the OPUS-V2 authors train and evaluate it.

The release (nuScenes-Occupancy v0.1) stores one sparse label file per key frame,
`scene_<scene_token>/occupancy/<lidar_token>.npy`: an integer array `[N, 4]`, one row per occupied voxel,
columns `(z, y, x, class)` (voxel indices of the 512 x 512 x 40 grid of 0.2 m over
[-51.2, 51.2] x [-51.2, 51.2] x [-5, 3] m, in the key frame's **LiDAR** frame; not the ego frame). Class
ids of the release: 0 = noise, 1..16 = barrier .. vegetation (`RELEASE_CLASS_NAMES`); a voxel without a row
is empty.

`NUSCENES_OCCUPANCY.read_labels` densifies a file into this project's convention (free last):

* `semantics` uint8 [512, 512, 40] indexed [x, y, z]: release id k in 1..16 -> k - 1 (the 16 classes of
  `class_names`), empty -> 16 (`free_label`), noise (0) -> 16. Noise counted as free is what the authors'
  training label loader does (`LoadOccupancyFromFile`, which maps the ignored class 'noise' to the empty
  label), so the models learn it as empty space;
* `mask_valid` bool [512, 512, 40]: False on noise voxels, True elsewhere (empty voxels included). The
  metric counts only these voxels: the authors' evaluation (`NuScenesOccupancyDataset.evaluate`, mask =
  release label != 0) and OpenOccupancy's own (noise -> 255, ignored) both drop noise and keep empty voxels.

Rows are written in file order, so a voxel listed twice takes its last row (what the authors' numpy
fancy assignment does; the release lists each voxel once). (Authors' code: github.com/w1394945493/OPUS,
loaders/pipelines/loading.py and loaders/nuscenes_occupancy_dataset.py at 216dc53; OpenOccupancy:
projects/occ_plugin/datasets/pipelines/loading.py.)

The metric (docs/evaluation.md, "nuScenes-Occupancy"): geometry IoU (occupied vs empty) and the semantic
mIoU over the 16 classes, on the `mask_valid` voxels, no camera mask, no RayIoU (evaluation/ssc.py).

Fields this description adds to `Benchmark` (read with their defaults elsewhere, so other descriptions need
not have them):
* `label_frame` = 'lidar': the grids live in the key frame's LiDAR frame (the dataset sets the models'
  grid-frame transform accordingly: loaders/nuscenes_occupancy_dataset.py);
* `eval_mask` = 'mask_valid': the label array whose true voxels the metric counts;
* `geometry_iou` = True: the evaluation also reports the occupied-vs-empty IoU.
"""
import os.path as osp
from dataclasses import dataclass

import numpy as np

from core.benchmarks import Benchmark, LabelFileError, register_benchmark

__all__ = ['NUSCENES_OCCUPANCY', 'NuScenesOccupancyBenchmark', 'RELEASE_CLASS_NAMES', 'RELEASE_NOISE_ID',
           'release_id_map', 'densify_release_rows']

# Class ids as the release writes them (OpenOccupancy docs/prepare_data.md): 0 noise, then the 16 classes.
RELEASE_CLASS_NAMES = ('noise', 'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle',
                       'pedestrian', 'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat',
                       'sidewalk', 'terrain', 'manmade', 'vegetation')
RELEASE_NOISE_ID = 0
# An empty voxel in the dense release-id grid built while reading (one past the release's ids).
_RELEASE_EMPTY = len(RELEASE_CLASS_NAMES)


def release_id_map(class_names, free_label):
    """uint8 [18]: release id (0 noise, 1..16 classes, 17 = empty) -> our label (0..15 classes, free_label for
    noise and empty)."""
    table = np.full(_RELEASE_EMPTY + 1, free_label, dtype=np.uint8)
    for release_id, name in enumerate(RELEASE_CLASS_NAMES):
        if release_id != RELEASE_NOISE_ID:
            table[release_id] = class_names.index(name)
    return table


def densify_release_rows(rows, grid_shape, class_names, free_label):
    """Dense (semantics uint8 [X, Y, Z], mask_valid bool [X, Y, Z]) of the release's rows.

    Args:
        rows (ndarray): integer [N, 4] (z, y, x, release class id), indices inside `grid_shape` (x, y, z).
        grid_shape (tuple[int]): (X, Y, Z).
        class_names (tuple[str]): our classes (ids 0..K-1), names as in `RELEASE_CLASS_NAMES[1:]`.
        free_label (int): our label of an empty voxel (K).
    """
    release = np.full(grid_shape, _RELEASE_EMPTY, dtype=np.uint8)
    # columns are (z, y, x): the grid is indexed [x, y, z]
    release[rows[:, 2], rows[:, 1], rows[:, 0]] = rows[:, 3]
    semantics = release_id_map(class_names, free_label)[release]
    return semantics, release != RELEASE_NOISE_ID


@dataclass(frozen=True)
class NuScenesOccupancyBenchmark(Benchmark):
    """A `Benchmark` whose label files are the nuScenes-Occupancy release's sparse `.npy` rows.

    Args (besides `Benchmark`'s):
        label_frame (str): 'lidar': the grid lives in the key frame's LiDAR frame.
        eval_mask (str): the label array whose true voxels the metric counts ('mask_valid': not noise).
        geometry_iou (bool): the evaluation reports the occupied-vs-empty IoU besides the mIoU.
    """
    label_frame: str = 'lidar'
    eval_mask: str = 'mask_valid'
    geometry_iou: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.eval_mask not in self.label_array_names:
            raise ValueError(f'benchmark {self.name!r}: eval_mask {self.eval_mask!r} is not one of label_arrays '
                             f'{list(self.label_array_names)}')
        if self.label_frame not in ('ego', 'lidar'):
            raise ValueError(f'benchmark {self.name!r}: label_frame must be "ego" or "lidar", got {self.label_frame!r}')

    def read_labels(self, path, arrays=None):
        """{'semantics': uint8 [512, 512, 40], 'mask_valid': bool [512, 512, 40]} (those of `arrays`) of one
        release file, densified as the module docstring says.

        A file that is not a readable integer `[N, 4]` array, or whose indices or class ids fall outside the
        grid or the release's ids, raises LabelFileError naming the file, the problem and where correct files
        come from (callers check that the file exists).
        """
        arrays = self.label_array_names if arrays is None else tuple(arrays)
        unknown = [k for k in arrays if k not in self.label_array_names]
        if unknown:
            raise LabelFileError(f'{path}: {self.name} label files give {list(self.label_array_names)}, not {unknown}')
        fix = f'replace it with the file of {self.label_source} ({self.label_layout})'
        try:
            rows = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            size = osp.getsize(path) if osp.isfile(path) else 0
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LabelFileError(f'{path}: not a readable .npy array ({size:,} bytes; {detail}); {fix}') from exc
        if not isinstance(rows, np.ndarray):
            rows.close()   # an .npz archive: np.load returned an open NpzFile
        if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] != 4 or rows.dtype.kind not in 'iu':
            got = f'{rows.dtype} {rows.shape}' if isinstance(rows, np.ndarray) else type(rows).__name__
            raise LabelFileError(f'{path}: holds {got}; {self.title} label files are integer [N, 4] arrays '
                                 f'(z, y, x, class id), one row per occupied voxel; {fix}')
        bounds = (self.grid_shape[2], self.grid_shape[1], self.grid_shape[0], _RELEASE_EMPTY)
        for column, (what, limit) in enumerate(zip(('z', 'y', 'x', 'class id'), bounds)):
            values = rows[:, column]
            if values.size and (values.min() < 0 or values.max() >= limit):
                raise LabelFileError(f'{path}: column {column} ({what}) holds values in [{values.min()}, '
                                     f'{values.max()}], outside [0, {limit - 1}] (the {self.title} grid '
                                     f'{self.grid_shape} (x, y, z) and release ids 0..{_RELEASE_EMPTY - 1}); {fix}')
        semantics, mask_valid = densify_release_rows(rows, self.grid_shape, self.class_names, self.free_label)
        dense = {'semantics': semantics, 'mask_valid': mask_valid}
        return {k: dense[k] for k in arrays}


# The 16 classes are the release's ids 1..16 in order; free = 16 (noise is read as free: see above).
NUSCENES_OCCUPANCY = register_benchmark(NuScenesOccupancyBenchmark(
    name='nuscenes-occupancy',
    title='nuScenes-Occupancy',
    class_names=RELEASE_CLASS_NAMES[1:],
    free_label=16,
    grid_shape=(512, 512, 40),
    point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
    voxel_size=(0.2, 0.2, 0.2),
    camera_names=('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT'),
    label_file='scene_{scene_token}/occupancy/{lidar_token}.npy',
    label_path_key='occ_path',
    label_arrays=(('semantics', 'uint8'), ('mask_valid', 'bool')),
    # the OPUS-V2 configs' occ_root 'data/nuscenes/occupancy': the extracted nuScenes-Occupancy-v0.1 folder
    label_root_dir='occupancy',
    label_source='the nuScenes-Occupancy v0.1 release (OpenOccupancy)',
    camera_mask=False,
    ray_iou=False,
))
