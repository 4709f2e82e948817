"""LiDAR loading steps of OPUS-Fusion (docs/method.md, "OPUS-Fusion: the LiDAR branch"), registered in mmdet's
PIPELINES under the names of the authors' config:

    LoadPointsFromFile(coord_type='LIDAR', load_dim=5, use_dim=5)
    LoadPointsFromMultiSweeps(sweeps_num=9, use_dim=[0, 1, 2, 3, 4], pad_empty_sweeps=True, remove_close=True)
    LiDARToOccSpace()
    PointsRangeFilter(point_cloud_range=[-40, -40, -1, 40, 40, 5.4])

They read the input dict keys `pts_filename` (the key frame's `.pcd.bin`), `lidar_sweeps['prev']` (the info's
`lidar_sweeps`: up to 10 previous sweeps, newest first, each with `data_path`, `timestamp` (us) and
`sensor2lidar_rotation` / `_translation`: sweep LiDAR -> key-frame LiDAR, column convention), `timestamp` (s, the
key frame's), `ego2lidar` (4x4) and `ego2occ` (4x4, identity when absent); `lidar_input_dict(info)` makes the
first two from an info of gen_sweep_info.py.

`results['points']` is a float32 numpy array `[N, 5]`: x, y, z, intensity, time lag (s, key frame 0), in the
key frame's LiDAR frame until `LiDARToOccSpace`, then in its ego (occupancy) frame. The order of the points is
the key sweep's, then each sweep's, newest first, in file order: the voxelisation keeps the first points of a
voxel and the first voxels, so the order is part of the result.
"""
import os.path as osp

import numpy as np
import torch
from mmdet.datasets.builder import PIPELINES

from .image_io import missing_file_message

__all__ = ['PointCloudError', 'read_points', 'lidar_input_dict', 'remove_close', 'LoadPointsFromFile',
           'LoadPointsFromMultiSweeps', 'LiDARToOccSpace', 'PointsRangeFilter']

# the original's `_remove_close(points, radius=1.0)`: a square of half-width 1 m around the sensor, not a circle
CLOSE_HALF_WIDTH = 1.0


class PointCloudError(ValueError):
    """A LiDAR file or the LiDAR part of an info is unusable; the message names it and the fix."""
    user_error = True  # engine/cli.py prints the message without a traceback


