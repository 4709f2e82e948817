"""Checks of the throughput fields (engine/throughput.py) in train.py's JSON log records, and a stand-in for
the `time` module of mmcv's EpochBasedRunner without its pauses."""
import types

# mmcv's EpochBasedRunner sleeps 2 s per epoch and 1 s at the end of a run (a guard for data-loader workers);
# `monkeypatch.setattr(mmcv.runner.epoch_based_runner, 'time', NO_PAUSE)` drops the pauses in tests whose
# loaders have no workers (the module uses `time` for nothing else)
NO_PAUSE = types.SimpleNamespace(sleep=lambda seconds: None)

# mmcv's TextLoggerHook writes every float of the JSON log rounded to 5 decimals
JSON_ROUNDING = 0.5e-5
# the unrounded samples_per_s is samples_per_iter * n / sum(t) against time = sum(t) / n: equal up to a few
# float64 roundings (1e-16 relative each); 1e-12 relative covers them
FLOAT64_SLACK = 1e-12


def assert_samples_per_second(records, samples_per_iter):
    """Every train record's samples_per_s is `samples_per_iter` / its own `time`, and (CPU runs) no memory field.

    The rounded time lies within JSON_ROUNDING of the unrounded one, so the unrounded rate lies between
    samples_per_iter / (time +- that), and the logged rate within JSON_ROUNDING of it."""
    assert records, 'no training record in the JSON log'
    for record in records:
        seconds, rate = record['time'], record['samples_per_s']
        assert seconds > 100 * JSON_ROUNDING, record   # a real iteration; the bounds below stay finite
        low = samples_per_iter / (seconds + JSON_ROUNDING) * (1 - FLOAT64_SLACK) - JSON_ROUNDING
        high = samples_per_iter / (seconds - JSON_ROUNDING) * (1 + FLOAT64_SLACK) + JSON_ROUNDING
        assert low <= rate <= high, (f'epoch {record["epoch"]} iter {record["iter"]}: samples_per_s {rate} is not '
                                     f'{samples_per_iter} / time {seconds} = {samples_per_iter / seconds:.6f}')
        assert not any(key.startswith('mem_') for key in record), 'GPU memory fields in a CPU run'
