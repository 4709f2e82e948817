"""Fixtures of the evaluation tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Ray casting works on ~10^4-element tensors: extra threads only add contention on a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
