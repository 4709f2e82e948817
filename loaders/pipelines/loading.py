"""Loading steps: key-frame images, past camera sweeps with their projection matrices, Occ3D labels.

Frames: `lidar2img` maps homogeneous points of the *current key frame's LiDAR* frame to pixels
(rows (u*d, v*d, d, 1)); images are BGR uint8 [H, W, 3]. Lists are frame-major: index t*N + n,
t = 0 current key frame, t = 1..T-1 increasingly older, n in the benchmark's camera order (`camera_names` of the
dataset's input dict; `core.occ3d.CAMERA_NAMES` when absent).
"""
import os.path as osp

import numpy as np
from mmdet.datasets.builder import PIPELINES

from core.benchmarks import DEFAULT_BENCHMARK, LABEL_ROOT_KEY, BenchmarkError, get_benchmark
from core.geometry import pad_intrinsic, rigid_inverse
from core.occ3d import CAMERA_NAMES

from .image_io import BACKENDS, imread_bgr, missing_file_message


def compose_lidar2img(ego2global_translation_curr, ego2global_rotation_curr, lidar2ego_translation_curr,
                      lidar2ego_rotation_curr, sensor2global_translation_past, sensor2global_rotation_past,
                      cam_intrinsic_past):
    """Projection of a past camera image seen from the current key frame's LiDAR (docs/method.md, "Camera history").

    Args:
        *_rotation_curr: 3x3 rotations (column convention) ego->global and lidar->ego of the
            current key frame; *_translation_curr: their translations (metres).
        sensor2global_rotation_past: 3x3 ROW-convention rotation stored by gen_sweep_info.py (the
            transpose of camera->global); sensor2global_translation_past: camera centre (global).
        cam_intrinsic_past: 3x3.
    Returns:
        float32 [4, 4] lidar2img = K_pad @ inverse(camera -> current LiDAR).
    """
    lidar2global = np.eye(4)
    lidar2global[:3, :3] = np.asarray(ego2global_rotation_curr) @ np.asarray(lidar2ego_rotation_curr)
    lidar2global[:3, 3] = np.asarray(ego2global_rotation_curr) @ np.asarray(lidar2ego_translation_curr) + \
        np.asarray(ego2global_translation_curr)
    cam2global = np.eye(4)
    cam2global[:3, :3] = np.asarray(sensor2global_rotation_past).T
    cam2global[:3, 3] = sensor2global_translation_past
    cam2lidar = np.linalg.inv(lidar2global) @ cam2global
    return (pad_intrinsic(cam_intrinsic_past) @ rigid_inverse(cam2lidar)).astype(np.float32)


@PIPELINES.register_module()
class LoadMultiViewImageFromFiles:
    """Load the N key-frame images of `results['img_filename']` (mmdet3d's step of the same name).

    Adds `img` (list of N BGR uint8 [H, W, 3], float32 if to_float32), `filename`, `img_shape`,
    `ori_shape`, `pad_shape` (lists of (H, W, 3)).
    """

    def __init__(self, to_float32=False, color_type='color', backend='auto'):
        if color_type != 'color':
            raise ValueError(f'LoadMultiViewImageFromFiles: color_type={color_type!r} is not supported; the method '
                             f'uses colour images (color_type="color")')
        if backend not in BACKENDS:
            raise ValueError(f'LoadMultiViewImageFromFiles: unknown backend {backend!r}; choose one of {BACKENDS}')
        self.to_float32 = to_float32
        self.color_type = color_type
        self.backend = backend

    def read_image(self, path):
        """One image as the pipeline carries it: BGR uint8 [H, W, 3] (loaders/pipelines/gpu_decode.py
        overrides it to carry the JPEG file bytes instead)."""
        return imread_bgr(path, self.backend)

    def __call__(self, results):
        filenames = results['img_filename']
        imgs = [self.read_image(name) for name in filenames]
        if self.to_float32:
            imgs = [img.astype(np.float32) for img in imgs]
        results['filename'] = list(filenames)
        results['img'] = imgs
        results['img_shape'] = [img.shape for img in imgs]
        results['ori_shape'] = [img.shape for img in imgs]
        results['pad_shape'] = [img.shape for img in imgs]
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(to_float32={self.to_float32}, color_type={self.color_type!r})'


