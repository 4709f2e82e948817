"""A dispatch mode that counts the tensors a computation makes from host values."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostTensorSpy(TorchDispatchMode):
    """Counts tensors made from host values (torch.tensor, `x[i] = 1.0`: aten.lift_fresh). On CUDA each
    is a host-to-device copy, which a CUDA graph capture refuses: the test step must make none."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            self.count += 1
        return func(*args, **(kwargs or {}))
