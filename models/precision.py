"""Precision of float32 matrix products inside a block: torch's global setting, restored after.

The fast modes run the decoder's large products (the adaptive mixing's generated weights, the
sampling offsets) on TF32 tensor cores (10 mantissa bits), and the fast test mode keeps float32
(23 bits) in the small per-query layers whose outputs place the points and set the class scores
(docs/performance.md, "Where the fast test mode loses voxels"). A CUDA graph captured inside a block
keeps the kernels it recorded.
"""
import contextlib

import torch

__all__ = ['matmul_precision', 'tf32_matmuls', 'float32_matmuls']


@contextlib.contextmanager
def matmul_precision(precision, enabled=True):
    """`torch.set_float32_matmul_precision(precision)` inside the block when `enabled`, restored after."""
    if not enabled:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def tf32_matmuls(enabled):
    """float32 matrix products on TF32 tensor cores inside the block (the fast modes' decoder)."""
    return matmul_precision('high', enabled)


def float32_matmuls(enabled):
    """Full float32 matrix products inside the block (no TF32), whatever the setting outside."""
    return matmul_precision('highest', enabled)
