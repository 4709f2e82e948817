# OPUS-V2-M: 2400 queries x 32 points, 100 epochs (same model as the 50-epoch config).
_base_ = ['./opusv2-m_r50_704x256_8f_50e.py']

total_epochs = 100
eval_config = dict(interval=total_epochs)
