"""Train OPS.

    python train.py --config configs/ops-t_r50_704x256_8f_12e.py
    bash dist_train.sh 8 configs/ops-t_r50_704x256_8f_12e.py     # torchrun, one process per GPU
    NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash dist_train.sh 8 CFG   # (and NODE_RANK=1 on host1)
    bash tools/slurm_train.sh PARTITION JOB CFG 16                # srun, one task per GPU

Runs on GPUs (NCCL) and on the CPU (gloo for several processes). The config's batch_size is the total
batch per step for any number of processes (engine/scaling.py), and the data order does not depend on
it (loaders/samplers.py; docs/distributed.md). Checkpoints are written every epoch atomically into the
work dir by rank 0; a run restarted with the same work dir resumes from `latest.pth`.
"""
import argparse
import logging
import os
import os.path as osp
import time

# Only light imports before the arguments are parsed (`--help` answers at once); torch, mmcv and
# mmdet come in main(). A bad input ends with one line (engine/cli.py; --debug for the traceback).
from engine.cli import DictAction, UserError, add_common_arguments, entry_point, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train an OPS occupancy model')
    parser.add_argument('--config', required=True, help='config file, e.g. configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: outputs/<config name>)')
    parser.add_argument('--resume-from', help='checkpoint to resume from (default: latest.pth of the work dir)')
    parser.add_argument('--no-auto-resume', action='store_true',
                        help='start afresh even if the work dir has checkpoints')
    parser.add_argument('--cfg-options', '--override', nargs='+', action=DictAction, default={},
                        help='override config values, e.g. total_epochs=2 data.workers_per_gpu=0')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-deterministic', action='store_true', help='allow non-deterministic cuDNN kernels')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    parser.add_argument('--launcher', choices=['auto', 'none', 'pytorch', 'slurm'], default='auto',
                        help='how the processes were started: torchrun (pytorch), srun (slurm; rank, world size '
                             'and master from SLURM\'s variables) or one process (none); auto detects it '
                             '(docs/distributed.md)')
    parser.add_argument('--amp-dtype', choices=['fp16', 'bf16'], default=None,
                        help='autocast dtype of the backbone on GPU: fp16 with the static loss scale of the '
                             'original (default), or bf16 (no loss scaling; Ampere and newer); '
                             'overrides the config\'s execution.train_autocast')
    parser.add_argument('--fast', action='store_true',
                        help='the fast training path: same function, no host reads per step (lazy logging, fused '
                             'AdamW that skips non-finite steps on the device), no gradient checkpointing '
                             '(more memory), on CUDA the decoder replayed from CUDA graphs with TF32 products and '
                             'SDPA attention; docs/performance.md')
    parser.add_argument('--no-validate', action='store_true', help='skip the periodic evaluation')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar (logs only)')
    parser.add_argument('--skip-data-check', action='store_true',
                        help='do not check before training that every image and label file of the infos exists')
    add_common_arguments(parser, trust_checkpoint=True)
    return parser.parse_args(argv)


def setup_logger(work_dir, rank):
    """mmdet's root logger (console + a log file in the work dir on rank 0), printing above the progress bars."""
    from mmdet.utils import get_root_logger

    from engine.logs import route_through_tqdm
    log_file = osp.join(work_dir, f'train_{time.strftime("%Y%m%d_%H%M%S")}.log') if rank == 0 else None
    logger = get_root_logger(log_file=log_file, log_level=logging.INFO)
    # mmcv sets its logger up once per process: a later run in the same process (a script or a test calling
    # train.main again) writes its own file instead of the first run's
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if log_file is not None and all(h.baseFilename != osp.abspath(log_file) for h in files):
        for handler in files:
            logger.removeHandler(handler)
            handler.close()
        handler = logging.FileHandler(log_file, 'w')
        handler.setFormatter(logging.Formatter('%(asctime)s - %(name)s - %(levelname)s - %(message)s'))
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
    return route_through_tqdm(logger)


def main(argv=None):
    """Train; a bad input raises SystemExit('train.py: error: ...') (engine/cli.py)."""
    return run_main(_main, 'train.py', argv)


def _main(argv):
    args = parse_args(argv)
    from engine.logs import quiet_libraries
    quiet_libraries(args.verbose)
    from engine.config import load_config
    cfg = load_config(args.config, args.cfg_options)

    from engine.dist import init_distributed
    rank, world_size, device = init_distributed(args.device, args.launcher)
    work_dir = args.work_dir or cfg.get('work_dir') or osp.join('outputs', osp.splitext(osp.basename(args.config))[0])
    work_dir = osp.abspath(work_dir)
    if args.resume_from and not osp.isfile(args.resume_from):
        raise UserError(f'--resume-from {args.resume_from}: no such file')

    from engine.runner import remove_on_early_failure
    # a run that fails before its first checkpoint leaves no (empty) work dir behind
    with remove_on_early_failure(work_dir, enabled=rank == 0):
        train(args, cfg, work_dir, rank, world_size, device)


