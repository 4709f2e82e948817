"""engine/inference.py: multi-process inference on CPU (gloo): the sampler's share of each rank, gathered
results and metrics equal the single-process ones."""
import json
import os
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.inference import collect_results, loader_rate, prefetched_batches, real_sample_count, sampler_indices
from evaluation.evaluator import evaluate_occupancy
from evaluation.predictions import compact_result
from evaluation.ray_iou import generate_lidar_rays
from occ_world import make_world

RAYS = generate_lidar_rays()[::131]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def worker(rank, world_size, port, results, infos, occ_root, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        part = [compact_result(results[i]) for i in sampler_indices(len(results), rank, world_size)]
        gathered = collect_results(part, len(results))
        again = collect_results(part, len(results))   # a second gather over the same group: the same list
        if rank == 0:
            metrics = evaluate_occupancy(gathered, infos, occ_root, logger='silent', device='cpu', rays=RAYS,
                                         show_progress=False)
            with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
                json.dump(metrics, f)
            with open(os.path.join(out_dir, 'gathered.pkl'), 'wb') as f:
                pickle.dump([gathered, again], f)
        else:
            assert gathered is None and again is None
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path):
    torch.set_num_threads(1)
    num_samples = 5  # odd: the sampler pads rank 1 with sample 0
    infos, _, results = make_world(tmp_path / 'gts', num_samples=num_samples)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    mp.spawn(worker, args=(2, free_port(), results, infos, str(tmp_path / 'gts'), str(out_dir)), nprocs=2, join=True)
    with open(out_dir / 'gathered.pkl', 'rb') as f:
        gathered, again = pickle.load(f)
    for collected in (gathered, again):
        assert len(collected) == num_samples
        for got, want in zip(collected, results):  # dataset order restored, padding dropped
            np.testing.assert_array_equal(got['sem_pred'], want['sem_pred'])
            np.testing.assert_array_equal(got['occ_loc'], want['occ_loc'])
    with open(out_dir / 'metrics.json') as f:
        multi = json.load(f)
    single = evaluate_occupancy(results, infos, str(tmp_path / 'gts'), logger='silent', device='cpu', rays=RAYS,
                                show_progress=False)
    assert multi == single
    assert sorted(os.listdir(out_dir)) == ['gathered.pkl', 'metrics.json']   # no folder of per-rank parts


@pytest.mark.parametrize('num_samples,world_size', [(5, 2), (6, 3), (7, 4), (2, 4), (1, 3)])
def test_sampler_indices_follow_mmdet(num_samples, world_size):
    # Padding repeats the list from its head; rank r takes r, r + W, ...
    total = -(-num_samples // world_size) * world_size
    padded = [i % num_samples for i in range(total)]
    for rank in range(world_size):
        assert sampler_indices(num_samples, rank, world_size) == padded[rank::world_size]
    samplers = pytest.importorskip('mmdet.datasets.samplers')
    for rank in range(world_size):
        sampler = samplers.DistributedSampler(list(range(num_samples)), num_replicas=world_size, rank=rank,
                                              shuffle=False)
        assert list(iter(sampler)) == sampler_indices(num_samples, rank, world_size)
    # each real sample is counted on exactly one rank: the padding copies are not
    counts = [real_sample_count(len(sampler_indices(num_samples, r, world_size)), num_samples, r, world_size)
              for r in range(world_size)]
    assert sum(counts) == num_samples


def test_single_process_collect_is_identity():
    assert collect_results([1, 2, 3, 4], 3) == [1, 2, 3]


def test_the_loader_rate_skips_the_batches_prefetched_during_the_first():
    """A first batch of 10 s (capture), two prefetched batches that come at once, then one sample every 0.5 s:
    the rate after the first batch counts the two free ones, the loader rate does not."""
    ends = [10.0, 10.01, 10.02, 10.52, 11.02, 11.52, 12.02]
    sizes = [1] * 7
    after_first = sum(sizes[1:]) / (ends[-1] - ends[0])                # 6 / 2.02 s: runs ahead of the loader
    assert loader_rate(ends, sizes, skip=2) == pytest.approx(4 / 2.0)  # batches 3..6 in 12.02 - 10.02 s
    assert after_first > 2.9
    assert loader_rate(ends, [2] * 7, skip=2) == pytest.approx(8 / 2.0)
    assert loader_rate(ends[:4], sizes[:4], skip=2) is None             # one batch past the prefetched ones


@pytest.mark.parametrize('workers, prefetch, expected', [(0, None, 0), (3, None, 6), (4, 3, 12)])
def test_prefetched_batches_of_a_data_loader(workers, prefetch, expected):
    """torch's DataLoader keeps `prefetch_factor` batches per worker (2 by default), none without workers."""
    kwargs = dict(num_workers=workers) if prefetch is None else dict(num_workers=workers, prefetch_factor=prefetch)
    loader = torch.utils.data.DataLoader(list(range(4)), **kwargs)
    assert prefetched_batches(loader) == expected
