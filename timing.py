"""Inference speed (FPS) of OPS as the official protocol measures it (spec 8.4).

  python timing.py --config configs/ops-t_r50_704x256_8f_24e.py --weights checkpoints/ops-t.pth

One process, batch 1, fp32, the val set in order with the online feature cache (the backbone runs on
the 6 current images; history features come from the cache). Timed per sample: moving the batch to
the device plus the model's forward with post-processing (including the copy of the result to the
CPU), between two device synchronisations; data loading is outside. The first `--num-warmup`
samples are not counted.
"""
import argparse
import os
import os.path as osp
import platform
import time

import torch


def parse_args(argv=None):
    from mmcv import DictAction
    parser = argparse.ArgumentParser(description='Measure OPS inference FPS (batch 1, online mode, fp32)')
    parser.add_argument('--config', required=True)
    parser.add_argument('--weights', help='checkpoint (optional: random init otherwise; see the note printed)')
    parser.add_argument('--num-warmup', '--num_warmup', type=int, default=10, help='samples not timed')
    parser.add_argument('--samples', type=int, default=500, help='samples to run, warm-up included')
    parser.add_argument('--log-interval', '--log_interval', type=int, default=50)
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    parser.add_argument('--workers', type=int, default=None, help='data-loading workers (default: config)')
    parser.add_argument('--cfg-options', '--override', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    if args.num_warmup < 0 or args.samples <= args.num_warmup:
        parser.error(f'--samples ({args.samples}) must exceed --num-warmup ({args.num_warmup}), which must be >= 0')
    if args.log_interval <= 0:
        parser.error('--log-interval must be positive')
    if args.weights and not osp.isfile(args.weights):
        parser.error(f'--weights: checkpoint not found: {args.weights}')
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        parser.error('timing.py measures one process (online mode); run it with python, not torchrun')
    return args


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return f'CPU {line.split(":", 1)[1].strip()} ({torch.get_num_threads()} threads)'
    except OSError:
        pass
    return f'CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)'


def main(argv=None):
    args = parse_args(argv)
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda was asked for but no GPU is visible')
    device = torch.device('cuda', 0) if args.device == 'cuda' else torch.device('cpu')

    from engine.config import load_config
    cfg = load_config(args.config, args.cfg_options, required=('model', 'data'))
    import loaders  # noqa: F401  (registers the dataset and pipelines)
    import models  # noqa: F401  (registers the detector)
    from engine.parallel import unpack_batch
    from mmdet.apis import set_random_seed
    from mmdet.datasets import build_dataloader, build_dataset
    from mmdet.models import build_detector
    from models.weights import load_checkpoint_strict
    set_random_seed(0, deterministic=True)
    torch.backends.cudnn.benchmark = True

    dataset = build_dataset(cfg.data.val)
    workers = cfg.data.get('workers_per_gpu', 4) if args.workers is None else args.workers
    data_loader = build_dataloader(dataset, samples_per_gpu=1, workers_per_gpu=workers, dist=False, shuffle=False)
    model = build_detector(cfg.model)
    if args.weights:
        load_checkpoint_strict(model, args.weights)
        weights_note = args.weights
    else:
        model.init_weights()
        weights_note = ('none: random initialisation. Speed is the same for the backbone and decoder, but '
                        'fewer points pass the score threshold, so post-processing may be faster than with '
                        'trained weights')
    model.to(device).eval()
    model.fp16_enabled = False  # the protocol times fp32
    if getattr(model, 'online', None) is False:
        raise SystemExit('the config forces offline mode (model.online=False); FPS is defined for online mode')

    samples = min(args.samples, len(dataset))
    if samples <= args.num_warmup:
        raise SystemExit(f'the val set has {len(dataset)} samples, not more than --num-warmup {args.num_warmup}')
    print(f'config:    {args.config}')
    print(f'weights:   {weights_note}')
    print(f'device:    {device_name(device)}')
    print(f'precision: fp32, batch 1, online mode (feature cache), {samples} samples, '
          f'{args.num_warmup} warm-up' + (f' (the val set has only {len(dataset)})' if samples < args.samples else ''))

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    timed = 0.0
    fps = float('nan')
    with torch.no_grad():
        for i, data in enumerate(data_loader):
            sync()
            start = time.perf_counter()
            model(return_loss=False, rescale=True, **unpack_batch(data, device))
            sync()
            elapsed = time.perf_counter() - start
            if i >= args.num_warmup:
                timed += elapsed
                fps = (i + 1 - args.num_warmup) / timed
                if (i + 1) % args.log_interval == 0:
                    print(f'Done sample [{i + 1:<3}/ {samples}], fps: {fps:.1f} sample / s', flush=True)
            if i + 1 == samples:
                break
    print(f'Overall fps: {fps:.2f} sample / s ({1000 / fps:.1f} ms per sample, '
          f'{samples - args.num_warmup} timed samples)')
    return fps


if __name__ == '__main__':
    from engine.config import ConfigError
    from models.weights import CheckpointMismatchError
    try:
        main()
    except (ConfigError, FileNotFoundError, CheckpointMismatchError) as exc:
        raise SystemExit(f'timing.py: error: {exc}')