def train(args, cfg, work_dir, rank, world_size, device):
    from mmcv.runner import DistSamplerSeedHook, build_optimizer
    from mmdet.apis import set_random_seed
    from mmdet.core import EvalHook

    import engine.train_step  # registers SyncFreeOptimizerHook (--fast); merge_param_groups
    from engine.build import (
        apply_gpu_decode,
        build_dataset,
        build_model,
        build_test_loader,
        build_train_loader,
        set_test_mode,
    )
    from engine.dist import agree_on_checkpoint, wrap_distributed
    from engine.distributed_hooks import CollectiveDistEvalHook, SampleSeedHook
    from engine.parallel import OPSDataParallel
    from engine.runner import (
        AtomicEpochBasedRunner,
        EpochSeedHook,
        ProgressBarHook,
        find_latest_checkpoint,
        resume_failure_message,
    )
    from engine.scaling import apply_plan, continue_resumed_run, plan_from_config
    from engine.throughput import ThroughputHook
    from loaders.data_check import check_dataset
    from models.weights import UntrustedCheckpointError

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
    try:  # rank 0 decides; every rank must be able to read it (nodes without a shared filesystem)
        resume_from = agree_on_checkpoint(resume_from)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc

    set_random_seed(args.seed, deterministic=not args.no_deterministic)

    # batch, accumulation and lr for this world size (engine/scaling.py, docs/distributed.md)
    try:
        plan = plan_from_config(cfg, world_size)
    except ValueError as exc:
        raise UserError(f'{args.config}: {exc}') from exc
    cfg.optimizer, cfg.lr_config, scale_messages = apply_plan(cfg.optimizer, cfg.lr_config, plan)
    for message in plan.messages:
        logger.warning(message)
    for message in scale_messages:
        logger.info(message)
    logger.info(plan.summary())
    samples_per_gpu = plan.samples_per_gpu
    from accel import policy_from_config
    policy = policy_from_config(cfg.get('execution'), fast=args.fast, train_autocast=args.amp_dtype)
    if policy.lazy_logs and plan.cumulative_iters > 1:
        raise UserError(f'the {policy.preset} execution (lazy logs, sync-free step) does not combine with gradient '
                        f'accumulation yet (this world size needs {plan.cumulative_iters} accumulated iterations per '
                        f'step); train without --fast')
    if policy.fused_optimizer:
        cfg.optimizer['fused'] = True
    apply_gpu_decode(cfg, policy, device, logger)
    set_test_mode(cfg, online=world_size == 1)   # the periodic evaluation: online in one process, as val.py
    if policy.train_cuda_graph and policy.checkpointing:
        logger.info('the decoder trains without gradient checkpointing, on CUDA replayed from CUDA graphs (same '
                    'arithmetic, more memory); --cfg-options execution.train_cuda_graph=False keeps the '
                    'checkpointing and the eager decoder')
    try:
        train_dataset = build_dataset(cfg.data.train)
        val_dataset = None if args.no_validate else build_dataset(cfg.data.val, test_mode=True)
        if not args.skip_data_check:  # every rank: none of them may go on to wait for the others
            check_dataset(train_dataset, 'train', progress=rank == 0, logger=logger)
            if val_dataset is not None:
                check_dataset(val_dataset, 'val', eval_labels=True, progress=rank == 0, logger=logger)
        # a resumed run takes every weight from its checkpoint: no pretrained backbone then
        model = build_model(cfg.model, pretrained=None if resume_from else cfg.get('load_from'),
                            revise_keys=cfg.get('revise_keys'), logger=logger, trust_checkpoint=args.trust_checkpoint,
                            execution=policy)
    except KeyError as exc:  # mmcv registries raise KeyError for an unknown `type`
        raise UserError(f'{args.config}: {exc.args[0] if exc.args else exc} '
                        f'(is the type spelled right, and is the module imported?)') from exc
    except TypeError as exc:  # an unknown keyword in a config dict
        raise UserError(f'{args.config}: {exc}') from exc
    logger.info(f'Trainable parameters: {sum(p.numel() for p in model.parameters() if p.requires_grad):,}')
    train_loader = build_train_loader(train_dataset, samples_per_gpu, cfg.data.workers_per_gpu,
                                      seed=args.seed, cumulative_iters=plan.cumulative_iters)

    model = model.to(device)
    if world_size > 1:
        model = wrap_distributed(model, device, cfg.get('find_unused_parameters', False))
    else:
        model = OPSDataParallel(model, device_ids=[device.index or 0] if device.type == 'cuda' else None)
    # one parameter group per lr multiplier instead of one per parameter: the same update, a few optimizer launches
    # per step instead of several per parameter (engine/train_step.py: merge_param_groups)
    optimizer = engine.train_step.merge_param_groups(build_optimizer(model, cfg.optimizer))

    runner = AtomicEpochBasedRunner(model, optimizer=optimizer, work_dir=work_dir, logger=logger,
                                    meta=dict(config=cfg.pretty_text, seed=args.seed, batch=plan.as_meta()),
                                    max_epochs=cfg.total_epochs,
                                    trust_checkpoint=args.trust_checkpoint)
    runner.timestamp = time.strftime('%Y%m%d_%H%M%S')
    optimizer_config = optimizer_hook_config(cfg, device, policy.train_autocast, plan.cumulative_iters,
                                             sync_free=policy.lazy_logs)
    runner.register_training_hooks(cfg.lr_config, optimizer_config, cfg.checkpoint_config, cfg.log_config,
                                   cfg.get('momentum_config'), custom_hooks_config=cfg.get('custom_hooks'))
    runner.register_hook(EpochSeedHook(args.seed), priority='VERY_HIGH')
    runner.register_hook(DistSamplerSeedHook())  # the sampler's epoch: its order depends on (seed, epoch) only
    runner.register_hook(SampleSeedHook())  # photometric draws per sample, not per rank (loaders/samplers.py)
    # samples/s and the interval's GPU memory peaks in every log record, a summary at the end (engine/throughput.py)
    runner.register_hook(ThroughputHook(samples_per_gpu * world_size, device), priority=ThroughputHook.PRIORITY)
    if not args.no_progress:
        runner.register_hook(ProgressBarHook(), priority='LOW')
    if val_dataset is not None:
        val_loader = build_test_loader(val_dataset, cfg.data.workers_per_gpu, dist=world_size > 1)
        interval = cfg.get('eval_config', {}).get('interval', cfg.total_epochs)
        # several processes: results gathered through the process group, no shared folder
        hook = CollectiveDistEvalHook(val_loader, interval=interval) if world_size > 1 else \
            EvalHook(val_loader, interval=interval)
        runner.register_hook(hook, priority='LOW')

    if resume_from:
        try:
            runner.resume(resume_from, map_location='cpu')
        except UntrustedCheckpointError:
            raise  # the message names the file, the object and --trust-checkpoint
        except Exception as exc:
            raise UserError(resume_failure_message(resume_from, exc, work_dir)) from exc
        # another world size / total batch: iteration counter and lr scale follow this run's plan
        continue_resumed_run(runner, plan, len(train_loader), logger)
    runner.run([train_loader], [('train', 1)])
    logger.info(f'training finished; checkpoints in {work_dir}')


