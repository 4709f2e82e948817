# OPUS-V2-T with the density-normalised Chamfer point loss ("DCD"), 50 epochs: the point loss divides
# each nearest-neighbour pair by how many points share its nearest neighbour; loss_pts weight 0.25.
_base_ = ['./opusv2-t_r50_704x256_8f_50e.py']

model = dict(
    pts_bbox_head=dict(
        type='OPUSV2DCDHead',
        loss_pts=dict(loss_weight=0.25)))