@PIPELINES.register_module()
class LoadMultiViewImageFromMultiSweeps:
    """Append `sweeps_num` past frames (N images each) chosen from `results['cam_sweeps']['prev']`.

    Frame choice (docs/method.md, "Camera history"), L = number of history entries (`history_per_sample` between
    consecutive samples: 6 on nuScenes, 5 sweeps and the previous key frame; 1 on Occ3D-Waymo, every frame a sample):
    * L == 0: the current frame is repeated;
    * test_mode: entries (k+1)*test_interval - 1 (the previous key frames), clamped to L-1;
    * training, L <= sweeps_num: all entries, the last one repeated;
    * training, L > sweeps_num: interval ~ randint[min(max_int, lo), max_int] with
      max_int = min(L // sweeps_num, hi), (lo, hi) = train_interval; entries (k+1)*interval - 1.
    An entry with fewer than N cameras is replaced by the one before it. Cameras are taken in the order of
    `results['camera_names']` (the dataset's benchmark; Occ3D-nuScenes' order when absent).

    Online mode (test mode in a single process, docs/method.md, "Test modes"): the past images are not loaded (the model
    takes their features from its cache), but `filename`, `img_timestamp` and `lidar2img` still get
    all T*N entries. Offline (`online=False`, the default) loads every frame's images. The entry
    points choose online for one process (engine/build.py, `set_test_mode`); True is only allowed in
    test mode.

    `loads_history_frames = True` declares the step a multi-frame loader that takes `online`: `set_test_mode`
    sets `online` on every step whose class declares it (subclasses inherit it).
    """

    loads_history_frames = True

    def __init__(self, sweeps_num=7, color_type='color', test_mode=False, train_interval=(4, 8), test_interval=6,
                 online=False, backend='auto', history_per_sample=6):
        if sweeps_num < 0:
            raise ValueError(f'sweeps_num must be >= 0, got {sweeps_num}')
        if color_type != 'color':
            raise ValueError(f'LoadMultiViewImageFromMultiSweeps: color_type={color_type!r} is not supported')
        if len(train_interval) != 2 or not 1 <= train_interval[0] <= train_interval[1]:
            raise ValueError(f'train_interval must be (lo, hi) with 1 <= lo <= hi, got {train_interval}')
        if online and not test_mode:
            raise ValueError('online=True only exists in test mode (training always loads every frame); '
                             'set test_mode=True or online=False')
        self.sweeps_num = sweeps_num
        self.test_mode = test_mode
        self.train_interval = tuple(train_interval)
        self.test_interval = test_interval
        self.backend = backend
        self.online = bool(online)
        if history_per_sample < 1:
            raise ValueError(f'history_per_sample must be >= 1, got {history_per_sample}')
        self.history_per_sample = history_per_sample
        if self.online and test_interval % history_per_sample != 0:
            raise ValueError(f'online mode needs test_interval to be a multiple of {history_per_sample} (history_per_'
                             f'sample: whole earlier samples, whose features the model caches), got {test_interval}')

    def choose(self, num_history):
        """Indices into the history list (ascending, nearest first)."""
        if num_history == 0:
            return []
        if self.test_mode:
            choices = [(k + 1) * self.test_interval - 1 for k in range(self.sweeps_num)]
        elif num_history <= self.sweeps_num:
            choices = list(range(num_history)) + [num_history - 1] * (self.sweeps_num - num_history)
        else:
            max_int = min(num_history // self.sweeps_num, self.train_interval[1])
            min_int = min(max_int, self.train_interval[0])
            interval = np.random.randint(min_int, max_int + 1)
            choices = [(k + 1) * interval - 1 for k in range(self.sweeps_num)]
        return sorted(min(c, num_history - 1) for c in choices)

    def read_image(self, path):
        """One image as the pipeline carries it: BGR uint8 [H, W, 3] (loaders/pipelines/gpu_decode.py
        overrides it to carry the JPEG file bytes instead)."""
        return imread_bgr(path, self.backend)

    def __call__(self, results):
        if self.sweeps_num == 0:
            return results
        num_cams = len(results['img_filename'])
        history = results['cam_sweeps']['prev']
        if not history:
            # first sample of a scene: the current frame stands in for every past frame
            for _ in range(self.sweeps_num):
                for j in range(num_cams):
                    if not self.online:
                        results['img'].append(results['img'][j].copy())
                    results['img_timestamp'].append(results['img_timestamp'][j])
                    results['filename'].append(results['filename'][j])
                    results['lidar2img'].append(np.copy(results['lidar2img'][j]))
            return results
        e2g_t, e2g_r = results['ego2global_translation'], results['ego2global_rotation']
        l2e_t, l2e_r = results['lidar2ego_translation'], results['lidar2ego_rotation']
        for idx in self.choose(len(history)):
            sweep = history[idx]
            if len(sweep) < num_cams:
                sweep = history[idx - 1]
            for cam in results.get('camera_names', CAMERA_NAMES)[:num_cams]:
                entry = sweep[cam]
                path = entry['data_path']
                if not self.online:
                    results['img'].append(self.read_image(path))
                elif not osp.isfile(path):
                    raise FileNotFoundError(missing_file_message(path))
                results['img_timestamp'].append(entry['timestamp'] / 1e6)
                results['filename'].append(path)
                results['lidar2img'].append(compose_lidar2img(
                    e2g_t, e2g_r, l2e_t, l2e_r, entry['sensor2global_translation'],
                    entry['sensor2global_rotation'], entry['cam_intrinsic']))
        return results

    def __repr__(self):
        return (f'{self.__class__.__name__}(sweeps_num={self.sweeps_num}, test_mode={self.test_mode}, '
                f'online={self.online})')


@PIPELINES.register_module()
class LoadOccFromFile:
    """Occupancy labels of the key frame (docs/method.md, "Occupancy labels").

    Reads the sample's label file by the benchmark's one label-path rule (docs/data.md, "Label files"):
    `<occ_root>/<scene_name>/<sample_token>/labels.npz` when occ_root is given, else the info's
    `occ_path` (for Occ3D-nuScenes). Adds the label arrays with the benchmark's dtypes: for Occ3D-nuScenes
    `voxel_semantics` uint8 [200, 200, 16] (0..16 classes, 17 free), `mask_lidar` and `mask_camera` bool
    [200, 200, 16], indexed [x, y, z] in the key frame's ego frame.

    Args:
        occ_root (str | None): the label folder (Occ3D: its gts/ folder).
        benchmark (str): registered benchmark name (core/benchmarks/).
        arrays (sequence[str] | None): the label-file arrays to load (default: all of the benchmark's), e.g.
            ['semantics'] where the training needs no mask.
    """

    # label-file array -> the key the pipeline carries it under (Collect3D's keys); others keep their name
    RESULT_KEYS = {'semantics': 'voxel_semantics'}

    def __init__(self, occ_root=None, benchmark=DEFAULT_BENCHMARK, ignore_class_names=None, arrays=None):
        if ignore_class_names:
            raise ValueError('LoadOccFromFile: ignore_class_names is not supported (the original crashes on it); '
                             'remove the argument')
        self.occ_root = occ_root
        self.benchmark = get_benchmark(benchmark)
        names = self.benchmark.label_array_names
        self.arrays = names if arrays is None else tuple(arrays)
        unknown = [a for a in self.arrays if a not in names]
        if unknown:
            raise ValueError(f'LoadOccFromFile: arrays {unknown} are not in {self.benchmark.name} label files, which '
                             f'hold {list(names)}')

    def label_path(self, results):
        """The label file of the sample of `results` (the dataset's input dict: the info's fields, the token as
        `sample_idx`)."""
        info = dict(results)
        if 'token' not in info and 'sample_idx' in info:
            info['token'] = info['sample_idx']
        try:
            return self.benchmark.label_path(info, self.occ_root)
        except BenchmarkError as exc:
            raise BenchmarkError(f'LoadOccFromFile: {exc}') from None

    def __call__(self, results):
        path = self.label_path(results)
        if not osp.isfile(path):
            bench = self.benchmark
            raise FileNotFoundError(
                f'{bench.title} labels not found: {path}. {LABEL_ROOT_KEY} must be the {bench.label_root_dir}/ '
                f'folder of {bench.label_source} ({bench.label_layout}). ' + missing_file_message(path))
        labels = self.benchmark.read_labels(path, self.arrays)
        dtypes = self.benchmark.label_dtypes
        for name in self.arrays:
            results[self.RESULT_KEYS.get(name, name)] = labels[name].astype(dtypes[name])
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(occ_root={self.occ_root!r}, benchmark={self.benchmark.name!r})'
