"""A tensor that autograd would keep for the backward pass, recomputed there instead.

The training self-attention of OPS-L hands SDPA a `[B, H, Q, Q]` logit bias (737 MB per layer in float32
at Q = 4,800); SDPA's memory-efficient kernel keeps it for its backward. The bias is one elementwise
product of small tensors, so computing it again in the backward costs a fraction of a millisecond,
while keeping it holds six of them through the decoder's forward and backward (accel/fused_attention.py).
"""
import contextlib

import torch

__all__ = ['recompute_when_saved']


class _Recipe:
    """What autograd keeps in place of the tensor: the function that computes it again."""
    __slots__ = ('recompute',)

    def __init__(self, recompute):
        self.recompute = recompute


def _signature(tensor):
    return tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype, tensor.device


@contextlib.contextmanager
def recompute_when_saved(tensor, recompute):
    """Inside the context, an operation that saves `tensor` for its backward keeps `recompute` instead, and
    its backward calls it (without autograd) when it reads the tensor.

    Args:
        tensor (Tensor): the tensor not to keep (matched by storage, shape, strides and dtype; an operation
            that saves a copy or another view of it keeps that as usual).
        recompute (callable): `() -> Tensor` with `tensor`'s values, bit for bit: the same deterministic
            kernels on inputs that do not change before the backward. It must not hold `tensor` itself.

    Every other saved tensor is kept as autograd keeps it. These hooks replace any enclosing ones for the
    operations inside (autograd applies the innermost pair): inside a checkpointed region those operations'
    other saved tensors are kept rather than recomputed, so keep the context around the one operation.
    """
    target = _signature(tensor)

    def pack(saved):
        if saved.numel() and _signature(saved) == target:
            return _Recipe(recompute)
        # detached: an operation that saves its own output would otherwise hold its grad_fn in a cycle
        return saved.detach()

    def unpack(packed):
        if isinstance(packed, _Recipe):
            with torch.no_grad():
                return packed.recompute()
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
