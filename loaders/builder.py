"""Data loaders of OPS (docs/method.md, "Training"): mmdet samplers, mmcv collate, per-worker seeding."""
import warnings
from functools import partial

from mmcv.parallel import collate
from mmcv.runner import get_dist_info
from mmdet.datasets.builder import worker_init_fn
from mmdet.datasets.samplers import DistributedGroupSampler, DistributedSampler, GroupSampler
from torch.utils.data import DataLoader


def per_gpu_batch_size(batch_size, world_size, logger=None):
    """Samples per process for a total batch `batch_size` over `world_size` processes.

    Integer division as the original (8 GPUs -> 1, 4 -> 2, 1 -> 8); a total that does not divide
    shrinks the effective batch, which is warned about. The learning rate is not rescaled.
    train.py uses engine/scaling.py's plan_batch instead (accumulation, more processes than samples,
    lr scaling); this rule is kept for callers of the original's convention.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f'batch_size ({batch_size}) and world_size ({world_size}) must be >= 1')
    if batch_size < world_size:
        raise ValueError(f'batch_size {batch_size} is smaller than the number of processes ({world_size}): every '
                         f'process needs at least one sample; set batch_size to a multiple of {world_size}')
    per_gpu = batch_size // world_size
    if batch_size % world_size:
        msg = (f'batch_size {batch_size} is not a multiple of the {world_size} processes: each takes {per_gpu}, so '
               f'the effective total batch is {per_gpu * world_size}')
        if logger is not None:
            logger.warning(msg)
        else:
            warnings.warn(msg)
    return per_gpu


def build_dataloader(dataset, samples_per_gpu, workers_per_gpu, num_gpus=1, dist=False, shuffle=True, seed=None,
                     **kwargs):
    """PyTorch DataLoader over `dataset`.

    Distributed: one loader per process, batch `samples_per_gpu`, `workers_per_gpu` workers;
    DistributedGroupSampler (epoch-seeded shuffle, padded to equal length) when shuffling, else
    mmdet's DistributedSampler (no shuffle, padded by repeating the head). Not distributed: batch
    num_gpus * samples_per_gpu, GroupSampler (shuffle with the global numpy RNG) or sequential.
    Collate is mmcv's (DataContainers stacked per GPU chunk of samples_per_gpu); workers are seeded
    by mmdet's worker_init_fn (num_workers * rank + worker_id + seed) when a seed is given.
    """
    if samples_per_gpu < 1:
        raise ValueError(f'samples_per_gpu must be >= 1, got {samples_per_gpu}')
    rank, world_size = get_dist_info()
    if dist:
        if shuffle:
            sampler = DistributedGroupSampler(dataset, samples_per_gpu, world_size, rank,
                                              seed=seed if seed is not None else 0)
        else:
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=False,
                                         seed=seed if seed is not None else 0)
        batch_size, num_workers = samples_per_gpu, workers_per_gpu
    else:
        sampler = GroupSampler(dataset, samples_per_gpu) if shuffle else None
        batch_size, num_workers = num_gpus * samples_per_gpu, num_gpus * workers_per_gpu
    init_fn = partial(worker_init_fn, num_workers=num_workers, rank=rank, seed=seed) if seed is not None else None
    kwargs.setdefault('pin_memory', False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=partial(collate, samples_per_gpu=samples_per_gpu), worker_init_fn=init_fn,
                      **kwargs)


def build_train_dataloader(dataset, samples_per_gpu, workers_per_gpu, cumulative_iters=1, seed=0, **kwargs):
    """Training loader of this process whose data order does not depend on the number of processes.

    loaders/samplers.py: GlobalBatchSampler deals global batches of world_size * samples_per_gpu *
    cumulative_iters samples from an order drawn from (seed, epoch) and cuts them into this rank's
    micro-batches; SampleSeededDataset seeds each sample's random augmentation from its position in
    the epoch, in whichever process or worker loads it. One process and several use the same
    sampler. The sampler's `set_epoch` is called by mmcv's DistSamplerSeedHook (register it always).
    """
    from .samplers import GlobalBatchSampler, SampleSeededDataset
    if samples_per_gpu < 1:
        raise ValueError(f'samples_per_gpu must be >= 1, got {samples_per_gpu}')
    rank, world_size = get_dist_info()
    sampler = GlobalBatchSampler(dataset, samples_per_gpu, world_size, rank, cumulative_iters=cumulative_iters,
                                 seed=seed)
    init_fn = partial(worker_init_fn, num_workers=workers_per_gpu, rank=rank, seed=seed)
    kwargs.setdefault('pin_memory', False)
    return DataLoader(SampleSeededDataset(dataset), batch_size=samples_per_gpu, sampler=sampler,
                      num_workers=workers_per_gpu, collate_fn=partial(collate, samples_per_gpu=samples_per_gpu),
                      worker_init_fn=init_fn, **kwargs)
