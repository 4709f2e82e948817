"""engine/config.py: nested keys are checked against what their builders accept, by path, before anything is
built; keys nothing reads are refused; `total_epochs` overrides keep the final evaluation; a copied config's
relative `_base_` is explained; the repository's configs pass."""
import glob
import os.path as osp

import pytest

from engine.config import ConfigError, load_config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

BASE = '''
_pipeline = [
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, color_type='color'),
    dict(type='LoadOccFromFile', occ_root='gts'),
    dict(type='MultiScaleFlipAug3D', transforms=[dict(type='Collect3D', keys=['img'])]),
]
model = dict(type='OPS')
data = dict(workers_per_gpu=0,
            train=dict(type='NuScenesOccDataset', ann_file='train.pkl', pipeline=_pipeline),
            val=dict(type='NuScenesOccDataset', ann_file='val.pkl', pipeline=_pipeline, test_mode=True))
batch_size = 8
total_epochs = 12
optimizer = dict(type='AdamW', lr=2e-4, weight_decay=0.01,
                 paramwise_cfg=dict(custom_keys={'img_backbone': dict(lr_mult=0.1)}))
optimizer_config = dict(type='Fp16OptimizerHook', loss_scale=512.0, grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(policy='CosineAnnealing', warmup='linear', warmup_iters=500, warmup_ratio=1.0 / 3, min_lr_ratio=1e-3)
checkpoint_config = dict(interval=1, max_keep_ckpts=1)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook', interval=50, reset_flag=True),
                                      dict(type='TensorboardLoggerHook', interval=500)])
eval_config = dict(interval=total_epochs)
'''


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp('config_keys') / 'base.py'
    path.write_text(BASE)
    return str(path)


def test_the_base_config_passes(base):
    cfg = load_config(base)
    assert cfg.lr_config.warmup_iters == 500


@pytest.mark.parametrize('option, expected', [
    ({'lr_config.warmup_iter': 3}, 'lr_config.warmup_iter: unknown key; did you mean warmup_iters?'),
    ({'optimizer.weight_decy': 0.1}, 'optimizer.weight_decy: unknown key; did you mean weight_decay?'),
    ({'data.workers_per_gpux': 0}, 'data.workers_per_gpux: unknown key; did you mean workers_per_gpu?'),
    ({'data.persistent_workers': True}, 'data.persistent_workers: unknown key; not configurable here'),
    ({'checkpoint_config.max_keep_ckpt': 2},
     'checkpoint_config.max_keep_ckpt: unknown key; did you mean max_keep_ckpts?'),
    ({'log_config.intervall': 5}, 'log_config.intervall: unknown key; did you mean interval?'),
    ({'eval_config.intervl': 5}, 'eval_config.intervl: unknown key; did you mean interval?'),
    ({'optimizer_config.grad_clip.max_nrom': 5},
     'optimizer_config.grad_clip.max_nrom: unknown key; did you mean max_norm?'),
    ({'optimizer_config.distributed': False}, 'optimizer_config.distributed: unknown key'),
    ({'optimizer.paramwise_cfg.custom_keys.img_backbone.lr_mul': 1.0},
     'optimizer.paramwise_cfg.custom_keys.img_backbone.lr_mul: unknown key; did you mean lr_mult?'),
    ({'optimizer.type': 'AdamWW'}, "optimizer.type: 'AdamWW' is not a registered optimizer; did you mean AdamW?"),
    ({'lr_config.policy': 'Cosine'}, "lr_config.policy: unknown policy 'Cosine'"),
    ({'data.train.ann_fle': 'x.pkl'}, 'data.train.ann_fle: unknown key; did you mean ann_file?'),
    ({'data.val.type': 'NuScenesOcc'}, "data.val.type: 'NuScenesOcc' is not a registered dataset"),
])
def test_nested_typos_name_their_path(base, option, expected):
    with pytest.raises(ConfigError) as err:
        load_config(base, option)
    message = str(err.value)
    assert expected in message and message.startswith(base) and '\n' not in message, message


