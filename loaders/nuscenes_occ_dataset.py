"""NuScenesOccDataset: the nuScenes occupancy dataset of OPS (spec 6.3).

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

from .pipelines.loading import CAMERA_TYPES, intrinsic_pad, rigid_inverse

OCC_CLASS_NAMES = ('others', 'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
                   'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
                   'manmade', 'vegetation')
INFO_KEYS = ('token', 'scene_name', 'timestamp', 'cams', 'cam_sweeps', 'lidar2ego_translation', 'lidar2ego_rotation',
             'ego2global_translation', 'ego2global_rotation')


def quaternion_matrix(q):
    """nuScenes quaternion [w, x, y, z] -> 3x3 rotation."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@DATASETS.register_module()
class NuScenesOccDataset(Dataset):
    """Occ3D-nuScenes key frames with their camera history.

    Args:
        ann_file (str): a `*_sweep.pkl` of gen_sweep_info.py.
        pipeline (list[dict]): pipeline steps (loaders/pipelines).
        data_root (str): nuScenes root; only used to default occ_root to <data_root>/gts.
        occ_root (str): Occ3D gts/ folder, for evaluation (and LoadOccFromFile(occ_root=None) uses
            the infos' occ_path).
        classes: the 3D-box class names of the original configs; accepted, unused (no box targets).
        modality (dict): accepted; only cameras are used.
        test_mode (bool): no train-only fields; switches the pipeline's test behaviour where configured.
        load_interval (int): keep every n-th sample (after sorting).
        into_past (int): maximum length of the camera history list (150 as the original).
        box_type_3d, filter_empty_gt, use_valid_flag: accepted for config compatibility.
    """

    CLASSES = OCC_CLASS_NAMES

    def __init__(self, ann_file, pipeline=None, data_root=None, occ_root=None, classes=None, modality=None,
                 box_type_3d='LiDAR', filter_empty_gt=False, test_mode=False, use_valid_flag=False, load_interval=1,
                 into_past=150, file_client_args=None):
        if load_interval < 1:
            raise ValueError(f'load_interval must be >= 1, got {load_interval}')
        self.ann_file = ann_file
        self.data_root = data_root
        self.occ_root = occ_root if occ_root is not None else (osp.join(data_root, 'gts') if data_root else None)
        self.object_classes = classes
        self.modality = modality or dict(use_camera=True, use_lidar=False)
        self.box_type_3d = box_type_3d
        self.filter_empty_gt = False  # as the original: every key frame is a sample
        self.test_mode = test_mode
        self.use_valid_flag = use_valid_flag
        self.load_interval = load_interval
        self.into_past = into_past
        self.data_infos = self.load_annotations(ann_file)
        self.pipeline = Compose(pipeline) if pipeline is not None else None
        # one aspect-ratio group for mmdet's (Distributed)GroupSampler
        self.flag = np.zeros(len(self), dtype=np.uint8)

    def load_annotations(self, ann_file):
        if not osp.isfile(ann_file):
            raise FileNotFoundError(
                f'info file not found: {ann_file}. Create it with `python gen_sweep_info.py --data-root <nuScenes root> '
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
        sweeps (most recent first) and then the previous key frame's `cams` (spec 6.3)."""
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
        l2e_r = quaternion_matrix(info['lidar2ego_rotation'])
        l2e_t = np.asarray(info['lidar2ego_translation'], dtype=np.float64)
        lidar2ego = np.eye(4)
        lidar2ego[:3, :3], lidar2ego[:3, 3] = l2e_r, l2e_t
        input_dict = dict(
            sample_idx=info['token'], scene_name=info['scene_name'], timestamp=info['timestamp'] / 1e6,
            ego2lidar=rigid_inverse(lidar2ego),
            ego2global_translation=np.asarray(info['ego2global_translation'], dtype=np.float64),
            ego2global_rotation=quaternion_matrix(info['ego2global_rotation']),
            lidar2ego_translation=l2e_t, lidar2ego_rotation=l2e_r, occ_path=info.get('occ_path'))
        img_filename, img_timestamp, lidar2img = [], [], []
        for cam in CAMERA_TYPES:
            if cam not in info['cams']:
                raise KeyError(f'sample {info["token"]} has no {cam} in its infos')
            c = info['cams'][cam]
            cam2lidar = np.eye(4)
            cam2lidar[:3, :3] = c['sensor2lidar_rotation']
            cam2lidar[:3, 3] = c['sensor2lidar_translation']
            img_filename.append(c['data_path'])
            img_timestamp.append(c['timestamp'] / 1e6)
            lidar2img.append((intrinsic_pad(c['cam_intrinsic']) @ rigid_inverse(cam2lidar)).astype(np.float32))
        input_dict.update(img_filename=img_filename, img_timestamp=img_timestamp, lidar2img=lidar2img,
                          cam_sweeps=dict(prev=self.collect_cam_sweeps(index), next=[]))
        if not self.test_mode:
            input_dict['ann_info'] = self.get_ann_info(index)
        return input_dict

    def get_ann_info(self, index):
        """3D boxes when the infos carry them (extended mmdet3d pickles); unused by the method."""
        info = self.data_infos[index]
        if 'gt_boxes' not in info:
            return dict(gt_bboxes_3d=np.zeros((0, 7), dtype=np.float32), gt_labels_3d=np.zeros(0, dtype=np.int64),
                        gt_names=np.zeros(0, dtype='<U1'))
        keep = info['valid_flag'] if self.use_valid_flag and 'valid_flag' in info else np.ones(len(info['gt_boxes']), bool)
        names = np.asarray(info['gt_names'])[keep]
        classes = list(self.object_classes or [])
        labels = np.array([classes.index(n) if n in classes else -1 for n in names], dtype=np.int64)
        return dict(gt_bboxes_3d=np.asarray(info['gt_boxes'])[keep], gt_labels_3d=labels, gt_names=names)

    def pre_pipeline(self, results):
        results['img_fields'] = []
        results['bbox3d_fields'] = []
        results['pts_mask_fields'] = []
        results['pts_seg_fields'] = []
        results['box_type_3d'] = self.box_type_3d

    def prepare(self, index):
        if self.pipeline is None:
            raise RuntimeError('NuScenesOccDataset was built without a pipeline; pass pipeline=[...]')
        results = self.get_data_info(index)
        self.pre_pipeline(results)
        return self.pipeline(results)

    def __getitem__(self, index):
        if self.test_mode:
            return self.prepare(index)
        while True:  # a pipeline step may drop a training sample (returns None): take another
            data = self.prepare(index)
            if data is not None:
                return data
            index = np.random.randint(len(self))

    def evaluate(self, results, logger=None, **kwargs):
        """mIoU and RayIoU of `results` (dataset order); returns loaders.occ_eval's dict."""
        from .occ_eval import evaluate_occupancy
        return evaluate_occupancy(results, self.data_infos, self.occ_root, logger=logger)

    def __repr__(self):
        return (f'{self.__class__.__name__}({len(self)} samples of {self.ann_file}, test_mode={self.test_mode}, '
                f'occ_root={self.occ_root!r})')
