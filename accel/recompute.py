"""A tensor that autograd would keep for the backward pass, recomputed there instead.

Two large tensors of OPS-L's graphed training decoder are cheap to compute again from small inputs:
* the self-attention's `[B, H, Q, Q]` logit bias (737 MB per layer in float32 at Q = 4,800), which SDPA's
  memory-efficient kernel keeps for its backward; one elementwise product (accel/fused_attention.py);
* the adaptive mixing's generated weights `[B, Q, G * (C_g * C_g + P_out * P_in)]` (354 MB per layer at
  Q = 4,800), whose two views M and S the mixing's matrix products keep; one `[Q, 256] x [256, 18,432]`
  product (accel/modules.py, `FusedAdaptiveMixing`).
Keeping them holds six of each through the decoder's forward and backward (docs/performance.md, "Training
memory of OPS-L").
"""
import contextlib

import torch

from .precision import matmul_precision

__all__ = ['recompute_when_saved', 'under_current_settings']


class _Recomputed:
    """The tensor computed again in the backward, for every view of it that autograd saved: computed at the
    first read, released after the last of them is read."""
    __slots__ = ('recompute', 'layout', 'unread', 'value')

    def __init__(self, recompute, layout):
        self.recompute, self.layout, self.unread, self.value = recompute, layout, 0, None

    def read(self):
        if self.value is None:
            with torch.no_grad():
                value = self.recompute()
            if _layout(value)[1:] != self.layout[1:]:
                raise RuntimeError(f'recompute_when_saved: the recomputed tensor has shape, strides, dtype and device '
                                   f'{_layout(value)[1:]}, the saved one {self.layout[1:]}')
            self.value = value
        value = self.value
        self.unread -= 1
        if self.unread <= 0:        # a second backward over the same graph (retain_graph) recomputes again
            self.value = None
        return value


class _View:
    """What autograd keeps in place of a view of the tensor: where the view lies in it."""
    __slots__ = ('source', 'size', 'stride', 'offset')

    def __init__(self, source, saved):
        self.source, self.size, self.stride = source, saved.shape, saved.stride()
        self.offset = saved.storage_offset() - source.layout[0]

    def materialise(self):
        base = self.source.read()
        return base.as_strided(self.size, self.stride, base.storage_offset() + self.offset)


def _layout(tensor):
    return tensor.storage_offset(), tensor.shape, tensor.stride(), tensor.dtype, tensor.device


def _storage(tensor):
    try:
        return tensor.untyped_storage().data_ptr(), tensor.dtype, tensor.device
    except (RuntimeError, NotImplementedError):      # a tensor without storage (sparse, nested): never ours
        return None


def _under_other_hooks():
    top = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)
    return top is not None and top(False) is not None


@contextlib.contextmanager
def recompute_when_saved(tensor, recompute):
    """Inside the context, an operation that saves `tensor` or a view of it for its backward keeps `recompute`
    instead, and the backward calls it (without autograd) when it first reads one of them.

    Args:
        tensor (Tensor): the tensor not to keep: an operation that saves it or a view into its storage keeps the
            view's place instead; one that saves a copy keeps that as usual.
        recompute (callable): `() -> Tensor` with `tensor`'s values and layout, bit for bit: the same
            deterministic kernels on inputs that do not change before the backward, under the same precision
            settings (`under_current_settings`). It must not hold `tensor` itself. It runs once per backward for
            all the views saved inside the context, whose result is released after the last of them is read.

    Every other saved tensor is kept as autograd keeps it. Autograd applies only the innermost saved-tensor
    hooks; under other hooks (a checkpointed region, which keeps none of its tensors and computes the whole
    region again) the context does nothing and leaves the saving to them.
    """
    if _under_other_hooks():
        yield
        return
    storage = _storage(tensor)
    source = _Recomputed(recompute, _layout(tensor))

    def pack(saved):
        if saved.numel() and _storage(saved) == storage:
            source.unread += 1
            return _View(source, saved)
        # detached: an operation that saves its own output would otherwise hold its grad_fn in a cycle
        return saved.detach()

    def unpack(packed):
        return packed.materialise() if isinstance(packed, _View) else packed

    # `tensor` stays referenced until the context ends, so no other tensor can take its storage meanwhile
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def under_current_settings(fn):
    """`fn` made to run under the float32 matrix-product precision and the autocast state current now: a
    backward runs outside the scopes its forward ran in (accel/precision.py), and a recomputation must use the
    forward's kernels."""
    precision = torch.get_float32_matmul_precision()
    autocast = [(dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)) for dev in ('cpu', 'cuda')]

    def run():
        with contextlib.ExitStack() as scopes:
            scopes.enter_context(matmul_precision(precision))
            for dev, enabled, dtype in autocast:
                scopes.enter_context(torch.autocast(dev, dtype=dtype, enabled=enabled))
            return fn()
    return run
