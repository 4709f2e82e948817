"""Evaluate OPS on the Occ3D-nuScenes val set: mIoU and RayIoU (docs/evaluation.md).

  python val.py --config configs/ops-t_r50_704x256_8f_24e.py --weights checkpoints/ops-t.pth
  torchrun --nproc_per_node 8 val.py --config ... --weights ...      (or: bash dist_val.sh 8 CFG CKPT)
  python val.py --config CFG --weights CKPT --save-dir preds/         (also keep the predictions)
  python val.py --config CFG --load-preds preds/                      (evaluate saved predictions, no model)

One process runs the model in online mode (the 6 current images per sample, history features from
the cache; samples must come in dataset order). Several processes run offline mode (all frames'
images per sample), each on every W-th sample as mmdet's DistributedSampler deals them; the results
are gathered on rank 0 through the process group (torch.distributed collectives, in chunks: the
nodes need no shared filesystem) and rank 0 evaluates. The loop and the gathering are
engine/inference.py, the metrics evaluation/.
"""
import argparse
import json
import logging
import os
import os.path as osp
import sys
import time

# Only light imports before the arguments are parsed (`--help` answers at once); torch, mmcv and
# mmdet come in main(). A bad input ends with one line (engine/cli.py; --debug for the traceback).
from engine.cli import DictAction, UserError, add_common_arguments, entry_point, run_main
from engine.logs import TqdmHandler


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate OPS (Occ3D mIoU and RayIoU)')
    parser.add_argument('--config', required=True, help='model/data config file')
    parser.add_argument('--weights', help='checkpoint to evaluate (required unless --load-preds or --random-init)')
    parser.add_argument('--random-init', action='store_true',
                        help='evaluate the randomly initialised model (seed 0) instead of a checkpoint: a baseline')
    parser.add_argument('--batch_size', '--batch-size', type=int, default=1,
                        help='samples per process and forward; above 1 the model runs offline (every frame\'s '
                             'images per sample, no feature cache), which pays on a GPU')
    parser.add_argument('--fast', action='store_true',
                        help='fast test mode: fp16 backbone, TF32 and fused decoder kernels (execution.preset=fast, '
                             'docs/performance.md); default: faithful, the original\'s arithmetic')
    parser.add_argument('--no-cuda-graph', action='store_true',
                        help='launch the test step\'s kernels one by one instead of replaying a CUDA graph')
    parser.add_argument('--gpu-decode', action='store_true',
                        help='decode the JPEGs on the model\'s device instead of in the loader workers '
                             '(execution.gpu_decode; --fast does so on a GPU where it works; '
                             '--cfg-options execution.gpu_decode=False keeps the CPU decode)')
    parser.add_argument('--save-dir', help='also write one <sample token>.npz per prediction here')
    parser.add_argument('--load-preds', help='evaluate the <token>.npz predictions in this folder instead of a model')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. data.workers_per_gpu=0')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help='auto = CUDA when available (one GPU per process), else CPU')
    parser.add_argument('--workers', type=int, default=None,
                        help='data-loading workers per process (default: config data.workers_per_gpu)')
    parser.add_argument('--summary-json', help='also write the metrics dict (mIoU percent, RayIoU fractions) here')
    parser.add_argument('--launcher', choices=['auto', 'none', 'pytorch', 'slurm'], default='auto',
                        help='how the processes were started: torchrun (pytorch), srun (slurm) or one process '
                             '(none); auto detects it (docs/distributed.md)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; torchrun uses the LOCAL_RANK variable')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='do not check first that every image and label file of the infos exists')
    add_common_arguments(parser, trust_checkpoint=True)
    args = parser.parse_args(argv)
    sources = [name for name, given in (('--weights', args.weights), ('--load-preds', args.load_preds),
                                        ('--random-init', args.random_init)) if given]
    if len(sources) != 1:
        parser.error('give exactly one of --weights CKPT (run the model), --load-preds DIR (evaluate saved '
                     f'predictions) or --random-init (untrained baseline); got {sources or "none"}')
    if args.batch_size < 1:
        parser.error(f'--batch_size must be >= 1, got {args.batch_size}')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


