"""Occ3D-nuScenes: the OPS/OPUS benchmark (200 x 200 x 16 voxels of 0.4 m, 17 classes + free, camera mask)."""
from core.benchmarks import Benchmark, register_benchmark

__all__ = ['OCC3D_NUSCENES']

# Occ3D-nuScenes (Tian et al., NeurIPS 2023 datasets track), as the OPS/OPUS configs use it.
OCC3D_NUSCENES = register_benchmark(Benchmark(
    name='occ3d-nuscenes',
    title='Occ3D-nuScenes',
    class_names=('others', 'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle',
                 'pedestrian', 'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat',
                 'sidewalk', 'terrain', 'manmade', 'vegetation'),
    free_label=17,
    grid_shape=(200, 200, 16),
    point_cloud_range=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
    voxel_size=(0.4, 0.4, 0.4),
    # mmdet3d's order; the decoder's view choice prefers the earlier ones
    camera_names=('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT'),
    label_file='{scene_name}/{token}/labels.npz',
    label_path_key='occ_path',
    label_arrays=(('semantics', 'uint8'), ('mask_lidar', 'bool'), ('mask_camera', 'bool')),
    label_root_dir='gts',
    label_source='the Occ3D-nuScenes download',
    camera_mask=True,
    ray_iou=True,
))
