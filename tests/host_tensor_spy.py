"""A dispatch mode that counts the tensors a computation makes from host values."""
from benchmarks.count_ops import OperationCounter


class HostTensorSpy(OperationCounter):
    """Counts tensors made from host values (torch.tensor, `x[i] = 1.0`: aten.lift_fresh). On CUDA each
    is a host-to-device copy, which a CUDA graph capture refuses: the test step must make none."""

    @property
    def count(self):
        return self.counts['lift_fresh'] + self.counts['lift_fresh_copy']
