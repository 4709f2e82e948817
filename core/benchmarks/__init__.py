"""Benchmark protocols as data: one frozen `Benchmark` description per benchmark, in a registry.

A description holds everything that differs between occupancy benchmarks and is not learned: the
class names and the free label, the voxel grid (shape, point-cloud range, voxel size), the camera
order, where a sample's label file is and what it holds, and the metrics' settings. The dataset,
the label-loading pipeline step and the evaluator take a benchmark by name (`get_benchmark`); the
configs select it with the top-level key `benchmark` (engine/config.py checks that the config's
class list, range and voxel size agree with it). Each protocol is a module of this package that registers
its description on import (occ3d_nuscenes.py); adding a benchmark: docs/architecture.md,
"Adding a benchmark".

    from core.benchmarks import get_benchmark
    bench = get_benchmark('occ3d-nuscenes')
    path = bench.label_path(info, label_root)      # the one label-path rule (docs/data.md)
    labels = bench.read_labels(path)               # {array name: [X, Y, Z] array}

Grids are indexed `[x, y, z]`; the point-cloud range is (x_min, y_min, z_min, x_max, y_max, z_max) in
metres in the ego frame of the key frame. Labels are 0..K-1 for the K classes of `class_names` and
K = `free_label` for an empty voxel (the models and the metrics put free last).
"""
import math
import os.path as osp
import re
import string
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ['Benchmark', 'BenchmarkError', 'LabelFileError', 'register_benchmark', 'get_benchmark', 'benchmark_names',
           'DEFAULT_BENCHMARK', 'LABEL_ROOT_KEY', 'OCC3D_NUSCENES']

# The config key (of the dataset and of the label-loading step) that names the folder of the label files.
LABEL_ROOT_KEY = 'occ_root'


class BenchmarkError(ValueError):
    """An unknown benchmark name, or a sample whose label file cannot be located; the message says what to set."""
    user_error = True  # engine/cli.py prints the message without a traceback


class LabelFileError(ValueError):
    """A label file that cannot be used (unreadable, arrays missing or of the wrong shape)."""
    user_error = True  # engine/cli.py prints the message without a traceback


