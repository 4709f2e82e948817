"""Train OPS.

    python train.py --config configs/ops-t_r50_704x256_8f_12e.py
    bash dist_train.sh 8 configs/ops-t_r50_704x256_8f_12e.py     # torchrun, one process per GPU

Runs on GPUs (NCCL) and on the CPU (gloo for several processes). Checkpoints are written every epoch
atomically into the work dir; a run restarted with the same work dir resumes from `latest.pth`.
"""
import argparse
import logging
import os
import os.path as osp
import sys
import time

import torch
from mmcv import DictAction
from mmcv.runner import DistSamplerSeedHook, build_optimizer

from engine.config import ConfigError, load_config
from engine.dist import init_distributed, wrap_distributed
from engine.parallel import OPSDataParallel
from engine.runner import AtomicEpochBasedRunner, EpochSeedHook, ProgressBarHook, find_latest_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train an OPS occupancy model')
    parser.add_argument('--config', required=True, help='config file, e.g. configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: outputs/<config name>)')
    parser.add_argument('--resume-from', help='checkpoint to resume from (default: latest.pth of the work dir)')
    parser.add_argument('--no-auto-resume', action='store_true', help='start afresh even if the work dir has checkpoints')
    parser.add_argument('--cfg-options', '--override', nargs='+', action=DictAction, default={},
                        help='override config values, e.g. total_epochs=2 data.workers_per_gpu=0')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-deterministic', action='store_true', help='allow non-deterministic cuDNN kernels')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    parser.add_argument('--amp-dtype', choices=['fp16', 'bf16'], default='fp16',
                        help='autocast dtype of the backbone on GPU: fp16 with the static loss scale of the '
                             'original, or bf16 (no loss scaling; Ampere and newer)')
    parser.add_argument('--no-validate', action='store_true', help='skip the periodic evaluation')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar (logs only)')
    return parser.parse_args(argv)


def setup_logger(work_dir, rank):
    from mmdet.utils import get_root_logger
    log_file = osp.join(work_dir, f'train_{time.strftime("%Y%m%d_%H%M%S")}.log') if rank == 0 else None
    return get_root_logger(log_file=log_file, log_level=logging.INFO)


