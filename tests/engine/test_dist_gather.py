"""Distributed evaluation without a shared filesystem: results gathered through collectives.

Two gloo processes, each in its own working folder, gather their results on rank 0 with
engine.inference.collect_results (engine.dist.gather_object_chunks: pickled, in chunks of a few
bytes here so that one result spans many collectives); nothing is written to either folder.
"""
import os
import pickle
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.dist import gather_object_chunks
from engine.inference import collect_results, sampler_indices


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def make_results(num_samples):
    rng = np.random.RandomState(0)
    return [dict(sem_pred=rng.randint(0, 17, size=40 * (i + 1)).astype(np.uint8),
                 occ_loc=rng.randint(0, 200, size=(40 * (i + 1), 3)).astype(np.int64)) for i in range(num_samples)]


def worker(rank, world_size, port, results, folders, out):
    torch.set_num_threads(1)
    os.chdir(folders[rank])  # each rank its own "machine": no folder in common
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        part = [results[i] for i in sampler_indices(len(results), rank, world_size)]
        gathered = collect_results(part, len(results), chunk_bytes=97)
        # uneven sizes: rank 0 sends a few bytes, the last rank 300 kB (many rounds, empty pieces from the others)
        payload = np.arange(rank * 40000, dtype=np.int64)
        objects = gather_object_chunks(dict(rank=rank, payload=payload), dst=0, chunk_bytes=64 * 1024)
        everywhere = [os.listdir(folder) for folder in folders]
        if rank == 0:
            with open(out, 'wb') as f:
                pickle.dump(dict(gathered=gathered, objects=objects, listing=everywhere), f)
        else:
            assert gathered is None and objects is None
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ranks_in_separate_folders_gather_through_collectives(tmp_path):
    num_samples, world_size = 5, 3  # the sampler pads the last rank with sample 0
    results = make_results(num_samples)
    folders = []
    for rank in range(world_size):
        (tmp_path / f'machine{rank}').mkdir()
        folders.append(str(tmp_path / f'machine{rank}'))
    out = tmp_path / 'gathered.pkl'
    mp.spawn(worker, args=(world_size, free_port(), results, folders, str(out)), nprocs=world_size, join=True)
    with open(out, 'rb') as f:
        got = pickle.load(f)
    assert len(got['gathered']) == num_samples  # dataset order restored, the sampler's padding dropped
    for mine, want in zip(got['gathered'], results):
        np.testing.assert_array_equal(mine['sem_pred'], want['sem_pred'])
        np.testing.assert_array_equal(mine['occ_loc'], want['occ_loc'])
    assert [o['rank'] for o in got['objects']] == list(range(world_size))
    for rank, obj in enumerate(got['objects']):
        np.testing.assert_array_equal(obj['payload'], np.arange(rank * 40000, dtype=np.int64))
    assert got['listing'] == [[]] * world_size, 'a rank wrote into a working folder'
    assert all(os.listdir(folder) == [] for folder in folders)


def test_one_process_needs_no_process_group():
    assert gather_object_chunks({'a': 1}) == [{'a': 1}]
    assert collect_results([1, 2, 3, 4], 3) == [1, 2, 3]
