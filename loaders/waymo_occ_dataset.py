"""WaymoOccDataset: Occ3D-Waymo frames with their camera history, from the release's own info files.

The Occ3D-Waymo download ships, beside its label folders (core/benchmarks/occ3d_waymo.py):
* `waymo_infos_{train,val}.pkl`: mmdetection3d's Waymo infos (its KITTI-format export), a list of one dict per
  frame; read here: `image.image_idx` = prefix * 1e6 + scene * 1e3 + frame (prefix 0 training, 1 validation),
  `image.image_path` (the FRONT image, `training/image_0/<image_idx:07d>.png`, relative to the export's root)
  and `timestamp` (microseconds);
* `cam_infos.pkl` / `cam_infos_vali.pkl` (the "pose file"): `{scene: {frame: [5 dicts]}}`, one dict per camera
  with 4x4 `intrinsics` (camera -> pixels, rows (u*d, v*d, d, 1)), `sensor2ego` (camera -> vehicle) and
  `ego2global` (vehicle -> global). The list's camera order is FRONT, FRONT_LEFT, SIDE_LEFT, FRONT_RIGHT,
  SIDE_RIGHT (`POSE_FILE_CAMERAS`): entries 2 and 3 belong to image_3 and image_2, as the reference loader
  (CVT-Occ, `CustomWaymoDataset_T.get_data_info`) maps them.
Images: `<data_root>/training/image_<k>/<image_idx:07d>.png`, k = 0..4 for FRONT, FRONT_LEFT, FRONT_RIGHT,
SIDE_LEFT, SIDE_RIGHT (`IMAGE_FOLDERS`: Waymo's camera id - 1); the front three are 1920x1280, the sides 1920x886.

Each frame becomes an info of the shape the rest of the project reads (`NuScenesOccDataset`'s: `token`,
`scene_name`, `timestamp`, the ego and LiDAR poses, `cams` with the fields of gen_sweep_info.py's camera
entries), plus the label-path fields `split`, `scene_idx`, `frame_idx` and `occ_path`. Frames:
* ego = the frame's vehicle frame (the labels' frame); its pose is the pose file's FRONT entry's `ego2global`
  (as the reference loader takes the frame pose);
* "LiDAR" = the vehicle frame moved to the benchmark's `lidar_position` (Waymo's roof LiDAR, no rotation): the
  frame `lidar2img` starts from and whose positions are the RayIoU origins (core/benchmarks/occ3d_waymo.py);
* camera = OpenCV axes; a camera's pose is its own entry's `ego2global @ sensor2ego`, so a camera that fired
  a few milliseconds off the frame is projected from where it was (as gen_sweep_info.py does for nuScenes).
Every frame is labelled (10 Hz): the camera history of a sample is the previous frames of its sequence, newest
first, one entry per frame (with `test_interval = 5` the history frames are 0.5 s apart, as nuScenes' key frames).
"""
import os.path as osp
import pickle
from collections.abc import Mapping, Sequence

import numpy as np
from mmdet.datasets import DATASETS

from core.benchmarks import OCC3D_WAYMO
from core.geometry import pad_intrinsic, rigid_inverse, rigid_transform

from .nuscenes_occ_dataset import NuScenesOccDataset
from .pipelines import pad_views  # noqa: F401  (registers PadViewsToSize, which the Waymo configs use)

__all__ = ['WaymoOccDataset', 'IMAGE_FOLDERS', 'POSE_FILE_CAMERAS', 'SPLITS', 'split_camera_projection',
           'parse_image_idx']

IMAGE_FOLDERS = {'FRONT': 'image_0', 'FRONT_LEFT': 'image_1', 'FRONT_RIGHT': 'image_2', 'SIDE_LEFT': 'image_3',
                 'SIDE_RIGHT': 'image_4'}
POSE_FILE_CAMERAS = ('FRONT', 'FRONT_LEFT', 'SIDE_LEFT', 'FRONT_RIGHT', 'SIDE_RIGHT')
# the image index's prefix (mmdetection3d's Waymo export) -> the Occ3D-Waymo label folder
SPLITS = {0: 'training', 1: 'validation', 2: 'test'}
RELEASE_HINT = ('the Occ3D-Waymo download ships waymo_infos_{train,val}.pkl and cam_infos.pkl / cam_infos_vali.pkl '
                '(tools/make_synthetic_waymo.py writes a test world in this layout); see docs/data.md')


