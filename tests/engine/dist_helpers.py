"""Helpers of the multi-process tests (tests/engine/test_dist_*.py): the tiny config, a hook that ends a
run early, free ports and log readers.

The training subprocesses import this module through the config's `custom_imports` (mmcv imports
them when it reads the config), with this folder on PYTHONPATH.
"""
import json
import os
import os.path as osp
import socket
import sys

from mmcv.runner import HOOKS, Hook

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
for path in (ROOT, osp.dirname(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import models  # noqa: E402,F401  (registers OPSHead)


@HOOKS.register_module()
class StopAfterEpochHook(Hook):
    """Ends the run cleanly after `epochs` epochs (after their checkpoint), as if the job had been stopped
    there, without changing the schedule the run was configured with."""

    def __init__(self, epochs=1):
        self.epochs = epochs

    def after_train_epoch(self, runner):
        if runner.epoch + 1 >= self.epochs:
            runner._max_epochs = runner.epoch + 1


@HOOKS.register_module()
class SaveInitialWeightsHook(Hook):
    """Writes the model's weights before the first step to `work_dir/initial_weights.pth` (rank 0): the
    starting point from which a test measures what training moved."""

    def before_run(self, runner):
        if runner.rank == 0:
            import torch
            model = getattr(runner.model, 'module', runner.model)
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                       osp.join(runner.work_dir, 'initial_weights.pth'))


# The tiny OPS of tests/tiny_ops.py with a 4x narrower ResNet-18 (0.7 M parameters), 1 frame, no dropout and
# total batch 4.
TRAIN_CONFIG = '''
model['img_backbone']['base_channels'] = 16
model['img_neck']['in_channels'] = [16, 32, 64, 128]
model['pts_bbox_head']['transformer'].update(num_frames=1, attn_drop=0.0, ffn_drop=0.0)
_train_pipeline[1]['sweeps_num'] = 0
_test_pipeline[1]['sweeps_num'] = 0
custom_imports = dict(imports=['dist_helpers'], allow_failed_imports=False)
batch_size = 4
total_epochs = 2
optimizer_config = dict(type='Fp16OptimizerHook', loss_scale=512.0, grad_clip=dict(max_norm=35, norm_type=2))
# by epoch, no warmup: epoch 1 at 2e-4, epoch 2 at (2e-4 + 2e-7) / 2 (the lr is constant within an epoch, so
# gradient accumulation, which steps at the last micro-iteration, sees the same lr as one big batch)
lr_config = dict(policy='CosineAnnealing', by_epoch=True, min_lr_ratio=1e-3)
checkpoint_config = dict(interval=1, max_keep_ckpts=2)
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook', interval=1, reset_flag=True)])
eval_config = dict(interval=total_epochs)
load_from = None
'''


def write_config(path, synthetic_infos, extra=''):
    """The tiny training config at `path` (str), on the synthetic world of conftest.py."""
    from tiny_ops import TINY_MODEL_CONFIG, TINY_PIPELINES, TINY_TRAIN_DATA_AND_ADAMW, write_tiny_config
    template = TINY_MODEL_CONFIG + TINY_PIPELINES + TINY_TRAIN_DATA_AND_ADAMW + TRAIN_CONFIG
    return write_tiny_config(path, template + extra.replace('{', '{{').replace('}', '}}'), synthetic_infos)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def subprocess_env(**extra):
    """Environment of a training subprocess: this folder importable (custom_imports), one thread."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [HERE, ROOT] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_records(work_dir):
    """The per-iteration records (mode 'train') of every JSON log in `work_dir`, in file order."""
    records = []
    for name in sorted(os.listdir(work_dir)):
        if name.endswith('.log.json'):
            with open(osp.join(work_dir, name)) as f:
                records += [r for r in map(json.loads, f) if r.get('mode') == 'train']
    return records


def checkpoint_lr(path):
    """The lr of the config's base groups (the backbone runs at x0.1) when the checkpoint was written: the
    schedule's value of that epoch. (train.py's text log exists once per process, the JSON log rounds to 5
    decimals, too coarse for 1e-4.)"""
    import torch
    state = torch.load(path, map_location='cpu', weights_only=False)
    return max(group['lr'] for group in state['optimizer']['param_groups'])
