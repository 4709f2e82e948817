"""A training sampler that deals the same global batches whatever the number of processes.

mmdet's samplers make the data order depend on the world size: GroupSampler (one process) shuffles
with numpy's global RNG, DistributedGroupSampler gives each rank a contiguous block of a shuffled
list, so the samples that meet in one optimizer step change with the GPU count, and the random
augmentation of a sample depends on the rank and the data-loading worker that loads it
(mmdet's worker_init_fn seeds per rank and worker).

`GlobalBatchSampler` fixes both, for any world size W, samples per process b and gradient
accumulation A (global batch G = W * b * A):

* epoch e's order is a permutation drawn from (seed, e) alone, padded by repeating its head to a
  multiple of G; global batch k is positions [k*G, (k+1)*G) of it;
* global batch k is cut into W*A micro-batches of b: micro-batch a*W + r goes to rank r at its
  accumulation step a, so every optimizer step sees the same G samples for every W;
* every position of the epoch gets a seed, drawn from (seed, e) as well; the sampler yields
  `SeededIndex` objects (ints that carry it), and `SampleSeededDataset` seeds numpy's and Python's
  global RNGs with it around the pipeline of that sample (the random resize, crop, flip, sweep
  choice) and records it in the sample's `img_metas['sample_seed']`, from where
  engine.distributed_hooks.SampleSeedHook hands it to the model's photometric distortion.
"""
import math
import random

import numpy as np
from torch.utils.data import Dataset, Sampler

__all__ = ['SeededIndex', 'GlobalBatchSampler', 'SampleSeededDataset', 'batch_sample_seeds']


class SeededIndex(int):
    """A dataset index (an int) with the seed of its sample's random augmentation in `.seed`."""

    def __new__(cls, index, seed):
        obj = super().__new__(cls, index)
        obj.seed = int(seed)
        return obj

    def __reduce__(self):  # to data-loading workers and back
        return SeededIndex, (int(self), self.seed)

    def __repr__(self):
        return f'SeededIndex({int(self)}, seed={self.seed})'


class GlobalBatchSampler(Sampler):
    """Per-rank indices such that the union of the ranks' micro-batches of one optimizer step is the
    same global batch for every world size (module docstring).

    Args:
        dataset: anything with len(); all samples must have the same image shape (mmdet's `flag`
            groups, if the dataset has them, must be a single group).
        samples_per_gpu (int): b, samples per process and iteration.
        world_size (int), rank (int): W and this process's rank.
        cumulative_iters (int): A, iterations accumulated into one optimizer step.
        seed (int): the run's seed; the order of epoch e depends on (seed, e) only.
        shuffle (bool): False: dataset order (padded likewise).
        seeded (bool): yield SeededIndex (True) or plain ints.
    """

    def __init__(self, dataset, samples_per_gpu, world_size=1, rank=0, cumulative_iters=1, seed=0, shuffle=True,
                 seeded=True):
        for name, value in (('samples_per_gpu', samples_per_gpu), ('world_size', world_size),
                            ('cumulative_iters', cumulative_iters)):
            if int(value) < 1:
                raise ValueError(f'GlobalBatchSampler: {name} must be >= 1, got {value}')
        if not 0 <= rank < world_size:
            raise ValueError(f'GlobalBatchSampler: rank {rank} outside 0..{world_size - 1}')
        flag = getattr(dataset, 'flag', None)
        if flag is not None and len(np.unique(np.asarray(flag))) > 1:
            raise ValueError('GlobalBatchSampler: the dataset has several aspect-ratio groups (flag); '
                             'mixed image shapes cannot be batched by this sampler')
        self.num_samples = len(dataset)
        if self.num_samples < 1:
            raise ValueError('GlobalBatchSampler: empty dataset')
        self.samples_per_gpu, self.world_size, self.rank = int(samples_per_gpu), int(world_size), int(rank)
        self.cumulative_iters = int(cumulative_iters)
        self.global_batch = self.samples_per_gpu * self.world_size * self.cumulative_iters
        self.num_batches = math.ceil(self.num_samples / self.global_batch)
        self.seed, self.shuffle, self.seeded = int(seed), bool(shuffle), bool(seeded)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Called by mmcv's DistSamplerSeedHook before every epoch."""
        self.epoch = int(epoch)

    def global_order(self, epoch=None):
        """(indices, seeds): int64 arrays of num_batches * global_batch entries, the same on every rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.RandomState(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        total = self.num_batches * self.global_batch
        order = np.resize(order, total)  # pads by repeating the head
        seeds = rng.randint(0, 2 ** 31 - 1, size=total, dtype=np.int64)
        return order.astype(np.int64), seeds

    def positions(self):
        """Positions in the global order that this rank yields, in the order it yields them."""
        b, W, A, G = self.samples_per_gpu, self.world_size, self.cumulative_iters, self.global_batch
        out = []
        for k in range(self.num_batches):
            for a in range(A):
                start = k * G + (a * W + self.rank) * b
                out.extend(range(start, start + b))
        return out

    def __iter__(self):
        order, seeds = self.global_order()
        for p in self.positions():
            yield SeededIndex(order[p], seeds[p]) if self.seeded else int(order[p])

    def __len__(self):
        return self.num_batches * self.cumulative_iters * self.samples_per_gpu


class SampleSeededDataset(Dataset):
    """Wraps a training dataset: a SeededIndex seeds numpy's and Python's global RNG for its sample.

    The RNG states are restored afterwards, so loading does not disturb the process's own streams;
    the seed is recorded in `img_metas['sample_seed']` (when the sample has an img_metas DataContainer
    holding a dict). Plain int indices pass straight through. Other attributes are the wrapped
    dataset's (`flag`, `data_infos`, `evaluate`, ...).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __getattr__(self, name):
        if name == 'dataset' or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        seed = getattr(index, 'seed', None)
        if seed is None:
            return self.dataset[index]
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(seed)
        random.seed(seed)
        try:
            data = self.dataset[int(index)]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        metas = data.get('img_metas') if isinstance(data, dict) else None
        if metas is not None and isinstance(getattr(metas, 'data', None), dict):
            metas.data['sample_seed'] = int(seed)
        return data

    def __repr__(self):
        return f'SampleSeededDataset({self.dataset!r})'


def batch_sample_seeds(data_batch):
    """The `sample_seed`s of a collated batch's img_metas, in batch order; None if any sample lacks one."""
    metas = data_batch.get('img_metas') if isinstance(data_batch, dict) else None
    if metas is None:
        return None
    chunks = getattr(metas, 'data', metas)  # DataContainer: a list of per-device chunks
    dicts = []
    for chunk in chunks:
        if isinstance(chunk, dict):
            dicts.append(chunk)
        else:
            dicts.extend(chunk)
    if not dicts or not all(isinstance(m, dict) and 'sample_seed' in m for m in dicts):
        return None
    return [int(m['sample_seed']) for m in dicts]
