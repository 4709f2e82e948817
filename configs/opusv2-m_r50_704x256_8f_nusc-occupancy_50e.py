# OPUS-V2-M on nuScenes-Occupancy: 2400 queries x 32 points, 2 sampling points per group and frame,
# 50 epochs (the authors' configs/opusv2_nusc-occupancy/opusv2-m_r50_704x256_8f_nusc-occupancy_50e.py).
_base_ = ['./_base_/opusv2_nusc-occupancy.py']

num_query = 2400
num_points = 2
num_refines = [2, 4, 8, 16, 32]
total_epochs = 50

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
