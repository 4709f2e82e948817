"""engine.parallel: batches unpacked onto one device, as mmcv's scatter does on the CPU."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcv.parallel import DataContainer as DC
from mmcv.parallel import collate, scatter

from engine.parallel import OPSDataParallel, unpack_batch


def sample(i):
    return dict(img=DC(torch.full((12, 3, 4, 8), i, dtype=torch.uint8), stack=True),
                img_metas=DC(dict(index=i, lidar2img=[np.eye(4, dtype=np.float32)] * 12), cpu_only=True),
                voxel_semantics=DC(torch.full((5, 5, 2), i, dtype=torch.uint8)))


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_unpack_batch_equals_mmcv_scatter_on_cpu():
    batch = collate([sample(0), sample(1)], samples_per_gpu=2)
    ours = unpack_batch(batch, torch.device('cpu'))
    assert_same(ours, scatter(batch, [-1])[0])
    assert ours['img'].shape == (2, 12, 3, 4, 8) and [m['index'] for m in ours['img_metas']] == [0, 1]


def test_unpack_batch_refuses_a_batch_for_several_devices():
    batch = collate([sample(0), sample(1)], samples_per_gpu=1)  # two chunks: one per GPU
    with pytest.raises(ValueError, match='one chunk'):
        unpack_batch(batch, torch.device('cpu'))


class Recorder(nn.Module):
    """train_step returns what it was given, to see where the wrapper put the batch."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def train_step(self, data, optimizer):
        return data


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_data_parallel_puts_the_batch_on_the_gpu():
    # mmcv 1.7's own scatter raises here on torch 2.x ('int' object has no attribute 'type')
    model = OPSDataParallel(Recorder().cuda(), device_ids=[0])
    out = model.train_step(collate([sample(3)], samples_per_gpu=1), None)
    assert out['img'].is_cuda and int(out['img'][0, 0, 0, 0, 0]) == 3
    assert out['voxel_semantics'][0].is_cuda
    assert out['img_metas'][0]['index'] == 3 and isinstance(out['img_metas'][0]['lidar2img'][0], np.ndarray)


def test_data_parallel_on_cpu_unpacks_the_batch():
    out = OPSDataParallel(Recorder(), device_ids=None).train_step(collate([sample(2)], samples_per_gpu=1), None)
    assert not out['img'].is_cuda and int(out['img'][0, 0, 0, 0, 0]) == 2 and out['img_metas'][0]['index'] == 2
