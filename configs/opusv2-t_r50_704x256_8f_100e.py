# OPUS-V2-T: 600 queries x 128 points, 100 epochs (same model as the 50-epoch config).
# The release config of this schedule says batch_size = 1 (a slip: 8 GPUs would get 0 samples each);
# the later public copy and every other V2 config use 8, which the V2 base keeps.

_base_ = ['./opusv2-t_r50_704x256_8f_50e.py']

total_epochs = 100
eval_config = dict(interval=total_epochs)
