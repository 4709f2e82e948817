# OPS-T: 600 queries x 128 points, 4 sampling points per group and frame, 100 epochs
# (same model as the 12-epoch config).
_base_ = ['./ops-t_r50_704x256_8f_12e.py']

total_epochs = 100
eval_config = dict(interval=total_epochs)
