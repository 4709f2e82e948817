"""Is a CUDA graph of the faithful (checkpointed) training decoder the same function as the eager decoder?

    python benchmarks/diagnose_training_graph.py [--config configs/ops-t_r50_704x256_8f_12e.py] [--steps 3]

The fast mode's decoder graph (no gradient checkpointing) is checked by tests/engine/test_train_step.py
and used by `train.py --fast`. The faithful configs checkpoint the decoder's sampling, mixing and
self-attention. A graph of that decoder took 172.6 / 195.8 ms per OPS-T step on the H200 against
245.7 / 269.1 ms eager. Its GPU check parted from eager by 1.1e-4 at step 1 and 1.4e-3 at step 2
(docs/performance.md), so `OPS.graphs_train_decoder` refuses it. This script tells noise from error:

1. Dropout inside a checkpointed region of a graphed callable: the recomputation that the backward
   graph replays must draw the forward's mask. For y = dropout(x) * w, checkpointed, graphed, the
   gradient of sum(y) with respect to w times w equals y element by element exactly when it does.
   Checked over 3 replays with new inputs.
2. The faithful model of `--config` (its checkpointing, dropout off, fp32 backbone) for `--steps`
   steps on the benchmark's rig (bench_e2e.py). Three models start from the same weights: graph,
   eager A, eager B. Each takes a plain SGD step on its own gradients. Per step the script prints the
   largest relative gradient difference over the parameters, graph vs A and B vs A. B vs A is the
   noise floor: atomics in the sampling backward and in cuDNN.

On the CPU (`--cpu-smoke`, a check of the script) there are no graphs: only B vs A runs.
"""
import argparse
import copy
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_e2e import NUM_VIEWS, build_model, lidar2img_rig, make_metas, random_occupancy  # noqa: E402


class _CheckpointedDropout(torch.nn.Module):
    def __init__(self, size, device):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((size,), 1.5, device=device))

    def forward(self, x):
        return checkpoint(lambda t: F.dropout(t, 0.5, training=True) * self.w, x, use_reentrant=False)


def dropout_recomputation(device, size=1 << 16, replays=3):
    """Per replay, the fraction of elements where the recomputed dropout mask differs from the forward's."""
    module = _CheckpointedDropout(size, device)
    sample = torch.randn(size, device=device, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(module, (sample,))
    g = torch.Generator(device=device).manual_seed(0)
    fractions = []
    for _ in range(replays):
        x = torch.randn(size, device=device, generator=g).requires_grad_(True)
        module.w.grad = None
        y = graphed(x)
        y.sum().backward()
        # y = mask * x * 2 * w (forward mask); dy/dw = mask' * x * 2 (the recomputation's mask)
        fractions.append(float(((module.w.grad * module.w).detach() != y.detach()).float().mean()))
    return fractions


def gradient_drift(cfg, steps, device):
    from engine.train_step import parse_losses_lazy
    from models.cuda_graph import GraphedTrainingFunction, without_dropout
    base = build_model(cfg, device)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    del base
    models = {name: without_dropout(build_model(cfg, device, state=state)).train()
              for name in (['graph'] if device.type == 'cuda' else []) + ['eager A', 'eager B']}
    graph = (GraphedTrainingFunction(models['graph'].pts_bbox_head, models['graph']._train_decoder_fn)
             if 'graph' in models else None)
    T = cfg.num_frames
    lidar2img, ego2lidar = lidar2img_rig(T)
    sem, mask = (t.to(device) for t in random_occupancy(91198, torch.Generator().manual_seed(2)))
    lines = ['| step | graph vs eager A: largest relative gradient difference (parameter) | eager B vs eager A |',
             '|---|---|---|']
    for step in range(steps):
        img = torch.randint(0, 256, (1, T * NUM_VIEWS, 3, 256, 704), generator=torch.Generator().manual_seed(step),
                            dtype=torch.uint8).to(device)
        grads = {}
        for name, model in models.items():
            np.random.seed(step)                               # photometric distortion
            metas = [make_metas(list(range(T)), lidar2img, ego2lidar)]
            feats = model.extract_feat(img, copy.deepcopy(metas))
            head = model.pts_bbox_head
            with torch.autocast(device.type, enabled=False):
                if name == 'graph':
                    occ2img, (h, w) = head.transformer.image_geometry(metas, device)
                    outs = graph(*feats, occ2img, image_h=int(h), image_w=int(w), fast=False)
                else:
                    outs = head(feats, metas)
                loss, _ = parse_losses_lazy(head.loss(sem, mask, outs))
            model.zero_grad(set_to_none=True)
            loss.backward()
            grads[name] = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-1e-4)

        def worst(other):
            if other not in grads:
                return '-'
            errs = {n: float((grads[other][n] - g).norm() / g.norm().clamp(min=1e-12))
                    for n, g in grads['eager A'].items()}
            name = max(errs, key=errs.get)
            return f'{errs[name]:.2e} ({name})'
        lines.append(f'| {step} | {worst("graph")} | {worst("eager B")} |')
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--cpu-smoke', action='store_true', help='run on the CPU (no graphs: checks the script)')
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit('diagnose_training_graph.py needs a CUDA GPU (--cpu-smoke runs its eager part on the CPU)')
    from engine.config import load_config
    import models  # noqa: F401
    device = torch.device('cpu' if args.cpu_smoke else 'cuda')
    lines = [f'# The faithful training decoder under a CUDA graph ({os.path.basename(args.config)}, {device})', '']
    if device.type == 'cuda':
        try:
            result = ', '.join(f'{f:.4f}' for f in dropout_recomputation(device))
        except RuntimeError as err:          # a capture that refuses checkpointing says so here
            result = f'the capture failed: {err}'
        lines += ['dropout in a checkpointed region of a graphed callable, fraction of elements whose recomputed '
                  f'mask differs from the forward\'s, per replay: {result}', '']
    lines += gradient_drift(load_config(args.config), args.steps, device)
    print('\n'.join(lines), flush=True)


if __name__ == '__main__':
    main()
