# OPUS-V2-M on Occ3D-Waymo: 2400 queries x 32 points, 5 decoder layers, 2 sampling points per group and frame,
# 50 epochs (the model of opusv2-m_r50_704x256_8f_50e.py, with the data, classes and cameras of the Occ3D-Waymo base).
_base_ = ['./_base_/opusv2_waymo_r50_704x320_8f.py']

num_query = 2400
num_points = 2
num_refines = [2, 4, 8, 16, 32]
total_epochs = 50

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
