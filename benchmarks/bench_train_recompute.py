"""Training memory and step time of the faithful graphed decoder with its large saved tensors recomputed in the
backward (accel/recompute.py, what the presets run: the self-attention's logit bias and the adaptive mixing's
generated weights) against keeping them for the backward, in one process:

    python benchmarks/bench_train_recompute.py [--config configs/ops-l_r50_704x256_8f_12e.py] [--rounds 3]

Each variant is a `bench_e2e.TrainBench` in the faithful mode (train.py's policy: CUDA graphs of the decoder, no
checkpointing), built one after the other: the peak allocated and reserved GPU memory over its set-up and warm-up
steps (the graph capture included) is its memory. The timed steps then alternate between the variants, round by
round (median and spread of the round medians). A "kept" tensor is one whose `recompute_when_saved` (in
accel/fused_attention.py for the bias, accel/modules.py for the generated weights) is replaced by a context that
does nothing, so autograd keeps it as it would without the hooks. Needs a CUDA GPU.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2 ** 30


def keep_saved(tensor, recompute):
    return contextlib.nullcontext()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='configs/ops-l_r50_704x256_8f_12e.py')
    parser.add_argument('--warmup', type=int, default=3, help='steps before timing (the first captures the graphs)')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per variant and round')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('bench_train_recompute.py needs a CUDA GPU')

    import bench_e2e

    import accel.fused_attention as fused_attention
    import accel.modules as fused_modules
    import models  # noqa: F401
    from engine.config import load_config

    torch.backends.cudnn.benchmark = True
    device = torch.device('cuda')
    cfg = load_config(args.config)
    base = bench_e2e.build_model(cfg, device)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    del base
    recompute = fused_attention.recompute_when_saved
    # which tensors each variant recomputes: (the attention bias, the mixing's generated weights)
    variants = {'both recomputed (the presets)': (True, True), 'bias recomputed, weights kept': (True, False),
                'both kept': (False, False)}
    benches, memory = {}, {}
    for name, (bias, weights) in variants.items():
        fused_attention.recompute_when_saved = recompute if bias else keep_saved
        fused_modules.recompute_when_saved = recompute if weights else keep_saved
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        reserved, allocated = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
        benches[name] = bench_e2e.TrainBench(cfg, 'faithful', state, 1, device)
        for _ in range(args.warmup):
            benches[name].step()
        memory[name] = ((torch.cuda.max_memory_allocated() - allocated) / GIB,
                        (torch.cuda.max_memory_reserved() - reserved) / GIB)
    fused_attention.recompute_when_saved = fused_modules.recompute_when_saved = recompute
    # the graphs captured above keep the kernels of their variant; the hooks only act at capture time
    rounds = {name: [] for name in benches}
    for _ in range(args.rounds):
        for name, bench in benches.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                bench.step()
            torch.cuda.synchronize()
            rounds[name].append((time.perf_counter() - start) / args.steps * 1000)
    print(f'# {os.path.basename(args.config)}, faithful graphed training step, {torch.cuda.get_device_name()}\n')
    print('| saved tensors | peak allocated GiB | peak reserved GiB | median ms (min-max of the round medians) |')
    print('|---|---|---|---|')
    for name in benches:
        times = rounds[name]
        print(f'| {name} | {memory[name][0]:.2f} | {memory[name][1]:.2f} | {np.median(times):.1f} '
              f'({min(times):.1f}-{max(times):.1f}) |')


if __name__ == '__main__':
    main()
