"""Evaluate OPS on the Occ3D-nuScenes val set: mIoU and RayIoU (spec 7 and 8.2).

  python val.py --config configs/ops-t_r50_704x256_8f_24e.py --weights checkpoints/ops-t.pth
  torchrun --nproc_per_node 8 val.py --config ... --weights ...      (or: bash dist_val.sh 8 CFG CKPT)
  python val.py --config CFG --weights CKPT --save-dir preds/         (also keep the predictions)
  python val.py --config CFG --load-preds preds/                      (evaluate saved predictions, no model)

One process runs the model in online mode (the 6 current images per sample, history features from
the cache; samples must come in dataset order). Several processes run offline mode (all frames'
images per sample), each on every W-th sample as mmdet's DistributedSampler deals them; the results
are gathered through a temporary folder on CPU and rank 0 evaluates.
"""
import argparse
import json
import logging
import os
import os.path as osp
import pickle
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from loaders.occ_eval import SavedPredictions, compact_result, evaluate_occupancy, save_prediction


def parse_args(argv=None):
    from mmcv import DictAction
    parser = argparse.ArgumentParser(description='Evaluate OPS (Occ3D mIoU and RayIoU)')
    parser.add_argument('--config', required=True, help='model/data config file')
    parser.add_argument('--weights', help='checkpoint to evaluate (required unless --load-preds or --random-init)')
    parser.add_argument('--random-init', action='store_true',
                        help='evaluate the randomly initialised model (seed 0) instead of a checkpoint: a baseline')
    parser.add_argument('--batch_size', '--batch-size', type=int, default=1,
                        help='samples per process and step; inference supports 1 (as the original)')
    parser.add_argument('--save-dir', help='also write one <sample token>.npz per prediction here')
    parser.add_argument('--load-preds', help='evaluate the <token>.npz predictions in this folder instead of a model')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. data.workers_per_gpu=0')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help='auto = CUDA when available (one GPU per process), else CPU')
    parser.add_argument('--workers', type=int, default=None,
                        help='data-loading workers per process (default: config data.workers_per_gpu)')
    parser.add_argument('--summary-json', help='also write the metrics dict (mIoU percent, RayIoU fractions) here')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; torchrun uses the LOCAL_RANK variable')
    args = parser.parse_args(argv)
    sources = [name for name, given in (('--weights', args.weights), ('--load-preds', args.load_preds),
                                        ('--random-init', args.random_init)) if given]
    if len(sources) != 1:
        parser.error('give exactly one of --weights CKPT (run the model), --load-preds DIR (evaluate saved '
                     f'predictions) or --random-init (untrained baseline); got {sources or "none"}')
    if args.weights and not osp.isfile(args.weights):
        parser.error(f'--weights: checkpoint not found: {args.weights}')
    if args.batch_size != 1:
        parser.error('--batch_size must be 1: online inference and the post-processing handle one sample at a time')
    if args.load_preds and not osp.isdir(args.load_preds):
        parser.error(f'--load-preds: folder not found: {args.load_preds}')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of the message (it may be redirected after setup)."""

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


def load_weights(model, path, logger):
    """Strict checkpoint loading (models/weights.py: names and shapes must match exactly)."""
    from models.weights import load_checkpoint_strict
    load_checkpoint_strict(model, path)
    logger.info(f'loaded {path}')


def sampler_indices(num_samples, rank, world_size):
    """Dataset indices of one rank under mmdet's DistributedSampler(shuffle=False) (spec 7.3).

    The index list is padded to a multiple of `world_size` by repeating it from the start, then
    rank r takes positions r, r + W, r + 2W, ...
    """
    total = -(-num_samples // world_size) * world_size
    padded = (list(range(num_samples)) * -(-total // max(num_samples, 1)))[:total]
    return padded[rank:total:world_size]


def collect_results_cpu(result_part, size, tmpdir=None):
    """Gather per-rank result lists into dataset order on rank 0 through a shared folder.

    Each rank pickles its list to `<tmpdir>/part_<rank>.pkl`; after a barrier rank 0 reads all parts,
    interleaves them (item k of rank r is sample k*W + r), drops the sampler's padding and deletes
    the folder. Works with gloo (CPU) and NCCL process groups; nothing goes through GPU memory.

    Args:
        result_part (list): this rank's results in sampler order.
        size (int): dataset length.
        tmpdir (str | None): folder visible to all ranks (default: a new one under ./.dist_test).
    Returns:
        list of `size` results on rank 0, None on the other ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(result_part)[:size]
    rank, world_size = dist.get_rank(), dist.get_world_size()
    created = tmpdir is None
    if created:
        holder = [None]
        if rank == 0:
            os.makedirs('.dist_test', exist_ok=True)
            holder[0] = tempfile.mkdtemp(dir='.dist_test')
        dist.broadcast_object_list(holder, src=0)
        tmpdir = holder[0]
    else:
        os.makedirs(tmpdir, exist_ok=True)
    with open(osp.join(tmpdir, f'part_{rank}.pkl'), 'wb') as f:
        pickle.dump(list(result_part), f, protocol=pickle.HIGHEST_PROTOCOL)
    dist.barrier()
    if rank != 0:
        return None
    parts = []
    for r in range(world_size):
        with open(osp.join(tmpdir, f'part_{r}.pkl'), 'rb') as f:
            parts.append(pickle.load(f))
    lengths = [len(p) for p in parts]
    if len(set(lengths)) != 1 or lengths[0] * world_size < size:
        raise RuntimeError(f'ranks returned {lengths} results for {size} samples; every rank must process '
                           f'the same padded number of samples (mmdet DistributedSampler)')
    ordered = [item for group in zip(*parts) for item in group][:size]
    shutil.rmtree(tmpdir, ignore_errors=True)
    if created:
        try:
            os.rmdir('.dist_test')
        except OSError:
            pass  # another evaluation is still using it
    return ordered


