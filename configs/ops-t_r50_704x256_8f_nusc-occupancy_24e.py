# OPS-T on nuScenes-Occupancy: 600 queries x 128 points, 4 sampling points per group and frame,
# 24 epochs (V1's middle schedule; the train split is nuScenes train, the same 28,130 key frames as Occ3D's).
_base_ = ['./_base_/ops_nusc-occupancy.py']

num_query = 600
num_points = 4
num_refines = [1, 4, 16, 32, 64, 128]
total_epochs = 24

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
