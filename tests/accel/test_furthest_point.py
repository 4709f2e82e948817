"""The Triton furthest-point sampling kernel (accel/furthest_point.py) against the faithful PyTorch loop
(`models.opus_fusion_head.furthest_point_sample`): the same indices, ties included.

On the CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set in a child process before Triton is
imported), which executes its blocks with NumPy: the test checks the kernel's logic (blocked scan, scratch
distances, first-maximum ties within and across blocks, more samples than points). Rounding: the interpreter,
like PyTorch's separate kernels, rounds each product and sum; on a GPU the kernel is launched with
`enable_fp_fusion=False` for the same reason, and the CUDA test below compares the compiled kernel.
"""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from accel.furthest_point import BLOCK, fast_furthest_point_sample
from models.opus_fusion_head import furthest_point_sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
triton = pytest.importorskip('triton', reason='Triton is not installed')


def clouds():
    """(name, points [N, 3] float32, num_samples): sizes around the block of the scan."""
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(BLOCK + 452, 3, generator=g) * 20             # two blocks, the second partial
    spread[100:110] = spread[5]                                         # coincident points: exact ties
    far = torch.randn(BLOCK + 100, 3, generator=g)
    far[10] = far[BLOCK + 50] = torch.tensor([500.0, 0.0, 0.0])          # the farthest point, once in each block
    few = torch.randn(20, 3, generator=g)                               # more samples than points: zeros repeat
    return [('spread', spread, 120), ('tie across blocks', far, 12), ('few points', few, 30)]


CHILD = """
import json, sys, torch
sys.path.insert(0, {root!r})
from accel.furthest_point import furthest_point_sample_triton
from tests.accel.test_furthest_point import clouds
print(json.dumps({{name: furthest_point_sample_triton(points, n).tolist() for name, points, n in clouds()}}))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason='on a GPU machine the compiled kernel is tested instead '
                    '(older Triton interpreters take CUDA tensors\' scalar arguments as arrays)')
def test_interpreted_kernel_picks_the_faithful_indices():
    # the repository first, then what the environment already puts on the path (mmdet where it is not installed)
    path = os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=path)
    run = subprocess.run([sys.executable, '-c', CHILD.format(root=ROOT)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for name, points, n in clouds():
        expected = furthest_point_sample(points, n).tolist()
        assert got[name] == expected, name
    far_first = furthest_point_sample(clouds()[1][1], 2).tolist()
    assert far_first == [0, 10], 'the tie across blocks must go to the lower index'
    assert got['few points'][20:] == [0] * 10


def test_the_cpu_path_is_the_faithful_function():
    points = clouds()[0][1]
    assert torch.equal(fast_furthest_point_sample(points, 50), furthest_point_sample(points, 50))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_kernel_picks_the_faithful_indices():
    from accel.furthest_point import furthest_point_sample_triton
    for name, points, n in clouds():
        cuda = points.cuda()
        assert torch.equal(furthest_point_sample_triton(cuda, n).cpu(), furthest_point_sample(cuda, n).cpu()), name


def test_a_kernel_that_fails_to_build_falls_back_to_the_loop_with_one_warning():
    from core.compiled import TritonKernel

    def broken(points, num_samples):
        raise RuntimeError('no Triton backend for this device')

    kernel = TritonKernel(broken, furthest_point_sample, 'the test kernel', 'the PyTorch loop')
    points = clouds()[2][1]
    with pytest.warns(UserWarning, match='the test kernel could not be built.*the PyTorch loop'):
        first = kernel.or_eager(True, points, 8)
    assert torch.equal(first, furthest_point_sample(points, 8)) and kernel.failed
    with warnings.catch_warnings():
        warnings.simplefilter('error')                            # no second attempt, no second warning
        assert torch.equal(kernel.or_eager(True, points, 8), first)
