"""Running a detector over a test set, in one or several processes (what mmdet's apis/test.py does).

* `sampler_indices`: the dataset indices of one rank, as mmdet's `DistributedSampler(shuffle=False)`
  deals them (the list padded to a multiple of the process count by repeating its head, then rank r
  takes positions r, r + W, r + 2W, ...);
* `run_inference`: the loop over this rank's samples (batches of any size), results compacted on the CPU and
  optionally saved as `<token>.npz` (evaluation/predictions.py);
* `collect_results`: gathers the per-rank lists into dataset order on rank 0 through the process
  group (torch.distributed collectives, in chunks; no shared folder);
* `inference`: all three, the way val.py runs a model (docs/evaluation.md, "One process vs. several").
"""
import os
import os.path as osp
import time

import torch
import torch.distributed as dist

from engine.dist import DEFAULT_CHUNK_BYTES, gather_object_chunks
from evaluation.predictions import compact_result, save_prediction

__all__ = ['sampler_indices', 'real_sample_count', 'run_inference', 'prefetched_batches', 'loader_rate',
           'collect_results', 'inference']


def sampler_indices(num_samples, rank, world_size):
    """Dataset indices of one rank under mmdet's DistributedSampler(shuffle=False).

    The index list is padded to a multiple of `world_size` by repeating it from the start, then
    rank r takes positions r, r + W, r + 2W, ...
    """
    total = -(-num_samples // world_size) * world_size
    padded = (list(range(num_samples)) * -(-total // max(num_samples, 1)))[:total]
    return padded[rank:total:world_size]


def real_sample_count(num_indices, num_samples, rank, world_size):
    """How many of a rank's `num_indices` samples are real, not the sampler's padding.

    Item k of rank r sits at padded position k * W + r; positions below `num_samples` are real.
    """
    return sum(1 for k in range(num_indices) if k * world_size + rank < num_samples)


@torch.no_grad()
def run_inference(model, data_loader, indices, device, data_infos, save_dir=None, save_count=None,
                  show_progress=True, timing=None, on_result=None):
    """Run the model over this rank's samples; returns the compacted results in sampler order.

    Args:
        model: the detector in eval mode, on `device`; called as `model(return_loss=False,
            rescale=True, **batch)` and returning one `dict(sem_pred, occ_loc)` per sample.
        data_loader: loader (any batch size) whose sampler yields `indices`, in order.
        indices (list[int]): the dataset index of every sample the loader yields.
        data_infos (list[dict]): the dataset's infos (for the `token` of saved predictions).
        save_dir (str | None): also write `<token>.npz` there.
        save_count (int | None): only the first `save_count` results are written: the rest are the
            sampler's padding, copies of samples another rank writes (two processes must not write
            one file at once). None = all.
        show_progress (bool): tqdm bar.
        timing (dict | None): filled with `batch_ends` / `batch_sizes` (each batch's end, seconds from the start,
            and its samples; the first batch's end holds the data loader's start, the graph capture and the kernel
            compilation) and `total_s` (the loop's seconds).
        on_result (callable | None): called as `on_result(dataset index, result)` for each of the first `save_count`
            results as it comes (val.py's evaluation thread).
    """
    from tqdm import tqdm

    from engine.parallel import unpack_batch
    results = []
    bar = tqdm(total=len(indices), desc='inference', dynamic_ncols=True, disable=not show_progress)
    save_count = len(indices) if save_count is None else save_count
    start = time.perf_counter()
    batch_ends, batch_sizes = [], []
    for data in data_loader:
        data = unpack_batch(data, device)
        outputs = model(return_loss=False, rescale=True, **data)
        batch = len(data['img_metas'][0]) if isinstance(data['img_metas'][0], (list, tuple)) else 1
        if len(outputs) != batch:
            raise RuntimeError(f'the model returned {len(outputs)} results for a batch of {batch} samples')
        for output in outputs:
            position = len(results)
            result = compact_result(output)
            if save_dir is not None and position < save_count:
                save_prediction(osp.join(save_dir, f'{data_infos[indices[position]]["token"]}.npz'), result)
            if on_result is not None and position < save_count:
                on_result(indices[position], result)
            results.append(result)
        batch_ends.append(time.perf_counter() - start)
        batch_sizes.append(len(outputs))
        bar.update(len(outputs))
    bar.close()
    if timing is not None:
        timing.update(batch_ends=batch_ends, batch_sizes=batch_sizes, total_s=time.perf_counter() - start)
    if len(results) != len(indices):
        raise RuntimeError(f'the data loader yielded {len(results)} samples, expected {len(indices)}')
    return results


def collect_results(result_part, size, chunk_bytes=DEFAULT_CHUNK_BYTES):
    """Gather per-rank result lists into dataset order on rank 0 through the process group.

    The lists travel with torch.distributed (engine.dist.gather_object_chunks: pickled, at most
    `chunk_bytes` per rank and collective), so the ranks need no shared folder (several nodes, each
    with its own disk); rank 0 interleaves them (item k of rank r is sample k*W + r) and drops the
    sampler's padding. gloo (CPU) or NCCL (through the current GPU, chunk by chunk).

    Args:
        result_part (list): this rank's results in sampler order.
        size (int): dataset length.
        chunk_bytes (int): bytes per rank and collective.
    Returns:
        list of `size` results on rank 0, None on the other ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(result_part)[:size]
    world_size = dist.get_world_size()
    parts = gather_object_chunks(list(result_part), dst=0, chunk_bytes=chunk_bytes)
    if parts is None:
        return None
    lengths = [len(p) for p in parts]
    if len(set(lengths)) != 1 or lengths[0] * world_size < size:
        raise RuntimeError(f'ranks returned {lengths} results for {size} samples; every rank must process '
                           f'the same padded number of samples (mmdet DistributedSampler)')
    return [item for group in zip(*parts) for item in group][:size]


def prefetched_batches(data_loader):
    """Batches a torch DataLoader holds ready beyond the one being consumed: `num_workers * prefetch_factor` with
    worker processes, none without."""
    workers = getattr(data_loader, 'num_workers', 0)
    return workers * (getattr(data_loader, 'prefetch_factor', None) or 2) if workers > 0 else 0


def loader_rate(batch_ends, batch_sizes, skip):
    """Samples per second over the batches after the first `1 + skip`, or None when fewer than two are left.

    While the first batch runs (graph capture, kernel compilation), the loader's workers fill their queue: the next
    `skip` batches (`prefetched_batches`) are ready at once, and a rate counting them runs ahead of the loader.
    From the end of batch `skip` on, each batch waits for the loader or the model as it would in a long run.
    """
    first = 1 + skip
    if len(batch_ends) < first + 2:
        return None
    return sum(batch_sizes[first:]) / (batch_ends[-1] - batch_ends[first - 1])


def inference(model, data_loader, dataset, device, rank, world_size, save_dir=None, logger=None, on_result=None):
    """Run `model` over the whole `dataset`, each rank on its share; results in dataset order on rank 0.

    Args:
        data_loader: batch-1, unshuffled loader of this rank (engine.build.build_test_loader).
        save_dir (str | None): each rank also writes its real samples as `<token>.npz` there.
        on_result (callable | None): `run_inference`'s, with this rank's real samples.
    Returns:
        list of `len(dataset)` results (`dict(sem_pred uint8 [M], occ_loc [M, 3])`) on rank 0, None elsewhere.
    """
    indices = list(iter(data_loader.sampler))
    if indices != sampler_indices(len(dataset), rank, world_size):
        raise RuntimeError('the data loader does not deal samples like mmdet\'s DistributedSampler(shuffle=False); '
                           'collect_results could not restore the dataset order')
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
    real = real_sample_count(len(indices), len(dataset), rank, world_size)
    timing = {}
    part = run_inference(model, data_loader, indices, device, dataset.data_infos, save_dir, real,
                         show_progress=rank == 0, timing=timing, on_result=on_result)
    if logger is not None:
        ends, sizes, total = timing['batch_ends'], timing['batch_sizes'], timing['total_s']
        first_s = ends[0] if ends else 0.0
        rest, rest_s = len(part) - (sizes[0] if sizes else 0), total - first_s
        steady = f'; after the first batch ({first_s:.1f} s: graph capture, kernel compilation) ' \
            f'{rest / rest_s:.2f} samples/s' if rest > 0 and rest_s > 0 else ''
        skip = prefetched_batches(data_loader)
        rate = loader_rate(ends, sizes, skip)
        if steady and rate is not None:
            steady += f'; after the {skip} batches the loader had prefetched by then {rate:.2f} samples/s'
        logger.info(f'inference: {len(part)} samples on rank {rank} in {total:.1f} s{steady}')
    return collect_results(part, len(dataset))
