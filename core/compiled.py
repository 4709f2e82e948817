"""Compiled kernels built at their first call, with a way back: the fused and fast modules' torch.compile'd kernels
(accel/kernels.py) and the Triton kernels (accel/furthest_point.py, evaluation/ray_cast_kernel.py).

A compiled kernel needs Triton for the GPU at hand. Where it cannot be built, its caller must
still compute the right thing: `CompiledOrNone` then warns once and returns None from every call,
and the caller runs its eager (faithful) code instead (`or_eager`: the eager code is `fn` itself).
"""
import warnings

import torch

__all__ = ['CompiledOrNone', 'TritonKernel']

_FAILED = object()


class CompiledOrNone:
    """`CompiledOrNone(fn, what, instead)(*args)`: `torch.compile(fn)(*args)`, or None when the kernel
    cannot be built here (one warning naming `what` and `instead`, no second attempt).

    `fn` must be compilable as one graph (`fullgraph=True`) with static shapes; the graph is built
    per input signature at its first call, so a step captured in a CUDA graph replays the kernels.
    """

    def __init__(self, fn, what, instead):
        self.fn, self.what, self.instead = fn, what, instead
        self._compiled = None

    @property
    def failed(self):
        """True once the kernel could not be built (calls return None from then on)."""
        return self._compiled is _FAILED

    def compile(self):
        """The compiled callable (a hook for tests, which replace it)."""
        return torch.compile(self.fn, dynamic=False, fullgraph=True)

    def or_eager(self, use_compiled, *args):
        """`fn(*args)`: from the compiled kernel when `use_compiled` and it can be built, else eagerly."""
        out = self(*args) if use_compiled else None
        return out if out is not None else self.fn(*args)

    def __call__(self, *args):
        if self._compiled is _FAILED:
            return None
        if self._compiled is None:
            self._compiled = self.compile()
        try:
            return self._compiled(*args)
        except Exception as err:  # noqa: BLE001 (inductor/Triton errors have no common base class)
            self._compiled = _FAILED
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(f'{self.what} could not be built here ({type(err).__name__}: '
                          f'{first[:200]}); using {self.instead} instead')
            return None


class TritonKernel(CompiledOrNone):
    """`CompiledOrNone` for a kernel that Triton builds at its first launch (no torch.compile): `kernel` computes
    what `fn` computes."""

    def __init__(self, kernel, fn, what, instead):
        super().__init__(fn, what, instead)
        self.kernel = kernel

    def compile(self):
        return self.kernel