def parse_image_idx(image_idx):
    """(prefix, scene, frame) of an mmdetection3d Waymo image index prefix * 1e6 + scene * 1e3 + frame."""
    image_idx = int(image_idx)
    return image_idx // 1_000_000, image_idx // 1000 % 1000, image_idx % 1000


def split_camera_projection(intrinsics):
    """A camera -> pixels matrix as `(K, camera2optical)` with `pad_intrinsic(K) @ camera2optical == intrinsics`.

    Args:
        intrinsics (array): 3x3 K, or 4x4 with last row (0, 0, 0, 1): `pad_intrinsic(K)` (camera = OpenCV axes)
            or any `pad_intrinsic(K) @ [[R, t], [0, 1]]` (a camera frame with other axes, e.g. Waymo's x forward).
    Returns:
        K float64 [3, 3] upper triangular with a positive diagonal; camera2optical float64 [4, 4] rigid (the
        identity for the plain forms, exactly).
    """
    m = np.asarray(intrinsics, dtype=np.float64)
    if m.shape == (3, 3):
        m = pad_intrinsic(m)
    if m.shape != (4, 4) or not np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f'camera intrinsics must be 3x3 or 4x4 with last row (0, 0, 0, 1), got {m.tolist()}')
    a = m[:3, :3]
    if np.allclose(np.tril(a, -1), 0.0, atol=0.0) and (np.diag(a) > 0).all() and not m[:3, 3].any():
        return a.copy(), np.eye(4)
    # RQ decomposition a = K R through numpy's QR of the row-reversed transpose
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ a).T)
    k = flip @ r.T @ flip
    rot = flip @ q.T
    signs = np.diag(np.sign(np.diag(k)))
    k, rot = k @ signs, signs @ rot
    if np.linalg.det(rot) < 0:
        raise ValueError('camera intrinsics: the 3x3 part is K times a reflection, not a rotation; the matrix is not '
                         'a camera projection')
    camera2optical = np.eye(4)
    camera2optical[:3, :3] = rot
    camera2optical[:3, 3] = np.linalg.solve(k, m[:3, 3])
    return k, camera2optical


def _entry(container, key, what):
    """`container[key]` of a dict or list, with a KeyError naming `what` when it is absent."""
    try:
        if isinstance(container, Mapping) or (isinstance(container, Sequence) and not isinstance(container, str)):
            return container[key]
    except (KeyError, IndexError):
        pass
    raise KeyError(what)


