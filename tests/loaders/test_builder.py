"""Batch-size scaling, samplers, collate and worker seeding of loaders.builder."""
import numpy as np
import pytest
import torch
from mmcv.parallel import DataContainer as DC
from mmdet.datasets.samplers import DistributedGroupSampler, DistributedSampler, GroupSampler
from torch.utils.data import Dataset, SequentialSampler

from loaders import builder
from loaders.builder import build_dataloader, per_gpu_batch_size


class ToyOccDataset(Dataset):
    """Samples shaped like the pipeline output: stacked images, cpu-only metas, occupancy arrays."""

    def __init__(self, n=10):
        self.n = n
        self.flag = np.zeros(n, dtype=np.uint8)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return dict(img=DC(torch.full((12, 3, 4, 8), i, dtype=torch.uint8), stack=True),
                    img_metas=DC(dict(index=i, lidar2img=[np.eye(4, dtype=np.float32)] * 12), cpu_only=True),
                    voxel_semantics=np.full((200, 200, 16), i, np.uint8),
                    mask_camera=np.ones((200, 200, 16), bool))


@pytest.mark.parametrize('total, world, expected', [(8, 8, 1), (8, 4, 2), (8, 1, 8), (16, 8, 2)])
def test_per_gpu_batch_size(total, world, expected):
    assert per_gpu_batch_size(total, world) == expected


def test_per_gpu_batch_size_warns_or_refuses():
    with pytest.warns(UserWarning, match='effective total batch is 6'):
        assert per_gpu_batch_size(8, 3) == 2
    with pytest.raises(ValueError, match='smaller than the number of processes'):
        per_gpu_batch_size(2, 4)


def test_single_process_loaders():
    ds = ToyOccDataset(10)
    np.random.seed(0)
    loader = build_dataloader(ds, samples_per_gpu=2, workers_per_gpu=0, num_gpus=1, shuffle=True)
    assert isinstance(loader.sampler, GroupSampler) and loader.batch_size == 2
    seen = [m['index'] for b in loader for m in b['img_metas'].data[0]]
    assert sorted(seen) == list(range(10)) and seen != list(range(10))  # a shuffled epoch
    loader = build_dataloader(ds, samples_per_gpu=3, workers_per_gpu=0, shuffle=False)
    assert isinstance(loader.sampler, SequentialSampler)
    batch = next(iter(loader))
    assert batch['img'].data[0].shape == (3, 12, 3, 4, 8) and batch['img'].data[0].dtype == torch.uint8
    assert batch['voxel_semantics'].shape == (3, 200, 200, 16) and batch['voxel_semantics'].dtype == torch.uint8
    assert batch['mask_camera'].dtype == torch.bool
    assert [m['index'] for m in batch['img_metas'].data[0]] == [0, 1, 2]
    # two GPUs in one process (DataParallel): batch 2 x 2, collated in per-GPU chunks
    loader = build_dataloader(ds, samples_per_gpu=2, workers_per_gpu=1, num_gpus=2, shuffle=False)
    assert loader.batch_size == 4 and loader.num_workers == 2
    batch = next(iter(loader))
    assert [t.shape[0] for t in batch['img'].data] == [2, 2]


def test_distributed_samplers(monkeypatch):
    ds = ToyOccDataset(7)
    monkeypatch.setattr(builder, 'get_dist_info', lambda: (1, 2))
    loader = build_dataloader(ds, samples_per_gpu=2, workers_per_gpu=0, dist=True, shuffle=True, seed=0)
    assert isinstance(loader.sampler, DistributedGroupSampler)
    assert loader.sampler.rank == 1 and loader.sampler.num_replicas == 2 and len(loader.sampler) == 4
    loader = build_dataloader(ds, samples_per_gpu=1, workers_per_gpu=0, dist=True, shuffle=False)
    assert isinstance(loader.sampler, DistributedSampler)
    assert list(loader.sampler) == [1, 3, 5, 0]  # rank 1 of 2, padded by repeating the head
    assert [b['img_metas'].data[0][0]['index'] for b in loader] == [1, 3, 5, 0]


def test_workers_are_seeded_only_with_a_seed(monkeypatch):
    ds = ToyOccDataset(4)
    assert build_dataloader(ds, 1, 2, shuffle=False).worker_init_fn is None
    monkeypatch.setattr(builder, 'get_dist_info', lambda: (1, 2))
    init = build_dataloader(ds, 1, 2, dist=True, shuffle=False, seed=10).worker_init_fn
    init(1)
    got = np.random.rand()
    np.random.seed(2 * 1 + 1 + 10)  # num_workers * rank + worker_id + seed
    assert got == np.random.rand()
