"""torch's float32 matrix-product precision inside a block, shared by the execution policies (accel/precision.py)
and the autograd Functions whose backward must run at their forward's precision (models/sparse_conv.py)."""
import contextlib

import torch

__all__ = ['matmul_precision']


@contextlib.contextmanager
def matmul_precision(precision):
    """`torch.set_float32_matmul_precision(precision)` inside the block, restored after (None: unchanged)."""
    if precision is None:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