@pytest.mark.parametrize('option, expected', [
    ({'model.pts_bbox_head.num_qeury': 5}, 'model.pts_bbox_head.num_qeury: unknown key; did you mean num_query?'),
    ({'model.pts_bbox_head.transformer.num_layer': 2},
     'model.pts_bbox_head.transformer.num_layer: unknown key; did you mean num_layers?'),
    ({'model.img_backbone.dpeth': 18}, 'model.img_backbone.dpeth: unknown key; did you mean depth?'),
    ({'model.pts_bbox_head.loss_cls.gama': 2.0}, 'model.pts_bbox_head.loss_cls.gama: unknown key; did you mean gamma?'),
    ({'model.stop_prev_grads': 1}, 'model.stop_prev_grads: unknown key; did you mean stop_prev_grad?'),
])
def test_model_typos_name_their_path(option, expected):
    config = osp.join(ROOT, 'configs', 'ops-t_r50_704x256_8f_12e.py')
    with pytest.raises(ConfigError) as err:
        load_config(config, option)
    assert expected in str(err.value), str(err.value)


def test_typos_in_lists_of_hooks_and_pipeline_steps(tmp_path, base):
    cases = {
        "log_config = dict(interval=5, hooks=[dict(type='TextLoggerHook', reset_flg=True)])":
            'log_config.hooks[0].reset_flg: unknown key; did you mean reset_flag?',
        "data = dict(train=dict(type='NuScenesOccDataset', ann_file='a', "
        "pipeline=[dict(type='LoadMultiViewImageFromFiles', to_float23=False)]))":
            'data.train.pipeline[0].to_float23: unknown key; did you mean to_float32?',
        "data = dict(val=dict(type='NuScenesOccDataset', ann_file='a', pipeline=[dict(type='MultiScaleFlipAug3D', "
        "transforms=[dict(type='Collect3D', keys=['img'], meta_key=())])]))":
            'data.val.pipeline[0].transforms[0].meta_key: unknown key; did you mean meta_keys?',
        "data = dict(train=dict(type='NuScenesOccDataset', ann_file='a', pipeline=[dict(type='LoadImage')]))":
            "data.train.pipeline[0].type: 'LoadImage' is not a registered pipeline step",
        "custom_hooks = [dict(type='EpochSeedHook', sed=1)]": 'custom_hooks[0].sed: unknown key; did you mean seed?',
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f'case{i}.py'
        path.write_text(f'_base_ = [{base!r}]\n{text}\n'.replace('data = dict(', 'data = dict(_delete_=True, '))
        with pytest.raises(ConfigError, match=None) as err:
            load_config(str(path))
        assert expected in str(err.value), (text, str(err.value))


def test_keys_nothing_reads_are_refused(tmp_path, base):
    for key, hint in (('resume_from', '--resume-from'), ('evaluation', 'eval_config.interval'),
                      ('workflow', 'eval_config.interval'), ('fp16', 'Fp16OptimizerHook'), ('seed', '--seed')):
        path = tmp_path / f'dead_{key}.py'
        path.write_text(f'_base_ = [{base!r}]\n{key} = None\n')
        with pytest.raises(ConfigError, match=f'{key}: not read by OPS; remove it .*{hint}'):
            load_config(str(path))


def test_total_epochs_override_keeps_the_final_evaluation(base):
    assert load_config(base).eval_config.interval == 12
    assert load_config(base, {'total_epochs': 3}).eval_config.interval == 3
    assert load_config(base, {'total_epochs': 3, 'eval_config.interval': 1}).eval_config.interval == 1


def test_a_copied_config_with_a_relative_base_says_so(tmp_path):
    copied = tmp_path / 'my_ops-t.py'
    with open(osp.join(ROOT, 'configs', 'ops-t_r50_704x256_8f_12e.py')) as f:
        copied.write_text(f.read())
    with pytest.raises(ConfigError) as err:
        load_config(str(copied))
    message = str(err.value)
    assert "_base_ file './_base_/ops_r50_704x256_8f.py' not found" in message
    assert 'copied out of configs/' in message
    assert osp.join(ROOT, 'configs', '_base_', 'ops_r50_704x256_8f.py') in message
    missing = tmp_path / 'missing_base.py'
    missing.write_text("_base_ = ['./nowhere.py']\n")
    with pytest.raises(ConfigError, match="_base_ file './nowhere.py' not found"):
        load_config(str(missing))


@pytest.mark.parametrize('config', sorted(glob.glob(osp.join(ROOT, 'configs', '*.py'))), ids=osp.basename)
def test_the_repository_configs_pass_the_guard(config):
    load_config(config)
