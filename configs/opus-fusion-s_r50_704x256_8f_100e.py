# OPUS-Fusion-S: 1200 queries x 64 points, 2 sampling points per group and frame (and in the LiDAR map),
# 100 epochs (the authors' opusv1-fusion-s_r50_704x256_8f_nusc-occ3d_100e.py).
_base_ = ['./_base_/opus-fusion_r50_704x256_8f.py']

num_query = 1200
num_points = 2
num_refines = [1, 4, 8, 16, 32, 64]
total_epochs = 100

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
