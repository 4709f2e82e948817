"""engine/config.py: config files that cannot be used are refused with the key and the fix."""
import os.path as osp

import pytest

from engine.config import ConfigError, load_config


def write(path, text):
    path.write_text(text)
    return str(path)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match='not found'):
        load_config(str(tmp_path / 'missing.py'))
    base = write(tmp_path / 'base.py', 'model = dict(type="OPS")\ndata = dict()\nbatch_size = 8\n'
                 'total_epochs = 1\noptimizer = dict(type="AdamW", lr=1e-3)\noptimizer_config = dict()\n'
                 'lr_config = None\n'
                 'checkpoint_config = dict()\nlog_config = dict()\n')
    assert load_config(base).batch_size == 8
    child = write(tmp_path / 'child.py', '_base_ = ["./base.py"]\ntotl_epochs = 3\n')
    with pytest.raises(ConfigError, match="unknown top-level key.*totl_epochs"):
        load_config(child)
    broken = write(tmp_path / 'broken.py', 'model = dict(type="OPS"\n')
    with pytest.raises(ConfigError, match='cannot read config'):
        load_config(broken)
    no_type = write(tmp_path / 'no_type.py', '_base_ = ["./base.py"]\nmodel = dict(_delete_=True, x=1)\n')
    with pytest.raises(ConfigError, match='no "type"'):
        load_config(no_type)
    with pytest.raises(ConfigError, match='unknown top-level key'):
        load_config(base, cfg_options={'totl_epochs': 3})
    assert load_config(base, cfg_options={'total_epochs': 3}).total_epochs == 3


def test_a_spurious_system_error_of_the_parser_is_retried(tmp_path, monkeypatch):
    """An interpreter fault of ast.parse (seen once with CPython 3.11.7) does not fail a valid config."""
    import ast

    import engine.config as config
    base = tmp_path / 'base.py'
    base.write_text('a = 1\n')
    child = tmp_path / 'child.py'
    child.write_text("_base_ = ['./base.py']\nb = 2\n")
    real, calls = ast.parse, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise SystemError('AST constructor recursion depth mismatch (before=141, after=27)')
        return real(*args, **kwargs)
    monkeypatch.setattr(config.ast, 'parse', flaky)
    assert config._literal_bases(str(child)) == ['./base.py']
    assert len(calls) == 2


# ------------------------------------------------------------------ the benchmark
CONFIG = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs',
                  'ops-t_r50_704x256_8f_12e.py')


def child(tmp_path, text, name='child.py'):
    return write(tmp_path / name, f'_base_ = [{CONFIG!r}]\n' + text)


def test_the_benchmark_key_is_known_and_a_config_without_it_means_occ3d_nuscenes(tmp_path):
    from engine.config import KNOWN_TOP_LEVEL_KEYS, config_benchmark
    assert 'benchmark' in KNOWN_TOP_LEVEL_KEYS
    assert load_config(CONFIG).benchmark == 'occ3d-nuscenes'
    no_key = write(tmp_path / 'no_key.py', 'model = dict(type="OPS")\n')
    assert config_benchmark(load_config(no_key, required=())).name == 'occ3d-nuscenes'
    from core.benchmarks import benchmark_names
    with pytest.raises(ConfigError) as err:
        load_config(child(tmp_path, "benchmark = 'occ3d-kitti'\n"))
    assert str(err.value) == (f"{tmp_path / 'child.py'}: benchmark: unknown benchmark 'occ3d-kitti'; "
                              f"known: {', '.join(benchmark_names())}")


@pytest.mark.parametrize('text, key, value, expected', [
    ('point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]\n', 'point_cloud_range',
     '[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]', '[-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]'),
    ('voxel_size = [0.2, 0.2, 0.2]\n', 'voxel_size', '[0.2, 0.2, 0.2]', '[0.4, 0.4, 0.4]'),
    ("occ_names = ['empty', 'barrier']\n", 'occ_names', "['empty', 'barrier']", "['others', 'barrier', 'bicycle'"),
    ('model = dict(pts_bbox_head=dict(pc_range=[-50.0, -50.0, -5.0, 50.0, 50.0, 3.0]))\n',
     'model.pts_bbox_head.pc_range', '[-50.0, -50.0, -5.0, 50.0, 50.0, 3.0]', '[-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]'),
    ('model = dict(pts_bbox_head=dict(num_classes=16))\n', 'model.pts_bbox_head.num_classes', '16', '17'),
])
def test_a_config_mixing_benchmarks_is_refused_naming_the_key_and_both_values(tmp_path, text, key, value, expected):
    with pytest.raises(ConfigError) as err:
        load_config(child(tmp_path, text))
    message = str(err.value)
    assert '\n' not in message
    assert message.startswith(f"{tmp_path / 'child.py'}: {key} = {value} disagrees with benchmark 'occ3d-nuscenes', "
                              f"whose value is {expected}")
    assert 'mixes benchmarks' in message


def test_a_value_computed_in_the_config_agrees_up_to_float_rounding(tmp_path):
    # 0.7 - 0.3 and 0.6 * 9 land one double below the literals 0.4 and 5.4 (a relative difference of ~1e-16); the
    # check accepts 1e-9 relative, far below any real difference of grids (0.2 vs 0.4 m)
    assert 0.7 - 0.3 != 0.4 and 0.6 * 9 != 5.4
    cfg = load_config(child(tmp_path, 'voxel_size = [0.7 - 0.3, 0.4, 0.4]\n'
                                      'point_cloud_range = [-40.0, -40.0, -1.0, 40.0, 40.0, 0.6 * 9]\n'))
    assert cfg.voxel_size[0] == 0.7 - 0.3 and cfg.point_cloud_range[5] == 0.6 * 9


def test_datasets_and_label_loaders_must_name_the_configs_benchmark(tmp_path, monkeypatch):
    from toy_benchmark import register_toy
    register_toy(monkeypatch)
    with pytest.raises(ConfigError, match=r"data\.val\.benchmark: 'toy-street' differs from the config's benchmark "
                                          r"'occ3d-nuscenes': the config mixes benchmarks"):
        load_config(child(tmp_path, "data = dict(val=dict(benchmark='toy-street'))\n"))
    with pytest.raises(ConfigError, match=r"data\.train\.pipeline\[2\]\.benchmark: 'toy-street' differs"):
        load_config(child(tmp_path, "data = dict(train=dict(pipeline=[dict(type='LoadMultiViewImageFromFiles'), "
                                    "dict(type='LoadMultiViewImageFromMultiSweeps'), "
                                    "dict(type='LoadOccFromFile', benchmark='toy-street')]))\n"))
    # selecting the toy benchmark with Occ3D's values: the first restated value names the mix
    with pytest.raises(ConfigError, match=r"occ_names = \['others', .*\] disagrees with benchmark 'toy-street', whose "
                                          r"value is \['car', 'road', 'tree'\]"):
        load_config(child(tmp_path, "benchmark = 'toy-street'\n"))
