"""Occ3D-Waymo (Tian et al., NeurIPS 2023 datasets track), the 0.4 m release, as its reference loaders read it.

The release (github.com/Tsinghua-MARS-Lab/Occ3D, README "Occ3D-Waymo"; the loaders of its `code` branch and of
CVT-Occ, `LoadOccGTFromFileWaymo`) stores one file per frame (10 Hz, every frame labelled),
`<split>/<scene:03d>/<frame:03d>_04.npz` with `split` in training / validation, holding four arrays of the
200 x 200 x 16 grid of 0.4 m voxels over [-40, 40] x [-40, 40] x [-1, 5.4] m in the frame's vehicle frame,
indexed [x, y, z]:

| release array | what | our array |
|---|---|---|
| `voxel_label` (uint8) | 0..14 the classes below, 23 = free | `semantics` (23 -> 15) |
| `origin_voxel_state` | observed by the accumulated LiDAR | `mask_lidar` |
| `final_voxel_state` | observed in the current camera views | `mask_camera` (with `infov`) |
| `infov` | inside the five cameras' field of view | `mask_fov` |

`Occ3DWaymoBenchmark.read_labels` converts a file into this project's convention (free last):
* `semantics` uint8: release ids 0..14 kept, 23 (free) -> 15 = `free_label`. Any other id is an error naming
  the file (the release holds only these; the reference loaders would pass it through to the metric, which
  then ignores it, and to the loss);
* `mask_camera` bool = `final_voxel_state` AND `infov`: the voxels the reference evaluation counts and the
  reference training supervises (`use_camera_mask=True`, `use_infov_mask=True`, `use_lidar_mask=False`);
* `mask_lidar` bool = `origin_voxel_state`, `mask_fov` bool = `infov` (nonzero = true, as `astype(bool)` of the
  reference loaders).

Class names and order: the Occ3D README (and CVT-Occ's docs/dataset.md) list ids 0..14 as TYPE_GENERALOBJECT,
TYPE_VEHICLE, TYPE_PEDESTRIAN, TYPE_SIGN, TYPE_CYCLIST, TYPE_TRAFFIC_LIGHT, TYPE_POLE, TYPE_CONSTRUCTION_CONE,
TYPE_BICYCLE, TYPE_MOTORCYCLE, TYPE_BUILDING, TYPE_VEGETATION, TYPE_TREE_TRUNK, TYPE_ROAD, TYPE_WALKABLE; ids 1..4
follow Waymo's box label enum (VEHICLE, PEDESTRIAN, SIGN, CYCLIST). (The metric file of Occ3D's `code` branch
prints ids 2..4 as BICYCLIST, PEDESTRIAN, SIGN; its README, its configs and CVT-Occ agree on the order above.)

The metric (docs/evaluation.md, "Occ3D-Waymo"): mIoU over the 15 classes (GENERALOBJECT included, free
excluded) on the `mask_camera` voxels, as the reference (`mIoU[:-1]` of a 16 x 16 confusion); RayIoU with the
SparseOcc rays, whose origins are the positions of the frames' roof LiDAR (`lidar_position`).

Field this description adds to `Benchmark`:
* `lidar_position`: where the dataset puts the "LiDAR" frame of a sample (loaders/waymo_occ_dataset.py): the
  vehicle frame moved to Waymo's roof LiDAR, about (1.43, 0.0, 2.18) m (the top LiDAR's mount in the vehicle
  frame; calibrations differ by centimetres). The release's info files carry no LiDAR calibration (the
  KITTI-format export writes points in the vehicle frame), and RayIoU casts its virtual LiDAR rays from the
  LiDAR positions of a sequence's frames: from the vehicle origin, which lies on the road, every downward ray
  would start inside the road voxels.
"""
import re
from dataclasses import dataclass

import numpy as np

from core.benchmarks import Benchmark, LabelFileError, register_benchmark

__all__ = ['OCC3D_WAYMO', 'Occ3DWaymoBenchmark', 'RELEASE_FREE_ID', 'RELEASE_FILE_ARRAYS', 'RELEASE_ARRAYS',
           'release_semantics']

RELEASE_FREE_ID = 23
RELEASE_FILE_ARRAYS = ('voxel_label', 'origin_voxel_state', 'final_voxel_state', 'infov')
# our array -> the release arrays it is made of (AND-ed)
RELEASE_ARRAYS = {
    'semantics': ('voxel_label',),
    'mask_lidar': ('origin_voxel_state',),
    'mask_camera': ('final_voxel_state', 'infov'),
    'mask_fov': ('infov',),
}


