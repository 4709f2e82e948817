# OPUS-V2-L on nuScenes-Occupancy: 4800 queries x 16 points, 2 sampling points per group and frame,
# 50 epochs (the authors' configs/opusv2_nusc-occupancy/opusv2-l_r50_704x256_8f_nusc-occupancy_50e.py).
_base_ = ['./_base_/opusv2_nusc-occupancy.py']

num_query = 4800
num_points = 2
num_refines = [1, 2, 4, 8, 16]
total_epochs = 50

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
