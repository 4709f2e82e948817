"""NuScenesOccDataset: the nuScenes occupancy dataset of OPS (docs/method.md, "Camera history").

Reads the info pickles of gen_sweep_info.py, sorted by timestamp (scenes stay contiguous, so index-1
is the previous key frame of the same scene when there is one), and builds one input dict per key
frame for the pipeline. Paths inside the infos are used as they are: relative ones resolve against
the current directory (as in the original), absolute ones anywhere.
"""
import os.path as osp

import mmcv
import numpy as np
from mmdet.datasets import DATASETS
from mmdet.datasets.pipelines import Compose
from torch.utils.data import Dataset

from core.benchmarks import DEFAULT_BENCHMARK, OCC3D_NUSCENES, get_benchmark
from core.geometry import pad_intrinsic, quaternion_to_matrix, rigid_inverse, rigid_transform

from .pipelines.points import lidar_input_dict

INFO_KEYS = ('token', 'scene_name', 'timestamp', 'cams', 'cam_sweeps', 'lidar2ego_translation', 'lidar2ego_rotation',
             'ego2global_translation', 'ego2global_rotation')


@DATASETS.register_module()
class NuScenesOccDataset(Dataset):
    """Occ3D-nuScenes key frames with their camera history.

    Args:
        ann_file (str): a `*_sweep.pkl` of gen_sweep_info.py.
        pipeline (list[dict]): pipeline steps (loaders/pipelines).
        data_root (str): nuScenes root; only used to default occ_root to <data_root>/gts (the benchmark's
            `label_root_dir`).
        occ_root (str): the label folder (Occ3D gts/) the evaluation reads the labels from, by the
            benchmark's label-path rule (docs/data.md, "Label files"): given (or defaulted from data_root),
            it wins over the infos' occ_path. LoadOccFromFile has its own occ_root.
        test_mode (bool): every sample is returned as the pipeline makes it; in training (False) a
            sample the pipeline drops (returns None) is replaced by a random other one.
        load_interval (int): keep every n-th sample (after sorting).
        into_past (int): maximum length of the camera history list (150 as the original).
        benchmark (str): registered benchmark name (core/benchmarks/): camera order, classes, label
            files and metrics.
        use_lidar (bool): also hand the pipeline the key frame's LiDAR file and sweeps (`pts_filename`,
            `lidar_sweeps`; OPUS-Fusion); infos without them are an error naming the sample.

    Every key frame is a sample (the original forces filter_empty_gt=False). The original's 3D-box
    arguments (classes, modality, box_type_3d, use_valid_flag, filter_empty_gt) are gone: no box
    reaches the model; passing one is an error naming it.
    """

    CLASSES = OCC3D_NUSCENES.class_names   # mmdet's class list; an instance has its benchmark's

    def __init__(self, ann_file, pipeline=None, data_root=None, occ_root=None, test_mode=False, load_interval=1,
                 into_past=150, benchmark=DEFAULT_BENCHMARK, use_lidar=False):
        if load_interval < 1:
            raise ValueError(f'load_interval must be >= 1, got {load_interval}')
        self.benchmark = get_benchmark(benchmark)
        self.CLASSES = self.benchmark.class_names
        self.ann_file = ann_file
        self.data_root = data_root
        if occ_root is None and data_root:
            occ_root = osp.join(data_root, self.benchmark.label_root_dir)
        self.occ_root = occ_root
        self.test_mode = test_mode
        self.load_interval = load_interval
        self.into_past = into_past
        self.use_lidar = bool(use_lidar)
        self.data_infos = self.load_annotations(ann_file)
        self.pipeline = Compose(pipeline) if pipeline is not None else None
        # one aspect-ratio group for mmdet's (Distributed)GroupSampler
        self.flag = np.zeros(len(self), dtype=np.uint8)

    def load_annotations(self, ann_file):
        if not osp.isfile(ann_file):
            raise FileNotFoundError(
                f'info file not found: {ann_file}. Create it with '
                f'`python gen_sweep_info.py --data-root <nuScenes root> '
                f'--version <v1.0-trainval|v1.0-mini|v1.0-test>` (see docs/data.md)')
        data = mmcv.load(ann_file, file_format='pkl')
        if not isinstance(data, dict) or 'infos' not in data:
            raise ValueError(f'{ann_file} is not an info pickle of gen_sweep_info.py (expected a dict with "infos")')
        infos = sorted(data['infos'], key=lambda e: e['timestamp'])[::self.load_interval]
        for info in infos[:1]:
            missing = [k for k in INFO_KEYS if k not in info]
            if missing:
                raise KeyError(f'{ann_file}: infos lack {missing}; it was not written by gen_sweep_info.py '
                               f'(an mmdet3d pickle must be extended by it first)')
        self.metadata = data.get('metadata', {})
        self.version = self.metadata.get('version')
        return infos

    def __len__(self):
        return len(self.data_infos)

    def collect_cam_sweeps(self, index):
        """Camera history of sample `index`, newest first: each key-frame interval contributes its
        sweeps (most recent first) and then the previous key frame's `cams` (docs/method.md, "Camera history")."""
        prev = []
        cur = index
        scene = self.data_infos[index]['scene_name']
        while len(prev) < self.into_past:
            sweeps = self.data_infos[cur]['cam_sweeps']
            if not sweeps or cur == 0 or self.data_infos[cur - 1]['scene_name'] != scene:
                break
            prev.extend(sweeps)
            prev.append(self.data_infos[cur - 1]['cams'])
            cur -= 1
        return prev

    def get_data_info(self, index):
        info = self.data_infos[index]
        l2e_r = quaternion_to_matrix(info['lidar2ego_rotation'])
        l2e_t = np.asarray(info['lidar2ego_translation'], dtype=np.float64)
        input_dict = dict(
            sample_idx=info['token'], scene_name=info['scene_name'], timestamp=info['timestamp'] / 1e6,
            ego2lidar=rigid_inverse(rigid_transform(l2e_r, l2e_t)),
            ego2global_translation=np.asarray(info['ego2global_translation'], dtype=np.float64),
            ego2global_rotation=quaternion_to_matrix(info['ego2global_rotation']),
            lidar2ego_translation=l2e_t, lidar2ego_rotation=l2e_r, occ_path=info.get('occ_path'))
        img_filename, img_timestamp, lidar2img = [], [], []
        for cam in self.benchmark.camera_names:
            if cam not in info['cams']:
                raise KeyError(f'sample {info["token"]} has no {cam} in its infos')
            c = info['cams'][cam]
            cam2lidar = rigid_transform(c['sensor2lidar_rotation'], c['sensor2lidar_translation'])
            img_filename.append(c['data_path'])
            img_timestamp.append(c['timestamp'] / 1e6)
            lidar2img.append((pad_intrinsic(c['cam_intrinsic']) @ rigid_inverse(cam2lidar)).astype(np.float32))
        input_dict.update(img_filename=img_filename, img_timestamp=img_timestamp, lidar2img=lidar2img,
                          cam_sweeps=dict(prev=self.collect_cam_sweeps(index), next=[]),
                          camera_names=self.benchmark.camera_names)
        if self.use_lidar:   # the key frame's LiDAR file and its sweeps (OPUS-Fusion, loaders/pipelines/points.py)
            input_dict.update(lidar_input_dict(info, self.ann_file))
        return input_dict

    def prepare(self, index):
        if self.pipeline is None:
            raise RuntimeError('NuScenesOccDataset was built without a pipeline; pass pipeline=[...]')
        return self.pipeline(self.get_data_info(index))

    def __getitem__(self, index):
        if self.test_mode:
            return self.prepare(index)
        while True:  # a pipeline step may drop a training sample (returns None): take another
            data = self.prepare(index)
            if data is not None:
                return data
            index = np.random.randint(len(self))

    def evaluate(self, results, logger=None, camera_mask=None, device=None, ray_batch=None, show_progress=True,
                 rays=None, **hook_kwargs):
        """mIoU and RayIoU of `results` (dataset order): `evaluation.evaluate_occupancy`'s dict.

        Called by mmdet's EvalHook / DistEvalHook during training (their other arguments, `hook_kwargs`, are
        unused); val.py calls the evaluator itself. `camera_mask`: None = the benchmark's protocol; False = mIoU
        over every voxel; True = camera-visible voxels only. The rest as `evaluate_occupancy`.
        """
        from evaluation import evaluate_occupancy
        return evaluate_occupancy(results, self.data_infos, self.occ_root, logger=logger, device=device,
                                  ray_batch=ray_batch, show_progress=show_progress, rays=rays,
                                  benchmark=self.benchmark, camera_mask=camera_mask)

    def __repr__(self):
        return (f'{self.__class__.__name__}({len(self)} samples of {self.ann_file}, test_mode={self.test_mode}, '
                f'occ_root={self.occ_root!r}, benchmark={self.benchmark.name!r})')
