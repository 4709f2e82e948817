# OPS-S: 1200 queries x 64 points, 2 sampling points per group and frame, 100 epochs
# (same model as the 12-epoch config).
_base_ = ['./ops-s_r50_704x256_8f_12e.py']

total_epochs = 100
eval_config = dict(interval=total_epochs)
