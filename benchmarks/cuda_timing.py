"""GPU time of a callable from CUDA events, shared by the micro-benchmarks."""
import numpy as np
import torch

__all__ = ['event_times_ms', 'median_min_max']


def event_times_ms(fn, warmup=3, reps=10):
    """GPU milliseconds of each of `reps` calls of fn() (CUDA events around each call), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def median_min_max(fn, warmup=3, reps=10):
    times = event_times_ms(fn, warmup, reps)
    return float(np.median(times)), float(np.min(times)), float(np.max(times))
