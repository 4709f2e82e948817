"""Operations dispatched by one online test step, by name: a launch-bound step's cost on the host.

    python benchmarks/count_ops.py --config configs/opusv2-t_r50_704x256_8f_50e.py [--mode faithful] [--device cpu]

Runs bench_e2e.py's online stream (the same rig, random weights) eagerly, fills the 7 history frames, then counts
every ATen operation of one more sample through a TorchDispatchMode: views included, so the count bounds the
kernels launched from above. On the CPU (the default) it needs no GPU; the fused kernels and the graphs are CUDA's,
so a CPU count is the models/ code's.
"""
import argparse
import collections
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_e2e import INFER_MODES, InferenceStream, build_model  # noqa: E402


class OperationCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched inside the block, by name (`counts`)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--mode', default='faithful', choices=('faithful', 'fast', 'reference'))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--top', type=int, default=20, help='how many operation names to list')
    args = parser.parse_args()
    import models  # noqa: F401
    from engine.config import load_config
    frames = 8
    model = build_model(load_config(args.config), torch.device(args.device),
                        dict(INFER_MODES[args.mode], test_cuda_graph=False))
    stream = InferenceStream(model, frames)
    for _ in range(frames):                          # the history frames, then the counted sample
        stream.sample()
    with OperationCounter() as counter:
        stream.sample()
    print(f'{args.config}, mode {args.mode} (eager), {args.device}: {sum(counter.counts.values())} operations '
          f'dispatched by one online test step')
    for name, count in counter.counts.most_common(args.top):
        print(f'{count:6d}  {name}')


if __name__ == '__main__':
    main()
