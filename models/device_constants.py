"""Small constant vectors written on the device by fill kernels instead of copied from host memory.

A copy from pageable host memory cannot be captured into a CUDA graph, and outside a capture PyTorch waits for
the device's queue after it (the voxeliser is captured; the sparse convolutions run eagerly, one convolution
after another).
"""
import torch

__all__ = ['device_vector']


def device_vector(values, dtype, device):
    """A 1-D tensor of `values` (numbers) on `device`, written by one fill kernel per value."""
    out = torch.empty(len(values), dtype=dtype, device=device)
    for i, value in enumerate(values):
        out[i].fill_(value)   # a scalar kernel argument (`out[i] = value` would copy a host tensor)
    return out