@dataclass(frozen=True)
class Benchmark:
    """The protocol of one occupancy benchmark.

    Args:
        name (str): registry name, as configs write it (`benchmark = 'occ3d-nuscenes'`).
        title (str): the name people write (in messages and tables).
        class_names (tuple[str]): the K semantic classes in label-id order (ids 0..K-1).
        free_label (int): label of an empty voxel; must be K (free last, as the models and metrics expect).
        grid_shape (tuple[int]): voxels along x, y, z.
        point_cloud_range (tuple[float]): (x_min, y_min, z_min, x_max, y_max, z_max), metres.
        voxel_size (tuple[float]): metres per voxel along x, y, z; (max - min) / size = grid_shape.
        camera_names (tuple[str]): the cameras of one frame, in the order of the infos' image lists.
        label_file (str): a sample's label file relative to the label root, a `str.format` template whose
            fields are keys of the sample's info (e.g. '{scene_name}/{token}/labels.npz').
        label_path_key (str): info key that may hold the label file's path as written by the info
            generator (used when no label root is given).
        label_arrays (tuple[tuple[str, str]]): (array name, numpy dtype as loaded) for every array of a
            label file, each of `grid_shape`. 'semantics' (labels) is required; 'mask_camera' is required
            when `camera_mask`.
        label_root_dir (str): the label folder's name under the data root (the default label root).
        label_source (str): where the label files come from (in error messages about a missing or bad file).
        camera_mask (bool): mIoU counts only voxels whose `mask_camera` is true.
        ray_iou (bool): the evaluation also computes RayIoU (needs cubic voxels).
        absent_class (str): the IoU of a class without ground truth in the evaluated voxels: 'skip' (NaN, left
            out of the mean; the official Occ3D-nuScenes code) or 'zero' (0 when predicted; Occ3D-Waymo's).
    """
    name: str
    title: str
    class_names: tuple
    free_label: int
    grid_shape: tuple
    point_cloud_range: tuple
    voxel_size: tuple
    camera_names: tuple
    label_file: str
    label_path_key: str
    label_arrays: tuple
    label_root_dir: str
    label_source: str
    camera_mask: bool = True
    ray_iou: bool = True
    absent_class: str = 'skip'

    def __post_init__(self):
        # normalise sequences (a description may be written with lists) so that instances compare and hash
        set_ = object.__setattr__
        set_(self, 'class_names', tuple(str(c) for c in self.class_names))
        set_(self, 'grid_shape', tuple(int(n) for n in self.grid_shape))
        set_(self, 'point_cloud_range', tuple(float(v) for v in self.point_cloud_range))
        set_(self, 'voxel_size', tuple(float(v) for v in self.voxel_size))
        set_(self, 'camera_names', tuple(str(c) for c in self.camera_names))
        set_(self, 'label_arrays', tuple((str(k), np.dtype(d).name) for k, d in self.label_arrays))
        where = f'benchmark {self.name!r}'
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f'{where}: class_names must be non-empty and unique, got {self.class_names}')
        if self.free_label != len(self.class_names):
            raise ValueError(f'{where}: free_label must be {len(self.class_names)} (free last, after the '
                             f'{len(self.class_names)} classes), got {self.free_label}; remap the label files\' ids '
                             f'when loading them')
        if len(self.grid_shape) != 3 or len(self.voxel_size) != 3 or len(self.point_cloud_range) != 6:
            raise ValueError(f'{where}: grid_shape and voxel_size need 3 values and point_cloud_range 6')
        extent = [hi - lo for lo, hi in zip(self.point_cloud_range[:3], self.point_cloud_range[3:])]
        # the extent is a whole number of voxels up to float64 rounding of decimal constants (~1e-14 relative)
        if any(not math.isclose(e / v, n, rel_tol=1e-9) for e, v, n in zip(extent, self.voxel_size, self.grid_shape)):
            raise ValueError(f'{where}: point_cloud_range {self.point_cloud_range} with voxel_size {self.voxel_size} '
                             f'gives {tuple(e / v for e, v in zip(extent, self.voxel_size))} voxels, not grid_shape '
                             f'{self.grid_shape}')
        names = [k for k, _ in self.label_arrays]
        if 'semantics' not in names or (self.camera_mask and 'mask_camera' not in names):
            raise ValueError(f'{where}: label_arrays {names} must hold "semantics"'
                             + (' and "mask_camera" (camera_mask=True)' if self.camera_mask else ''))
        if not self.camera_names:
            raise ValueError(f'{where}: camera_names is empty')
        if self.absent_class not in ('skip', 'zero'):
            raise ValueError(f"{where}: absent_class must be 'skip' or 'zero', got {self.absent_class!r}")

    # ------------------------------------------------------------------ derived
    @property
    def num_classes(self):
        """K, the semantic classes (17 for Occ3D-nuScenes)."""
        return len(self.class_names)

    @property
    def label_names(self):
        """The names of all K + 1 labels of a grid, free last (what the metrics count)."""
        return self.class_names + ('free',)

    @property
    def num_labels(self):
        return len(self.label_names)

    @property
    def num_views(self):
        """Cameras per frame."""
        return len(self.camera_names)

    @property
    def label_array_names(self):
        """The arrays of a label file, in file order."""
        return tuple(k for k, _ in self.label_arrays)

    @property
    def label_dtypes(self):
        """{array name: numpy dtype} the arrays are loaded as."""
        return {k: np.dtype(d) for k, d in self.label_arrays}

    @property
    def label_layout(self):
        """Where the label files lie, for messages: 'gts/<scene_name>/<token>/labels.npz' (Occ3D-nuScenes)."""
        return re.sub(r'\{(\w+)\}', r'<\1>', f'{self.label_root_dir}/{self.label_file}')

    @property
    def label_fix(self):
        """The end of a message about a bad label file: where correct files come from."""
        return f'replace it with the file of {self.label_source} ({self.label_layout})'

    @property
    def label_file_fields(self):
        """The info keys `label_file` reads."""
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.label_file) if f)

    # ------------------------------------------------------------------ label files
    def label_path(self, info, label_root=None):
        """The label file of the sample `info` (docs/data.md, "Label files").

        The rule: a label root given (the config's `occ_root`) wins: `<label_root>/<label_file>`, filled from
        the info; without one, the path the info stores under `label_path_key` (written by the info
        generator); neither is an error naming the config key to set.

        Args:
            info (Mapping): a sample's info (or a pipeline input dict carrying the same keys).
            label_root (str | None): the label folder.
        """
        if label_root is not None:
            missing = [f for f in self.label_file_fields if f not in info]
            if missing:
                raise BenchmarkError(f'the sample info lacks {missing}, which the {self.title} label path '
                                   f'{self.label_layout} needs; regenerate the infos with gen_sweep_info.py')
            return osp.join(label_root, self.label_file.format(**{f: info[f] for f in self.label_file_fields}))
        stored = info.get(self.label_path_key)
        if stored:
            return stored
        raise BenchmarkError(f'no label root given and the sample info has no {self.label_path_key!r}: set '
                             f'{LABEL_ROOT_KEY} to the {self.label_root_dir}/ folder of {self.label_source} '
                             f'({self.label_layout})')

    def read_labels(self, path, arrays=None):
        """The named arrays of an existing label file, as a dict of `grid_shape` numpy arrays (as stored).

        A truncated or foreign file, a missing array or a grid of another shape raises LabelFileError
        naming the file, what is wrong and where correct files come from (callers check that the file
        exists, with their own hint).

        Args:
            path (str): the label file (npz).
            arrays (sequence[str] | None): the arrays to read (default: all of `label_arrays`).
        """
        arrays = self.label_array_names if arrays is None else tuple(arrays)
        out = self.load_npz(path, arrays, self.label_array_names, osp.basename(self.label_file))
        self.check_grid(path, out)
        return out

    def load_npz(self, path, names, holds, kind):
        """{name: array} of the arrays `names` of the npz archive `path`, whose kind of file holds `holds`; an
        unreadable file or a missing array raises LabelFileError naming the file and where correct files come from.
        `kind` names the file in the message ('labels.npz')."""
        fix = self.label_fix
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in names if k not in data.files]
                if missing:
                    raise LabelFileError(f'{path}: lacks the array(s) {missing} (it holds {sorted(data.files)}); '
                                         f'{self.name} label files hold {list(holds)}; {fix}')
                return {k: data[k] for k in names}
        except LabelFileError:
            raise
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
            size = osp.getsize(path) if osp.isfile(path) else 0
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LabelFileError(f'{path}: not a readable {kind} ({size:,} bytes; {detail}); {fix}') from exc

    def check_grid(self, path, arrays):
        """Every array of `arrays` ({name: array} read from `path`) has the benchmark's grid shape, else
        LabelFileError naming the file, the array and the shape."""
        for key, value in arrays.items():
            if value.shape != self.grid_shape:
                raise LabelFileError(f'{path}: {key} has shape {value.shape}, expected {self.grid_shape} (x, y, z), '
                                     f'the grid of benchmark {self.name}; {self.label_fix}')


_REGISTRY = {}


def register_benchmark(benchmark):
    """Add `benchmark` to the registry under its name (an existing name is an error); returns it."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f'register_benchmark takes a Benchmark, got {type(benchmark).__name__}')
    if benchmark.name in _REGISTRY:
        raise ValueError(f'benchmark {benchmark.name!r} is already registered')
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def benchmark_names():
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def get_benchmark(name):
    """The registered Benchmark called `name` (a Benchmark is returned as it is)."""
    if isinstance(name, Benchmark):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise BenchmarkError(f'unknown benchmark {name!r}; known: {", ".join(benchmark_names())}') from None


# The registered protocols, one module each (importing a module registers its description).
from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY  # noqa: E402,F401
from core.benchmarks.occ3d_nuscenes import OCC3D_NUSCENES  # noqa: E402
from core.benchmarks.occ3d_waymo import OCC3D_WAYMO  # noqa: E402,F401

DEFAULT_BENCHMARK = OCC3D_NUSCENES.name   # what a config without a `benchmark` key means
