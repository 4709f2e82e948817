# OPS-T on Occ3D-Waymo: 600 queries x 128 points, 4 sampling points per group and frame, 24 epochs (the
# OPS-T model of ops-t_r50_704x256_8f_24e.py, with the data, classes and cameras of the Occ3D-Waymo base).
_base_ = ['./_base_/ops_waymo_r50_704x320_8f.py']

num_query = 600
num_points = 4
num_refines = [1, 4, 16, 32, 64, 128]
total_epochs = 24

model = dict(
    pts_bbox_head=dict(
        num_query=num_query,
        transformer=dict(num_points=num_points, num_refines=num_refines)))

eval_config = dict(interval=total_epochs)
