# OPUS-V2-S on Occ3D-Waymo: 1200 queries x 64 points, 5 decoder layers, 2 sampling points per group and frame,
# 50 epochs (the model of opusv2-s_r50_704x256_8f_50e.py, with the data, classes and cameras of the Occ3D-Waymo base).
_base_ = ['./_base_/opusv2_waymo_r50_704x320_8f.py']

num_query = 1200
num_points = 2
num_refines = [4, 8, 16, 32, 64]
total_epochs = 50

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
