"""timing.py on the synthetic world (CPU): the protocol's printout, warm-up excluded, argument checks."""
import pytest

import timing


def test_timing_prints_the_protocol_lines(tiny_val_setup, capsys):
    work, config, checkpoint, _ = tiny_val_setup
    fps = timing.main(['--config', config, '--weights', checkpoint, '--device', 'cpu', '--num-warmup', '1',
                       '--samples', '3', '--log-interval', '1'])
    out = capsys.readouterr().out
    assert fps > 0
    assert f'config:    {config}' in out and 'device:    CPU' in out
    assert 'execution: faithful, eager, batch 1, online' in out
    assert 'Done sample [2  / 3], fps:' in out and 'Done sample [3  / 3], fps:' in out
    assert 'Done sample [1 ' not in out  # warm-up samples are not reported
    assert 'Overall fps' in out
    timing.main(['--config', config, '--device', 'cpu', '--num-warmup', '1', '--samples', '50', '--fast'])
    out = capsys.readouterr().out
    assert 'random initialisation' in out and 'the val set has only 3' in out
    assert 'execution: fast, eager' in out
    with pytest.raises(SystemExit):
        timing.parse_args(['--config', config, '--samples', '5', '--num-warmup', '5'])
