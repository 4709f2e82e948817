"""Where the time of one CPU training step goes, for any config (the demo's by default).

    python benchmarks/profile_cpu_step.py [--config configs/ops-demo_synthetic.py] [--steps 3]

Builds the detector and the config's train dataset, then times `steps` steps on the first sample:
forward + loss, backward and the optimiser step, with the time spent inside the backbone + FPN,
the head's forward, the head's loss and the CPU KD-tree matching (part of the loss). The first
step includes warm-up; read the last ones.
"""
import argparse
import functools
import logging
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', default='configs/ops-demo_synthetic.py')
    parser.add_argument('--steps', type=int, default=3)
    args = parser.parse_args()
    os.chdir(ROOT)  # the config's data paths are relative to the repository
    from mmcv.parallel import collate
    from mmdet.datasets import build_dataset
    from mmdet.models import build_detector

    import loaders  # noqa: F401  (registers the dataset and pipelines)
    import models.knn as knn
    from engine.config import load_config
    from engine.parallel import OPSDataParallel

    logging.disable(logging.INFO)  # init_weights logs every parameter
    cfg = load_config(args.config)
    batch = collate([build_dataset(cfg.data.train)[0]], samples_per_gpu=1)
    model = build_detector(cfg.model)
    model.init_weights()
    model.train()

    spent = {}

    def timed(owner, name, key):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - start
        setattr(owner, name, wrapper)

    timed(model, 'extract_feat', 'backbone+FPN')
    timed(model.pts_bbox_head, 'forward', 'head forward')
    timed(model.pts_bbox_head, 'loss', 'head loss')
    timed(knn, '_kdtree_nn', 'KD-tree matching')
    wrapped = OPSDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    print(f'{args.config}, {torch.get_num_threads()} threads; seconds per step')
    for step in range(args.steps):
        spent.clear()
        t0 = time.perf_counter()
        losses = wrapped.train_step(batch, optimizer)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        losses['loss'].backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        parts = ', '.join(f'{k} {v:.3f}' for k, v in spent.items())
        print(f'step {step}: total {t3 - t0:.3f} = forward+loss {t1 - t0:.3f} + backward {t2 - t1:.3f} + '
              f'optimiser {t3 - t2:.3f}  (inside forward+loss: {parts})')


if __name__ == '__main__':
    main()