def read_points(path, load_dim):
    """A nuScenes `.pcd.bin` file: float32 `[N, load_dim]` (x, y, z, intensity, ring for load_dim = 5).

    Raises FileNotFoundError for a missing file and PointCloudError for an empty one or a size that is not a whole
    number of points (a truncated file, or points of another dimension).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(missing_file_message(path))
    size, point_bytes = osp.getsize(path), 4 * load_dim
    if size == 0:
        raise PointCloudError(f'LiDAR file is empty: {path}. Extract it again from the nuScenes samples/ or sweeps/ '
                              f'archive')
    if size % point_bytes:
        raise PointCloudError(f'LiDAR file {path} has {size} bytes, not a whole number of {load_dim}-value float32 '
                              f'points ({point_bytes} bytes): it is truncated (extract it again) or holds points of '
                              f'another dimension (set load_dim to its values per point)')
    return np.fromfile(path, dtype=np.float32).reshape(-1, load_dim)


def lidar_input_dict(info, source='the infos'):
    """`pts_filename` and `lidar_sweeps` (`prev`: the info's sweeps, `next`: []) of an info of gen_sweep_info.py.

    The original dataset also walks back into the previous key frames' sweep lists when a key frame has fewer
    sweeps than the loader takes; those sweeps' matrices lead into the other key frame's LiDAR frame. Only the
    key frame's own list is used here (docs/method.md, "OPUS-Fusion: the LiDAR branch").

    Args:
        info (dict): one info of the pickle; source (str): the pickle's path, for the error message.
    """
    token = info.get('token', '?')
    if not info.get('lidar_path'):
        raise PointCloudError(f'{source}: sample {token} has no lidar_path; write the infos with gen_sweep_info.py '
                              f'(it records the key frame\'s LiDAR file and up to 10 previous LiDAR sweeps)')
    if 'lidar_sweeps' not in info:
        raise PointCloudError(f'{source}: sample {token} has no lidar_sweeps'
                              f'{" (an mmdet3d pickle: its sweeps are called sweeps)" if "sweeps" in info else ""}; '
                              f'write or extend the infos with gen_sweep_info.py')
    return dict(pts_filename=info['lidar_path'], lidar_sweeps=dict(prev=list(info['lidar_sweeps']), next=[]))


def remove_close(points, half_width=CLOSE_HALF_WIDTH):
    """Drop the points with |x| < half_width and |y| < half_width (the sensor's own frame): `[N, D]` -> `[M, D]`."""
    close = (np.abs(points[:, 0]) < half_width) & (np.abs(points[:, 1]) < half_width)
    return points[~close]


def _use_dims(use_dim, load_dim, step):
    dims = list(range(use_dim)) if isinstance(use_dim, int) else [int(d) for d in use_dim]
    if not dims or max(dims) >= load_dim or min(dims) < 0:
        raise ValueError(f'{step}: use_dim {use_dim} must pick columns of the {load_dim} loaded per point '
                         f'(load_dim={load_dim})')
    return dims


@PIPELINES.register_module()
class LoadPointsFromFile:
    """The key frame's sweep: `results['points']` = float32 `[N, len(use_dim)]` of `results['pts_filename']`.

    Args:
        coord_type (str): 'LIDAR' (the points stay in the LiDAR frame; mmdet3d's other frames are not used).
        load_dim (int): values per point in the file (5 for nuScenes).
        use_dim (int | list[int]): the columns kept (an int n: the first n).
    """

    def __init__(self, coord_type='LIDAR', load_dim=5, use_dim=5):
        if coord_type != 'LIDAR':
            raise ValueError(f"LoadPointsFromFile: coord_type={coord_type!r} is not supported; OPUS-Fusion loads "
                             f"coord_type='LIDAR'")
        self.load_dim = int(load_dim)
        self.use_dim = _use_dims(use_dim, self.load_dim, 'LoadPointsFromFile')

    def __call__(self, results):
        path = results.get('pts_filename')
        if not path:
            raise PointCloudError(f'LoadPointsFromFile: the input of sample {results.get("sample_idx", "?")} has no '
                                  f'pts_filename (the key frame\'s LiDAR file); the dataset must add '
                                  f'loaders.pipelines.points.lidar_input_dict(info) to it')
        results['points'] = np.ascontiguousarray(read_points(path, self.load_dim)[:, self.use_dim])
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(load_dim={self.load_dim}, use_dim={self.use_dim})'


@PIPELINES.register_module()
class LoadPointsFromMultiSweeps:
    """Stack the previous sweeps onto the key frame's points (the authors' step of this name).

    The key points' `time_dim` column (the ring index in nuScenes files) becomes 0. Then:

    * no sweep and `pad_empty_sweeps`: the key points are appended `sweeps_num` more times (without the close
      points when `remove_close`), time lag 0;
    * otherwise the first `sweeps_num` sweeps of `lidar_sweeps['prev']` (newest first; fewer when the list is
      shorter, without padding), each: loaded with `load_dim` values, close points removed in the sweep's own frame
      (`remove_close`), moved into the key frame's LiDAR frame, `p @ R.T + t` in float64 rounded to float32 after
      each step (as the original's numpy), time lag `key timestamp - sweep timestamp` (s, float64 -> float32).

    The key frame's own close points are kept (they are the LiDAR's returns from the car itself), as in the
    original. Finally the columns `use_dim` are kept.

    Args:
        sweeps_num (int): sweeps taken (9 in OPUS-Fusion: with the key frame, 10).
        load_dim (int): values per point in the sweep files and in the key points (5).
        use_dim (list[int]): columns kept at the end ([0, 1, 2, 3, 4]).
        time_dim (int): the column that receives the time lag (4).
        pad_empty_sweeps (bool), remove_close (bool): as above (both True in OPUS-Fusion).
    """

    def __init__(self, sweeps_num=10, load_dim=5, use_dim=(0, 1, 2, 4), time_dim=4, pad_empty_sweeps=False,
                 remove_close=False):
        if not 0 <= int(time_dim) < int(load_dim):
            raise ValueError(f'LoadPointsFromMultiSweeps: time_dim={time_dim} must be a column of the {load_dim} '
                             f'values per point (load_dim)')
        self.sweeps_num, self.load_dim, self.time_dim = int(sweeps_num), int(load_dim), int(time_dim)
        self.use_dim = _use_dims(use_dim, self.load_dim, 'LoadPointsFromMultiSweeps')
        self.pad_empty_sweeps, self.remove_close = bool(pad_empty_sweeps), bool(remove_close)

    def load_sweep(self, sweep, key_timestamp):
        """One sweep dict -> float32 `[M, load_dim]` in the key frame's LiDAR frame with its time lag."""
        points = read_points(sweep['data_path'], self.load_dim).copy()
        if self.remove_close:
            points = remove_close(points)
        points[:, :3] = points[:, :3] @ np.asarray(sweep['sensor2lidar_rotation']).T
        points[:, :3] += np.asarray(sweep['sensor2lidar_translation'])
        points[:, self.time_dim] = key_timestamp - sweep['timestamp'] / 1e6
        return points

    def __call__(self, results):
        points = results.get('points')
        if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] != self.load_dim:
            shape = getattr(points, 'shape', None)
            raise PointCloudError(f'LoadPointsFromMultiSweeps: the key-frame points of sample '
                                  f'{results.get("sample_idx", "?")} are {shape}, not [N, {self.load_dim}] like the '
                                  f'sweeps (load_dim); put LoadPointsFromFile with use_dim={self.load_dim} before it')
        sweeps = results.get('lidar_sweeps')
        if sweeps is None:
            raise PointCloudError(f'LoadPointsFromMultiSweeps: the input of sample {results.get("sample_idx", "?")} '
                                  f'has no lidar_sweeps; the dataset must add '
                                  f'loaders.pipelines.points.lidar_input_dict(info) to it')
        points = points.copy()
        points[:, self.time_dim] = 0
        stack = [points]
        if self.pad_empty_sweeps and not sweeps['prev']:
            repeat = remove_close(points) if self.remove_close else points
            stack += [repeat] * self.sweeps_num
        else:
            stack += [self.load_sweep(s, results['timestamp']) for s in sweeps['prev'][:self.sweeps_num]]
        results['points'] = np.ascontiguousarray(np.concatenate(stack)[:, self.use_dim])
        return results

    def __repr__(self):
        return (f'{self.__class__.__name__}(sweeps_num={self.sweeps_num}, use_dim={self.use_dim}, '
                f'pad_empty_sweeps={self.pad_empty_sweeps}, remove_close={self.remove_close})')


@PIPELINES.register_module()
class LiDARToOccSpace:
    """Move the points from the key frame's LiDAR frame into its occupancy frame: `ego2occ @ inv(ego2lidar)`.

    As the original: the matrix is rounded to float32 (LiDAR -> ego first, then the product with `ego2occ` in
    float64, then float32 again) and applied by a float32 matmul. Adds `ego2points` = `ego2occ` (float64 4x4):
    the frame the points are now in. (The original overwrites `ego2lidar` with it, which its fusion head reads as
    "ego -> points"; here `ego2lidar` keeps its meaning, since the camera matrices are composed with it.)
    """

    def __call__(self, results):
        if 'ego2lidar' not in results or 'points' not in results:
            raise PointCloudError('LiDARToOccSpace: needs points (LoadPointsFromFile before it) and ego2lidar (the '
                                  'dataset\'s) in the input')
        ego2occ = np.asarray(results.get('ego2occ', np.eye(4)), dtype=np.float64)
        lidar2ego = np.linalg.inv(np.asarray(results['ego2lidar'], dtype=np.float64)).astype(np.float32)
        lidar2occ = torch.from_numpy((ego2occ @ lidar2ego).astype(np.float32))
        points = torch.from_numpy(results['points'])
        homogeneous = torch.cat([points[:, :3], torch.ones_like(points[:, :1])], dim=1)     # [N, 4]
        xyz = torch.matmul(lidar2occ, homogeneous.t()).t()[:, :3]
        results['points'] = torch.cat([xyz, points[:, 3:]], dim=1).numpy()
        results['ego2points'] = ego2occ.copy()
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}()'


@PIPELINES.register_module()
class PointsRangeFilter:
    """Keep the points strictly inside the range: min < x, y, z < max (mmdet3d's `in_range_3d`).

    Args:
        point_cloud_range (sequence[6]): (x, y, z min, x, y, z max), the frame of the points.
    """

    def __init__(self, point_cloud_range):
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32)
        if self.point_cloud_range.shape != (6,) or (self.point_cloud_range[3:] <= self.point_cloud_range[:3]).any():
            raise ValueError(f'PointsRangeFilter: point_cloud_range must be (x, y, z min, x, y, z max) with max > min, '
                             f'got {point_cloud_range}')

    def __call__(self, results):
        xyz, lo, hi = results['points'][:, :3], self.point_cloud_range[:3], self.point_cloud_range[3:]
        results['points'] = results['points'][((xyz > lo) & (xyz < hi)).all(axis=1)]
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(point_cloud_range={self.point_cloud_range.tolist()})'
