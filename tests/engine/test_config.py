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