def optimizer_hook_config(cfg, device, amp_dtype, cumulative_iters=1, sync_free=False):
    """The optimizer hook: the config's grad clip and loss scale, mixed precision only on GPU; with
    `cumulative_iters` > 1 mmcv's gradient accumulation (engine/distributed_hooks.py); `sync_free`: the
    sync-free step (engine/train_step.py) with the same clip and loss scale."""
    opt_cfg = dict(cfg.optimizer_config)
    grad_clip = opt_cfg.get('grad_clip')
    use_fp16 = opt_cfg.get('type') in ('Fp16OptimizerHook', 'GradientCumulativeFp16OptimizerHook') and \
        device.type == 'cuda' and amp_dtype == 'fp16'
    max_nan = cfg.get('max_consecutive_nan_steps', 5)
    if sync_free:
        return dict(type='SyncFreeOptimizerHook', grad_clip=grad_clip, fp16=use_fp16,
                    loss_scale=opt_cfg.get('loss_scale', 512.0) if use_fp16 else 1.0,
                    max_consecutive_nan_steps=max_nan)
    if cumulative_iters > 1:
        if use_fp16:
            return dict(type='NanGuardGradientCumulativeFp16OptimizerHook', cumulative_iters=cumulative_iters,
                        grad_clip=grad_clip, loss_scale=opt_cfg.get('loss_scale', 512.0),
                        max_consecutive_nan_steps=max_nan)
        return dict(type='NanGuardGradientCumulativeOptimizerHook', cumulative_iters=cumulative_iters,
                    grad_clip=grad_clip, max_consecutive_nan_steps=max_nan)
    if use_fp16:
        return dict(type='NanGuardFp16OptimizerHook', grad_clip=grad_clip, loss_scale=opt_cfg.get('loss_scale', 512.0),
                    max_consecutive_nan_steps=max_nan)
    return dict(type='NanGuardOptimizerHook', grad_clip=grad_clip, max_consecutive_nan_steps=max_nan)


if __name__ == '__main__':
    entry_point(_main, 'train.py')
