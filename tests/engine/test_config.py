"""engine/config.py: config files that cannot be used are refused with the key and the fix."""
import pytest

from engine.config import ConfigError, load_config


def write(path, text):
    path.write_text(text)
    return str(path)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match='not found'):
        load_config(str(tmp_path / 'missing.py'))
    base = write(tmp_path / 'base.py', 'model = dict(type="OPS")\ndata = dict()\nbatch_size = 8\n'
                 'total_epochs = 1\noptimizer = dict(type="AdamW", lr=1e-3)\noptimizer_config = dict()\nlr_config = None\n'
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