def release_semantics(voxel_label, num_classes, free_label):
    """uint8 labels of our convention from a release `voxel_label` grid: ids < num_classes kept, 23 -> free_label.

    Returns (semantics, sorted unexpected ids): the caller reports a non-empty second value.
    """
    voxel_label = np.asarray(voxel_label)
    ids = np.unique(voxel_label)
    unexpected = [int(i) for i in ids if not (0 <= i < num_classes or i == RELEASE_FREE_ID)]
    semantics = voxel_label.astype(np.uint8)
    semantics[voxel_label == RELEASE_FREE_ID] = free_label
    return semantics, unexpected


@dataclass(frozen=True)
class Occ3DWaymoBenchmark(Benchmark):
    """A `Benchmark` whose label files are the Occ3D-Waymo release's `*_04.npz` (arrays renamed and remapped).

    Args (besides `Benchmark`'s):
        lidar_position (tuple[float]): (x, y, z) metres, vehicle frame: the origin of a sample's LiDAR frame
            and of its RayIoU rays (module docstring).
    """
    lidar_position: tuple = (1.43, 0.0, 2.18)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, 'lidar_position', tuple(float(v) for v in self.lidar_position))
        unknown = [k for k in self.label_array_names if k not in RELEASE_ARRAYS]
        if unknown or len(self.lidar_position) != 3:
            raise ValueError(f'benchmark {self.name!r}: label_arrays must be among {list(RELEASE_ARRAYS)} (got '
                             f'{unknown}) and lidar_position 3 numbers (got {self.lidar_position})')

    @property
    def label_layout(self):
        """'<root>/<split>/<scene_idx>/<frame_idx>_04.npz' (the template's format specs dropped)."""
        return re.sub(r'\{(\w+)(?::[^}]*)?\}', r'<\1>', f'{self.label_root_dir}/{self.label_file}')

    def read_labels(self, path, arrays=None):
        """{name: [200, 200, 16] array} of our arrays (`semantics` uint8, the masks bool) from one release file.

        A truncated or foreign file, a missing release array, a grid of another shape or a label id outside
        0..14 and 23 raises LabelFileError naming the file, the problem and where correct files come from.
        """
        arrays = self.label_array_names if arrays is None else tuple(arrays)
        unknown = [k for k in arrays if k not in self.label_array_names]
        if unknown:
            raise LabelFileError(f'{path}: {self.name} label files give {list(self.label_array_names)}, not {unknown}')
        needed = [r for r in RELEASE_FILE_ARRAYS if any(r in RELEASE_ARRAYS[k] for k in arrays)]
        release = self.load_npz(path, needed, RELEASE_FILE_ARRAYS, '.npz archive')
        self.check_grid(path, release)
        out = {}
        for key in arrays:
            if key == 'semantics':
                out[key], unexpected = release_semantics(release['voxel_label'], self.num_classes, self.free_label)
                if unexpected:
                    raise LabelFileError(f'{path}: voxel_label holds ids {unexpected}; {self.title} ids are '
                                         f'0..{self.num_classes - 1} and {RELEASE_FREE_ID} (free); {self.label_fix}')
            else:
                mask = np.ones(self.grid_shape, dtype=bool)
                for name in RELEASE_ARRAYS[key]:
                    mask &= release[name].astype(bool)
                out[key] = mask
        return out


# The 15 classes in release id order; free = 15 in our grids (23 in the files).
OCC3D_WAYMO = register_benchmark(Occ3DWaymoBenchmark(
    name='occ3d-waymo',
    title='Occ3D-Waymo',
    class_names=('GENERALOBJECT', 'VEHICLE', 'PEDESTRIAN', 'SIGN', 'CYCLIST', 'TRAFFIC_LIGHT', 'POLE',
                 'CONSTRUCTION_CONE', 'BICYCLE', 'MOTORCYCLE', 'BUILDING', 'VEGETATION', 'TREE_TRUNK', 'ROAD',
                 'WALKABLE'),
    free_label=15,
    grid_shape=(200, 200, 16),
    point_cloud_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
    voxel_size=(0.4, 0.4, 0.4),
    # Waymo's CameraName order (the KITTI-format export's image_0 .. image_4); the decoder's view choice prefers
    # the earlier ones
    camera_names=('FRONT', 'FRONT_LEFT', 'FRONT_RIGHT', 'SIDE_LEFT', 'SIDE_RIGHT'),
    # split = training / validation (the image index's prefix 0 / 1); the dataset derives the three fields
    label_file='{split}/{scene_idx:03d}/{frame_idx:03d}_04.npz',
    label_path_key='occ_path',
    label_arrays=(('semantics', 'uint8'), ('mask_lidar', 'bool'), ('mask_camera', 'bool'), ('mask_fov', 'bool')),
    label_root_dir='occ3d_waymo',
    label_source='the Occ3D-Waymo download (voxel size 0.4 m)',
    camera_mask=True,
    ray_iou=True,
    absent_class='zero',   # the reference's IoU: a predicted class without ground truth scores 0
))