class _StdoutHandler(TqdmHandler):
    """Writes to whatever sys.stdout is at the time of the message (it may be redirected after setup),
    above the progress bars."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def make_logger(rank):
    """Rank 0 logs to stdout; other ranks only log errors."""
    logger = logging.getLogger('ops.val')
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter('[%(asctime)s][%(levelname)s] - %(message)s', '%H:%M:%S'))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    return logger


def main(argv=None):
    """Evaluate; a bad input raises SystemExit('val.py: error: ...') (engine/cli.py)."""
    return run_main(_main, 'val.py', argv)


def _main(argv):
    args = parse_args(argv)
    if args.weights and not osp.isfile(args.weights):
        raise UserError(f'--weights: checkpoint not found: {args.weights}')
    if args.load_preds and not osp.isdir(args.load_preds):
        raise UserError(f'--load-preds: folder not found: {args.load_preds} (write it with val.py --save-dir)')
    from engine.logs import quiet_libraries
    quiet_libraries(args.verbose)
    import torch
    import torch.distributed as dist

    from engine.config import load_config
    from engine.dist import init_distributed
    # Every rank reads the config before joining the process group, so a bad config stops all of
    # them instead of leaving the others waiting at a barrier.
    cfg = load_config(args.config, args.cfg_options, required=('model', 'data'))
    rank, world_size, device = init_distributed(args.device, args.launcher)
    logger = make_logger(rank)
    if args.workers is not None:
        cfg.data.workers_per_gpu = args.workers

    from mmdet.apis import set_random_seed

    from accel import policy_from_config
    from core.benchmarks import DEFAULT_BENCHMARK
    from engine.build import apply_gpu_decode, build_dataset, build_model, build_test_loader, set_test_mode
    from engine.inference import inference
    from evaluation import OccEvaluator, SavedPredictions, evaluate_occupancy
    from evaluation.evaluator import EvaluationThread, format_summary
    from loaders.data_check import check_dataset
    set_random_seed(0, deterministic=True)
    torch.backends.cudnn.benchmark = True

    # One process and one sample per step: online, as the original (the feature cache needs the
    # samples in order); several processes or batches: offline.
    online = world_size == 1 and args.batch_size == 1
    set_test_mode(cfg, online=online)
    policy = policy_from_config(cfg.get('execution'), fast=args.fast,
                                test_cuda_graph=False if args.no_cuda_graph else None,
                                gpu_decode=True if args.gpu_decode else None)
    apply_gpu_decode(cfg, policy, device, logger)
    dataset = build_dataset(cfg.data.val, test_mode=True)
    data_infos = dataset.data_infos
    occ_root = getattr(dataset, 'occ_root', None) or cfg.get('occ_root')
    benchmark = getattr(dataset, 'benchmark', DEFAULT_BENCHMARK)
    mode = 'saved predictions' if args.load_preds else (
        f'{"online" if online else "offline"}, {policy.preset}, batch {args.batch_size}')
    logger.info(f'config {args.config}: {len(dataset)} samples, {world_size} process(es) on {device}, mode {mode}')
    if not args.skip_data_check:  # the images the model reads (not for saved predictions) and the labels
        check_dataset(dataset, 'val', images=not args.load_preds, eval_labels=True, progress=rank == 0, logger=logger)

    evaluation = None
    if args.load_preds:
        results = SavedPredictions(args.load_preds, [info['token'] for info in data_infos]) if rank == 0 else None
    else:
        model = build_model(cfg.model, checkpoint=args.weights, logger=logger, trust_checkpoint=args.trust_checkpoint,
                            execution=policy)
        if args.weights is None:
            logger.info('no checkpoint: evaluating the randomly initialised model (--random-init)')
        model.to(device).eval()
        data_loader = build_test_loader(dataset, cfg.data.get('workers_per_gpu', 4), dist=world_size > 1,
                                        samples_per_gpu=args.batch_size)
        if world_size == 1:   # the metrics computed alongside the inference loop, sample by sample
            evaluation = EvaluationThread(OccEvaluator(data_infos, occ_root, device=device, benchmark=benchmark))
        results = inference(model, data_loader, dataset, device, rank, world_size, args.save_dir, logger,
                            on_result=evaluation.put if evaluation else None)
        if args.save_dir:
            logger.info(f'predictions saved to {args.save_dir}')

    metrics = None
    if rank == 0:
        start = time.time()
        if evaluation is not None:
            metrics = evaluation.summary(logger)
        else:
            metrics = evaluate_occupancy(results, data_infos, occ_root, logger=logger, device=device,
                                         benchmark=benchmark)
        logger.info(format_summary(metrics))
        alongside = ' after the inference loop, alongside which they ran' if evaluation is not None else ''
        logger.info(f'metrics: {len(data_infos)} samples in {time.time() - start:.1f} s on {device}{alongside}')
        if args.summary_json:
            os.makedirs(osp.dirname(osp.abspath(args.summary_json)), exist_ok=True)
            with open(args.summary_json, 'w') as f:
                json.dump(dict(metrics, config=args.config, weights=args.weights, num_samples=len(data_infos)), f,
                          indent=2)
    if world_size > 1:
        # No barrier here: the other ranks would wait (and could time out) while rank 0 evaluates.
        dist.destroy_process_group()
    return metrics


if __name__ == '__main__':
    entry_point(_main, 'val.py')