def build_train_model(cfg, logger, resuming):
    """Build the detector from cfg.model, initialise it and load the pretrained backbone."""
    from mmdet.models import build_detector
    from models.weights import load_pretrained_backbone
    model = build_detector(cfg.model)
    model.init_weights()
    load_from = cfg.get('load_from')
    if load_from and not resuming:
        if not osp.isfile(load_from):
            raise FileNotFoundError(
                f'pretrained weights not found: {load_from}. Download them as described in pretrain/README.md, '
                f'or train from scratch with --cfg-options load_from=None')
        load_pretrained_backbone(model, load_from, revise_keys=cfg.get('revise_keys', [(r'^backbone', 'img_backbone')]),
                                 logger=logger)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f'Trainable parameters: {n_trainable:,}')
    return model


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
    except ConfigError as exc:
        sys.exit(f'train.py: {exc}')

    rank, world_size, device = init_distributed(args.device)
    import models  # noqa: F401  (registers the detector, head and transformer)
    import loaders  # noqa: F401  (registers the dataset and pipelines)
    from mmdet.apis import set_random_seed
    from mmdet.core import DistEvalHook, EvalHook
    from mmdet.datasets import build_dataset
    from loaders.builder import build_dataloader, per_gpu_batch_size

    work_dir = args.work_dir or cfg.get('work_dir') or osp.join('outputs', osp.splitext(osp.basename(args.config))[0])
    work_dir = osp.abspath(work_dir)
    if rank == 0:
        os.makedirs(work_dir, exist_ok=True)
        cfg.dump(osp.join(work_dir, osp.basename(args.config)))
    logger = setup_logger(work_dir, rank)
    logger.info(f'config {args.config}, work dir {work_dir}, device {device}, world size {world_size}')

    resume_from = args.resume_from
    if resume_from is None and not args.no_auto_resume:
        resume_from = find_latest_checkpoint(work_dir)
        if resume_from:
            logger.info(f'auto-resume: found {resume_from}')
    if resume_from and not osp.isfile(resume_from):
        sys.exit(f'train.py: --resume-from {resume_from}: no such file')

    set_random_seed(args.seed, deterministic=not args.no_deterministic)

    samples_per_gpu = per_gpu_batch_size(cfg.batch_size, world_size, logger)
    logger.info(f'total batch {cfg.batch_size}, {world_size} process(es), {samples_per_gpu} sample(s) per process')
    try:
        train_dataset = build_dataset(cfg.data.train)
        model = build_train_model(cfg, logger, resuming=bool(resume_from))
    except KeyError as exc:  # mmcv registries raise KeyError for an unknown `type`
        sys.exit(f'train.py: {args.config}: {exc.args[0] if exc.args else exc} '
                 f'(is the type spelled right, and is the module imported?)')
    except TypeError as exc:  # an unknown keyword in a config dict
        sys.exit(f'train.py: {args.config}: {exc}')
    model.amp_dtype = torch.bfloat16 if args.amp_dtype == 'bf16' else torch.float16
    train_loader = build_dataloader(train_dataset, samples_per_gpu, cfg.data.workers_per_gpu,
                                    num_gpus=1, dist=world_size > 1, shuffle=True, seed=args.seed)

    model = model.to(device)
    if world_size > 1:
        model = wrap_distributed(model, device, cfg.get('find_unused_parameters', False))
    else:
        model = OPSDataParallel(model, device_ids=[device.index or 0] if device.type == 'cuda' else None)
    optimizer = build_optimizer(model, cfg.optimizer)

    runner = AtomicEpochBasedRunner(model, optimizer=optimizer, work_dir=work_dir, logger=logger,
                                    meta=dict(config=cfg.pretty_text, seed=args.seed), max_epochs=cfg.total_epochs)
    runner.timestamp = time.strftime('%Y%m%d_%H%M%S')
    optimizer_config = optimizer_hook_config(cfg, device, args.amp_dtype)
    runner.register_training_hooks(cfg.lr_config, optimizer_config, cfg.checkpoint_config, cfg.log_config,
                                   cfg.get('momentum_config'), custom_hooks_config=cfg.get('custom_hooks'))
    runner.register_hook(EpochSeedHook(args.seed), priority='VERY_HIGH')
    if world_size > 1:
        runner.register_hook(DistSamplerSeedHook())
    if not args.no_progress:
        runner.register_hook(ProgressBarHook(), priority='LOW')
    if not args.no_validate:
        val_dataset = build_dataset(cfg.data.val, dict(test_mode=True))
        val_loader = build_dataloader(val_dataset, 1, cfg.data.workers_per_gpu, num_gpus=1,
                                      dist=world_size > 1, shuffle=False)
        interval = cfg.get('eval_config', {}).get('interval', cfg.total_epochs)
        hook = DistEvalHook(val_loader, interval=interval, gpu_collect=False,
                            tmpdir=osp.join(work_dir, '.eval_hook')) if world_size > 1 else EvalHook(val_loader, interval=interval)
        runner.register_hook(hook, priority='LOW')

    if resume_from:
        try:
            runner.resume(resume_from, map_location='cpu')
        except Exception as exc:
            sys.exit(f'train.py: cannot resume from {resume_from}: {type(exc).__name__}: {exc}. The file is '
                     f'corrupt or not an OPS training checkpoint; delete it to resume from an earlier epoch_N.pth, '
                     f'or start afresh with --no-auto-resume.')
    runner.run([train_loader], [('train', 1)])
    logger.info(f'training finished; checkpoints in {work_dir}')


def optimizer_hook_config(cfg, device, amp_dtype):
    """The optimizer hook: the config's grad clip and loss scale, mixed precision only on GPU."""
    opt_cfg = dict(cfg.optimizer_config)
    grad_clip = opt_cfg.get('grad_clip')
    use_fp16 = opt_cfg.get('type') == 'Fp16OptimizerHook' and device.type == 'cuda' and amp_dtype == 'fp16'
    max_nan = cfg.get('max_consecutive_nan_steps', 5)
    if use_fp16:
        return dict(type='NanGuardFp16OptimizerHook', grad_clip=grad_clip, loss_scale=opt_cfg.get('loss_scale', 512.0),
                    max_consecutive_nan_steps=max_nan)
    return dict(type='NanGuardOptimizerHook', grad_clip=grad_clip, max_consecutive_nan_steps=max_nan)


if __name__ == '__main__':
    main()
