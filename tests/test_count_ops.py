"""benchmarks/count_ops.py's counter: every ATen operation inside the block, by name."""
import torch

from benchmarks.count_ops import OperationCounter


def test_the_counter_sees_each_operation_once():
    a, b = torch.ones(3), torch.arange(3.0)
    with OperationCounter() as counter:
        c = a + b
        d = (c * b).sum()
        e = c.view(3, 1)            # a view is dispatched too
    assert dict(counter.counts) == {'add': 1, 'mul': 1, 'sum': 1, 'view': 1}
    assert d.item() == 0 * 1 + 1 * 2 + 2 * 3 and e.shape == (3, 1)   # the results are the operations' own