def build_model(cfg, weights, device, world_size, logger):
    """The detector from `cfg.model` with `weights` loaded strictly (None: random init, seed 0)."""
    from mmdet.models import build_detector
    model = build_detector(cfg.model)
    if weights is None:
        model.init_weights()
        logger.info('no checkpoint: evaluating the randomly initialised model (--random-init)')
    else:
        load_weights(model, weights, logger)
    model.to(device).eval()
    # The original enables fp16 for evaluation; it only takes effect in offline (multi-process)
    # mode, where the backbone runs under CUDA autocast. The online mode runs fp32 (spec 3.7).
    model.fp16_enabled = device.type == 'cuda' and world_size > 1
    return model


@torch.no_grad()
def run_inference(model, data_loader, indices, device, rank, data_infos, save_dir=None, save_count=None):
    """Run the model over this rank's samples; returns the compacted results in sampler order.

    Only the first `save_count` results are written to `save_dir`: the rest are the sampler's padding,
    copies of samples another rank writes (two processes must not write one file at once).
    """
    from engine.parallel import unpack_batch
    from tqdm import tqdm
    results = []
    bar = tqdm(total=len(indices), desc='inference', dynamic_ncols=True, disable=rank != 0)
    save_count = len(indices) if save_count is None else save_count
    for position, (index, data) in enumerate(zip(indices, data_loader)):
        data = unpack_batch(data, device)
        outputs = model(return_loss=False, rescale=True, **data)
        if len(outputs) != 1:
            raise RuntimeError(f'the model returned {len(outputs)} results for one sample')
        result = compact_result(outputs[0])
        if save_dir is not None and position < save_count:
            save_prediction(osp.join(save_dir, f'{data_infos[index]["token"]}.npz'), result)
        results.append(result)
        bar.update(1)
    bar.close()
    if len(results) != len(indices):
        raise RuntimeError(f'the data loader yielded {len(results)} samples, expected {len(indices)}')
    return results


def format_summary(metrics):
    """One line with every number in percent (as the README reports them)."""
    keys = ['mIoU', 'RayIoU', 'RayIoU@1', 'RayIoU@2', 'RayIoU@4']
    values = [metrics['mIoU']] + [metrics[k] * 100 for k in keys[1:]]
    return ' | '.join(f'{k} {v:.2f}' for k, v in zip(keys, values)) + '  (percent)'


def main(argv=None):
    args = parse_args(argv)
    from engine.config import load_config
    from engine.dist import init_distributed
    # Every rank reads the config before joining the process group, so a bad config stops all of
    # them instead of leaving the others waiting at a barrier.
    cfg = load_config(args.config, args.cfg_options, required=('model', 'data'))
    rank, world_size, device = init_distributed(args.device)
    logger = make_logger(rank)
    if args.workers is not None:
        cfg.data.workers_per_gpu = args.workers

    import loaders  # noqa: F401  (registers the dataset and pipelines)
    import models  # noqa: F401  (registers the detector)
    from mmdet.apis import set_random_seed
    from mmdet.datasets import build_dataloader, build_dataset
    set_random_seed(0, deterministic=True)
    torch.backends.cudnn.benchmark = True

    dataset = build_dataset(cfg.data.val)
    data_infos = dataset.data_infos
    occ_root = getattr(dataset, 'occ_root', None) or cfg.get('occ_root')
    mode = 'saved predictions' if args.load_preds else ('online' if world_size == 1 else 'offline')
    logger.info(f'config {args.config}: {len(dataset)} samples, {world_size} process(es) on {device}, mode {mode}')

    if args.load_preds:
        results = SavedPredictions(args.load_preds, [info['token'] for info in data_infos]) if rank == 0 else None
    else:
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
        model = build_model(cfg, args.weights, device, world_size, logger)
        data_loader = build_dataloader(dataset, samples_per_gpu=1, workers_per_gpu=cfg.data.get('workers_per_gpu', 4),
                                       num_gpus=1, dist=world_size > 1, shuffle=False)
        indices = list(iter(data_loader.sampler))
        if indices != sampler_indices(len(dataset), rank, world_size):
            raise RuntimeError('the data loader does not deal samples like mmdet\'s DistributedSampler(shuffle=False); '
                               'collect_results_cpu could not restore the dataset order')
        # padded position of item k on this rank: k * world_size + rank; < len(dataset) = a real sample
        real = sum(1 for k in range(len(indices)) if k * world_size + rank < len(dataset))
        start = time.time()
        part = run_inference(model, data_loader, indices, device, rank, data_infos, args.save_dir, real)
        logger.info(f'inference: {len(part)} samples on rank {rank} in {time.time() - start:.1f} s')
        results = collect_results_cpu(part, len(dataset))
        if args.save_dir:
            logger.info(f'predictions saved to {args.save_dir}')

    metrics = None
    if rank == 0:
        metrics = evaluate_occupancy(results, data_infos, occ_root, logger=logger, device=device)
        logger.info(format_summary(metrics))
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
    from engine.config import ConfigError
    from models.weights import CheckpointMismatchError
    try:
        main()
    except (ConfigError, FileNotFoundError, CheckpointMismatchError) as exc:
        # Problems the user fixes by changing a path or a flag: the message, not a traceback.
        sys.exit(f'val.py: error: {exc}')
