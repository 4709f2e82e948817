"""Inference speed (FPS) of OPS as the official protocol measures it (docs/evaluation.md, "FPS").

  python timing.py --config configs/ops-t_r50_704x256_8f_24e.py --weights checkpoints/ops-t.pth

One process, batch 1, the val set in order with the online feature cache (the backbone runs on
the 6 current images; history features come from the cache). By default the faithful test mode (the
original's arithmetic, float32 backbone and decoder); `--fast` the fast test mode (fp16 backbone and
FPN, TF32 and fused decoder kernels). On CUDA each test step is replayed from a CUDA graph
(`--no-cuda-graph`: kernels launched one by one). Timed per sample: moving the batch to
the device plus the model's forward with post-processing (including the copy of the result to the
CPU), between two device synchronisations; data loading is outside. The first `--num-warmup`
samples are not counted.
"""
import argparse
import os
import os.path as osp
import platform
import time

# Only light imports before the arguments are parsed (`--help` answers at once); torch, mmcv and
# mmdet come in main(). A bad input ends with one line (engine/cli.py; --debug for the traceback).
from engine.cli import DictAction, UserError, add_common_arguments, entry_point, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Measure OPS inference FPS (batch 1, online mode; faithful fp32 or --fast)')
    parser.add_argument('--config', required=True)
    parser.add_argument('--weights', help='checkpoint (optional: random init otherwise; see the note printed)')
    parser.add_argument('--num-warmup', '--num_warmup', type=int, default=10, help='samples not timed')
    parser.add_argument('--samples', type=int, default=500, help='samples to run, warm-up included')
    parser.add_argument('--log-interval', '--log_interval', type=int, default=50)
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    parser.add_argument('--workers', type=int, default=None, help='data-loading workers (default: config)')
    parser.add_argument('--cfg-options', '--override', nargs='+', action=DictAction, default={})
    parser.add_argument('--fast', action='store_true',
                        help='time the fast test mode (fp16 backbone, TF32 and fused decoder kernels)')
    parser.add_argument('--no-cuda-graph', action='store_true',
                        help='launch the kernels one by one instead of replaying the test step from a CUDA graph')
    add_common_arguments(parser, trust_checkpoint=True)
    args = parser.parse_args(argv)
    if args.num_warmup < 0 or args.samples <= args.num_warmup:
        parser.error(f'--samples ({args.samples}) must exceed --num-warmup ({args.num_warmup}), which must be >= 0')
    if args.log_interval <= 0:
        parser.error('--log-interval must be positive')
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        parser.error('timing.py measures one process (online mode); run it with python, not torchrun')
    return args


def device_name(device):
    import torch
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
    """Time inference; a bad input raises SystemExit('timing.py: error: ...') (engine/cli.py)."""
    return run_main(_main, 'timing.py', argv)


def _main(argv):
    args = parse_args(argv)
    if args.weights and not osp.isfile(args.weights):
        raise UserError(f'--weights: checkpoint not found: {args.weights}')
    from engine.logs import quiet_libraries
    quiet_libraries(args.verbose)
    import torch

    from engine.config import load_config
    from engine.dist import init_distributed
    cfg = load_config(args.config, args.cfg_options, required=('model', 'data'))
    _, _, device = init_distributed(args.device, launcher='none')  # one process (parse_args refuses torchrun)
    from mmdet.apis import set_random_seed

    from accel import policy_from_config
    from engine.build import build_dataset, build_model, build_test_loader, set_test_mode
    from engine.parallel import unpack_batch
    set_random_seed(0, deterministic=True)
    torch.backends.cudnn.benchmark = True
    set_test_mode(cfg, online=True)
    policy = policy_from_config(cfg.get('execution'), fast=args.fast,
                                test_cuda_graph=False if args.no_cuda_graph else None)

    dataset = build_dataset(cfg.data.val, test_mode=True)
    workers = cfg.data.get('workers_per_gpu', 4) if args.workers is None else args.workers
    data_loader = build_test_loader(dataset, workers, dist=False)
    model = build_model(cfg.model, checkpoint=args.weights, trust_checkpoint=args.trust_checkpoint, execution=policy)
    if args.weights:
        weights_note = args.weights
    else:
        weights_note = ('none: random initialisation. Speed is the same for the backbone and decoder, but '
                        'fewer points pass the score threshold, so post-processing may be faster than with '
                        'trained weights')
    model.to(device).eval()

    samples = min(args.samples, len(dataset))
    if samples <= args.num_warmup:
        raise SystemExit(f'the val set has {len(dataset)} samples, not more than --num-warmup {args.num_warmup}')
    print(f'config:    {args.config}')
    print(f'weights:   {weights_note}')
    print(f'device:    {device_name(device)}')
    graph = 'CUDA graph' if device.type == 'cuda' and policy.test_cuda_graph and model.GRAPH_CAPTURABLE else 'eager'
    print(f'{policy.describe()}, {graph}, batch 1, online mode (feature cache), {samples} samples, '
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
    entry_point(_main, 'timing.py')
