"""Putting a collated batch on one process's device, and the single/multi-process model wrappers.

mmcv 1.7's ``scatter`` cannot send a batch to a GPU on torch 2.x: it hands integer GPU ids to
torch's private ``_get_stream``, which now takes a ``torch.device`` ("'int' object has no
attribute 'type'"). One process here always drives exactly one device, so a batch is simply
unpacked: every ``DataContainer`` is replaced by its (single) chunk, and tensors that are not
``cpu_only`` move to the device.
"""
import torch
import torch.nn as nn
from mmcv.parallel import DataContainer, MMDataParallel, MMDistributedDataParallel

__all__ = ['unpack_batch', 'OPSDataParallel', 'OPSDistributedDataParallel']


def unpack_batch(obj, device):
    """A collated batch (``mmcv.parallel.collate`` output) -> the model's inputs on `device`.

    Args:
        obj: dict / list / tuple / DataContainer / Tensor, nested as the data loader yields it.
        device (torch.device): this process's device.
    Returns:
        the same structure without DataContainers; tensors of non-``cpu_only`` containers (images,
        labels) on `device`, ``cpu_only`` ones (img_metas) untouched.
    Raises:
        ValueError: a DataContainer holds several chunks (collate was given more samples than
            `samples_per_gpu`: that batch is meant for several devices).
    """
    if isinstance(obj, DataContainer):
        if len(obj.data) != 1:
            raise ValueError(f'a batch for one device must hold one chunk per DataContainer, got {len(obj.data)}: '
                             f'collate with samples_per_gpu equal to the number of samples of this process')
        chunk = obj.data[0]
        return chunk if obj.cpu_only else unpack_batch(chunk, device)  # a chunk holds no containers
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack_batch(x, device) for x in obj)
    if isinstance(obj, dict):
        return type(obj)((k, unpack_batch(v, device)) for k, v in obj.items())
    return obj


def _scatter_to(device_ids, inputs, kwargs):
    device = torch.device('cuda', device_ids[0]) if device_ids and device_ids[0] >= 0 else torch.device('cpu')
    return [unpack_batch(tuple(inputs), device)], [unpack_batch(dict(kwargs or {}), device)]


class OPSDataParallel(MMDataParallel):
    """MMDataParallel for one device with a torch-2.x-safe scatter.

    Args:
        module (nn.Module): the detector, already on its device.
        device_ids (list[int] | None): [gpu index], or None for the CPU. (torch's DataParallel
            would read None as "all GPUs" on a machine that has them; here it means the CPU.)
    """

    def __init__(self, module, device_ids=None, dim=0):
        if device_ids:
            if len(device_ids) != 1:
                raise ValueError(f'OPSDataParallel drives one device per process, got device_ids={device_ids}; '
                                 f'use dist_train.sh for several GPUs')
            super().__init__(module, device_ids=device_ids, dim=dim)
        else:
            # what DataParallel sets up on a machine without GPUs: train_step/forward then run on the CPU
            nn.Module.__init__(self)
            self.module = module
            self.device_ids = []
            self.dim = dim

    def scatter(self, inputs, kwargs, device_ids):
        return _scatter_to(device_ids, inputs, kwargs)


class OPSDistributedDataParallel(MMDistributedDataParallel):
    """mmcv's DDP wrapper made to work on torch 2.x, on GPUs (NCCL) and on the CPU (gloo).

    mmcv's train_step/val_step scatter the batch only when `device_ids` is set (GPUs), with a call
    torch 2.x rejects: `scatter` is replaced, and on the CPU (no `device_ids`) the batch is unpacked
    before them. Its `_run_ddp_forward` reads an attribute torch 2.x no longer has: replaced too.
    """

    def scatter(self, inputs, kwargs, device_ids):
        return _scatter_to(device_ids, inputs, kwargs)

    def _unpack(self, inputs, kwargs):
        inputs, kwargs = self.scatter(inputs, kwargs, self.device_ids or [-1])
        return inputs[0], kwargs[0]

    def train_step(self, *inputs, **kwargs):
        if not self.device_ids:
            inputs, kwargs = self._unpack(inputs, kwargs)
        return super().train_step(*inputs, **kwargs)

    def val_step(self, *inputs, **kwargs):
        if not self.device_ids:
            inputs, kwargs = self._unpack(inputs, kwargs)
        return super().val_step(*inputs, **kwargs)

    def _run_ddp_forward(self, *inputs, **kwargs):
        inputs, kwargs = self._unpack(inputs, kwargs)
        return self.module(*inputs, **kwargs)