@DATASETS.register_module()
class WaymoOccDataset(NuScenesOccDataset):
    """Occ3D-Waymo frames (all labelled, 10 Hz) with their camera history; the module docstring has the files.

    Args:
        ann_file (str): `waymo_infos_train.pkl` / `waymo_infos_val.pkl` of the Occ3D-Waymo download.
        pose_file (str): its `cam_infos.pkl` (training) / `cam_infos_vali.pkl` (validation).
        pipeline (list[dict]): pipeline steps (loaders/pipelines).
        data_root (str): root of mmdetection3d's KITTI-format Waymo export (the infos' image paths are relative
            to it).
        occ_root (str): the label folder (holding training/ and validation/), by the benchmark's label-path
            rule (docs/data.md, "Label files"); default: the folder of `ann_file` (where the download puts it).
        test_mode (bool), load_interval (int), into_past (int): as `NuScenesOccDataset` (load_interval keeps
            every n-th frame as a sample; the history still takes every frame).
        benchmark (str): registered benchmark name (its camera names must be keys of `IMAGE_FOLDERS`).
        pose_cameras (sequence[str]): camera of each entry of the pose file's per-frame lists.
    """

    CLASSES = OCC3D_WAYMO.class_names   # mmdet's class list; an instance has its benchmark's

    def __init__(self, ann_file, pose_file, pipeline=None, data_root=None, occ_root=None, test_mode=False,
                 load_interval=1, into_past=150, benchmark=OCC3D_WAYMO.name, pose_cameras=POSE_FILE_CAMERAS):
        self.pose_file = pose_file
        self.pose_cameras = tuple(pose_cameras)
        if occ_root is None:
            occ_root = osp.dirname(osp.abspath(ann_file))
        super().__init__(ann_file, pipeline=pipeline, data_root=data_root, occ_root=occ_root, test_mode=test_mode,
                         load_interval=load_interval, into_past=into_past, benchmark=benchmark)

    # ------------------------------------------------------------------ the release's files
    @staticmethod
    def _read_pickle(path, what):
        if not osp.isfile(path):
            raise FileNotFoundError(f'Occ3D-Waymo {what} not found: {path}; {RELEASE_HINT}')
        try:
            with open(path, 'rb') as f:
                return pickle.load(f)
        except Exception as exc:  # noqa: BLE001 (any unpickling failure is a bad file)
            raise ValueError(f'{path}: not a readable pickle ({type(exc).__name__}: {exc}); {RELEASE_HINT}') from exc

    def load_annotations(self, ann_file):
        raw = self._read_pickle(ann_file, 'info file')
        if isinstance(raw, Mapping):
            raw = raw.get('infos')
        if not isinstance(raw, list) or not all(isinstance(i, Mapping) for i in raw):
            raise ValueError(f'{ann_file}: expected a list of per-frame dicts (mmdetection3d\'s Waymo infos); '
                             f'{RELEASE_HINT}')
        missing = [k for k in ('image', 'timestamp') if raw and k not in raw[0]]
        if missing:
            raise KeyError(f'{ann_file}: infos lack {missing}; {RELEASE_HINT}')
        poses = self._read_pickle(self.pose_file, 'pose file')
        missing = [c for c in self.benchmark.camera_names if c not in self.pose_cameras or c not in IMAGE_FOLDERS]
        if missing:
            raise ValueError(f'cameras {missing} of benchmark {self.benchmark.name} are not in pose_cameras '
                             f'{self.pose_cameras} or have no image folder ({sorted(IMAGE_FOLDERS)})')
        self.frame_infos = sorted((self.frame_info(info, poses) for info in raw), key=lambda i: i['sample_idx'])
        self.metadata, self.version = {}, None
        samples = self.frame_infos[::self.load_interval]
        # as gen_sweep_info.py's `cam_sweeps`: the frames between the previous sample and this one, newest first (the
        # data check reads them, so that with load_interval > 1 the history images are checked too)
        for position in range(0, len(self.frame_infos), self.load_interval):
            scene = self.frame_infos[position]['scene_name']
            between = range(position - 1, max(position - self.load_interval, -1), -1)
            self.frame_infos[position]['cam_sweeps'] = [
                self.frame_infos[q]['cams'] for q in between if self.frame_infos[q]['scene_name'] == scene]
        return samples

    def frame_info(self, info, poses):
        """One release info (+ the pose file) -> the project's info dict of that frame (module docstring)."""
        image_idx = int(info['image']['image_idx'])
        prefix, scene, frame = parse_image_idx(image_idx)
        if prefix not in SPLITS:
            raise ValueError(f'{self.ann_file}: image_idx {image_idx} has prefix {prefix}; mmdetection3d\'s Waymo '
                             f'export uses 0 (training), 1 (validation), 2 (test)')
        where = f'{self.pose_file}: no entry [{scene}][{frame}] (scene, frame of image_idx {image_idx:07d})'
        cams = _entry(_entry(poses, scene, where), frame, where)
        if len(cams) != len(self.pose_cameras):
            raise ValueError(f'{self.pose_file}: frame [{scene}][{frame}] has {len(cams)} cameras, expected '
                             f'{len(self.pose_cameras)} ({", ".join(self.pose_cameras)})')
        for n, pose in enumerate(cams):
            missing = [k for k in ('intrinsics', 'sensor2ego', 'ego2global') if k not in pose]
            if missing:
                raise KeyError(f'{self.pose_file}: camera {n} of frame [{scene}][{frame}] lacks {missing}; '
                               f'{RELEASE_HINT}')
        folder_root, name = osp.split(info['image']['image_path'])
        folder_root, folder = osp.split(folder_root)
        if folder != IMAGE_FOLDERS[self.benchmark.camera_names[0]]:
            raise ValueError(f'{self.ann_file}: image_path {info["image"]["image_path"]!r} of frame {image_idx:07d} '
                             f'is not in an {IMAGE_FOLDERS[self.benchmark.camera_names[0]]}/ folder')
        timestamp = int(info['timestamp'])
        # the frame pose: the first camera's (FRONT's) vehicle pose, as the reference loader takes it
        ego2global = np.asarray(cams[0]['ego2global'], dtype=np.float64).reshape(4, 4)
        lidar_position = np.asarray(getattr(self.benchmark, 'lidar_position', (0.0, 0.0, 0.0)), dtype=np.float64)
        global2lidar = rigid_inverse(ego2global @ rigid_transform(np.eye(3), lidar_position))
        entries = {}
        for cam in self.benchmark.camera_names:
            pose = cams[self.pose_cameras.index(cam)]
            k, camera2optical = split_camera_projection(pose['intrinsics'])
            cam2global = (np.asarray(pose['ego2global'], dtype=np.float64).reshape(4, 4)
                          @ np.asarray(pose['sensor2ego'], dtype=np.float64).reshape(4, 4)
                          @ rigid_inverse(camera2optical))
            cam2lidar = global2lidar @ cam2global
            # the fields of gen_sweep_info.py's camera entries (sensor2global_rotation in its row convention)
            entries[cam] = dict(
                data_path=osp.join(self.data_root or '', folder_root, IMAGE_FOLDERS[cam], name), type=cam,
                timestamp=timestamp, cam_intrinsic=k,
                sensor2lidar_rotation=cam2lidar[:3, :3], sensor2lidar_translation=cam2lidar[:3, 3],
                sensor2global_rotation=cam2global[:3, :3].T, sensor2global_translation=cam2global[:3, 3])
        out = dict(token=f'{image_idx:07d}', sample_idx=image_idx, scene_name=f'{image_idx // 1000:04d}',
                   split=SPLITS[prefix], scene_idx=scene, frame_idx=frame, timestamp=timestamp,
                   ego2global_rotation=ego2global[:3, :3], ego2global_translation=ego2global[:3, 3],
                   lidar2ego_rotation=np.eye(3), lidar2ego_translation=lidar_position, cams=entries, cam_sweeps=[])
        out['occ_path'] = self.benchmark.label_path(out, self.occ_root) if self.occ_root else None
        return out

    # ------------------------------------------------------------------ samples
    def collect_cam_sweeps(self, index):
        """The previous frames of sample `index`'s sequence (their `cams`), newest first, at most `into_past`."""
        position = index * self.load_interval
        scene = self.frame_infos[position]['scene_name']
        prev = []
        for earlier in range(position - 1, max(position - 1 - self.into_past, -1), -1):
            if self.frame_infos[earlier]['scene_name'] != scene:
                break
            prev.append(self.frame_infos[earlier]['cams'])
        return prev

    def get_data_info(self, index):
        """The pipeline's input dict (the keys of `NuScenesOccDataset.get_data_info`, plus the label-path fields)."""
        info = self.data_infos[index]
        lidar2ego = rigid_transform(info['lidar2ego_rotation'], info['lidar2ego_translation'])
        views = [info['cams'][cam] for cam in self.benchmark.camera_names]
        cam2lidar = [rigid_transform(v['sensor2lidar_rotation'], v['sensor2lidar_translation']) for v in views]
        return dict(
            sample_idx=info['token'], scene_name=info['scene_name'], timestamp=info['timestamp'] / 1e6,
            split=info['split'], scene_idx=info['scene_idx'], frame_idx=info['frame_idx'], occ_path=info['occ_path'],
            ego2lidar=rigid_inverse(lidar2ego), ego2global_translation=info['ego2global_translation'],
            ego2global_rotation=info['ego2global_rotation'], lidar2ego_translation=lidar2ego[:3, 3],
            lidar2ego_rotation=lidar2ego[:3, :3], img_filename=[v['data_path'] for v in views],
            img_timestamp=[v['timestamp'] / 1e6 for v in views],
            lidar2img=[(pad_intrinsic(v['cam_intrinsic']) @ rigid_inverse(c2l)).astype(np.float32)
                       for v, c2l in zip(views, cam2lidar)],
            cam_sweeps=dict(prev=self.collect_cam_sweeps(index), next=[]), camera_names=self.benchmark.camera_names)
