# OPS-S on nuScenes-Occupancy: 1200 queries x 64 points, 2 sampling points per group and frame,
# 24 epochs (V1's middle schedule; the train split is nuScenes train, the same 28,130 key frames as Occ3D's).
_base_ = ['./_base_/ops_nusc-occupancy.py']

num_query = 1200
num_points = 2
num_refines = [1, 4, 8, 16, 32, 64]
total_epochs = 24

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
