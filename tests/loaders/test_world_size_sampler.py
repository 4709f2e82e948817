"""The world-size-independent training sampler (loaders/samplers.py): the same global batches, in the
same order, with the same per-sample augmentation seeds, for any world size and accumulation."""
import random

import numpy as np
import pytest
from mmcv.parallel import DataContainer, collate
from torch.utils.data import DataLoader

from loaders.samplers import GlobalBatchSampler, SampleSeededDataset, SeededIndex, batch_sample_seeds


def optimizer_steps(num_samples, samples_per_gpu, world_size, cumulative_iters, epoch, seed=0):
    """[(sorted (index, seed) pairs of one optimizer step)] over all ranks, and each rank's length."""
    per_rank = []
    for rank in range(world_size):
        sampler = GlobalBatchSampler(list(range(num_samples)), samples_per_gpu, world_size, rank,
                                     cumulative_iters=cumulative_iters, seed=seed)
        sampler.set_epoch(epoch)
        items = [(int(i), i.seed) for i in sampler]
        assert len(items) == len(sampler)
        per_rank.append(items)
    micro = samples_per_gpu  # rank r's micro-batches: A per optimizer step
    per_step = samples_per_gpu * cumulative_iters
    steps = []
    for k in range(len(per_rank[0]) // per_step):
        step = [x for items in per_rank for x in items[k * per_step:(k + 1) * per_step]]
        steps.append(sorted(step))
    assert all(len(items) % micro == 0 for items in per_rank)
    return steps


SPLITS_OF_4 = [(4, 1, 1), (2, 2, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2), (1, 1, 4)]  # (b, W, A)


@pytest.mark.parametrize('num_samples', [3, 8, 11])
def test_same_global_batches_for_any_split(num_samples):
    for epoch in (0, 1, 5):
        reference = optimizer_steps(num_samples, 4, 1, 1, epoch)
        assert len(reference) == -(-num_samples // 4)
        for b, W, A in SPLITS_OF_4:
            assert optimizer_steps(num_samples, b, W, A, epoch) == reference, (b, W, A, epoch)
        indices = [i for step in reference for i, _ in step]
        assert set(indices) == set(range(num_samples))  # every sample, the padding repeats the head
        seeds = [s for step in reference for _, s in step]
        assert len(set(seeds)) == len(seeds)  # padded copies get their own augmentation


def test_epochs_and_seeds_change_the_order_ranks_agree():
    a = GlobalBatchSampler(range(50), 2, 4, 1, seed=0)
    b = GlobalBatchSampler(range(50), 2, 4, 1, seed=0)
    assert list(map(int, a)) == list(map(int, b))
    first = list(map(int, a))
    a.set_epoch(1)
    assert list(map(int, a)) != first
    assert list(map(int, GlobalBatchSampler(range(50), 2, 4, 1, seed=1))) != first
    plain = GlobalBatchSampler(range(5), 2, 2, 0, shuffle=False, seeded=False)
    assert list(plain) == [0, 1, 4, 0] and all(type(i) is int for i in plain)  # dataset order, padded from the head
    assert list(GlobalBatchSampler(range(5), 2, 2, 1, shuffle=False, seeded=False)) == [2, 3, 1, 2]


def test_refuses_bad_arguments_and_mixed_groups():
    class Grouped(list):
        flag = np.array([0, 1, 0])
    with pytest.raises(ValueError, match='aspect-ratio groups'):
        GlobalBatchSampler(Grouped([0, 1, 2]), 1)
    with pytest.raises(ValueError):
        GlobalBatchSampler(range(4), 1, world_size=2, rank=2)
    with pytest.raises(ValueError):
        GlobalBatchSampler(range(4), 0)


class NoisyDataset:
    """A training dataset whose pipeline draws from numpy's and Python's global RNGs, like the real one."""
    flag = np.zeros(6, dtype=np.uint8)

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return dict(index=int(index), aug=np.array([np.random.rand(), random.random()]),
                    img_metas=DataContainer(dict(index=int(index)), cpu_only=True))


def loaded(world_size, samples_per_gpu, num_workers):
    """{(epoch, position in the epoch): (index, aug, seed)} from every rank's loader."""
    out = {}
    for rank in range(world_size):
        sampler = GlobalBatchSampler(NoisyDataset(), samples_per_gpu, world_size, rank, seed=7)
        loader = DataLoader(SampleSeededDataset(NoisyDataset()), batch_size=samples_per_gpu, sampler=sampler,
                            num_workers=num_workers, collate_fn=lambda batch: collate(batch, samples_per_gpu))
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            positions = iter(sampler.positions())
            for batch in loader:
                seeds = batch_sample_seeds(batch)
                for index, aug, seed in zip(batch['index'], batch['aug'], seeds):
                    out[epoch, next(positions)] = (int(index), tuple(aug.tolist()), seed)
    return out


def test_augmentation_follows_the_sample_not_the_rank_or_worker():
    np.random.seed(123)
    random.seed(123)
    state = np.random.get_state()[1].copy(), random.getstate()
    reference = loaded(1, 4, num_workers=0)
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]  # restored
    assert len(reference) == 2 * 8 and len({v[1] for v in reference.values()}) == 16
    assert loaded(2, 2, num_workers=0) == reference
    assert loaded(4, 1, num_workers=2) == reference  # worker processes: the seed travels with the index


def test_seeded_index_is_an_int():
    index = SeededIndex(3, 99)
    assert index == 3 and [10, 11, 12, 13][index] == 13 and index.seed == 99
    import pickle
    again = pickle.loads(pickle.dumps(index))
    assert again == 3 and again.seed == 99
    wrapped = SampleSeededDataset(NoisyDataset())
    assert len(wrapped) == 6 and wrapped.flag is NoisyDataset.flag  # attributes of the wrapped dataset
    assert 'sample_seed' not in wrapped[2]['img_metas'].data  # a plain index passes straight through
    assert wrapped[index]['img_metas'].data['sample_seed'] == 99
