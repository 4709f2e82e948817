"""The Triton ray traversal (evaluation/ray_cast_kernel.py) against the PyTorch traversal of `cast_rays`, which
test_ray_iou.py checks against the scalar oracle: the same voxels and bit-identical distances.

On the CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set in a child process before Triton is
imported), which executes its blocks with NumPy: the test checks the kernel's logic (blocks of rays that end at
different steps, one to three grids per sample padded to a power of two, the step limit, rays that never enter the
grid). Rounding: a step adds one float64 increment and compares, in the interpreter and on a GPU alike (the kernel
is launched with `enable_fp_fusion=False`); the CUDA test compares the compiled kernel at the protocol's size.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluation.ray_cast_kernel import BLOCK
from evaluation.ray_iou import _traverse, cast_rays, generate_lidar_rays, rays_to_voxel_frame, traversal_state
from test_ray_iou import random_rays

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip('triton', reason='Triton is not installed')

SIZE = (12, 9, 5)
NUM_RAYS = 2 * BLOCK + 37          # three blocks, the last partial


def cases():
    """(name, `traversal_state`): 1-3 grids for 3 samples. From origins up to 2 voxels
    outside the 12 x 9 x 5 grid a ray leaves it within 12 + 9 + 5 + 3 * 4 = 38 steps: at 40 every ray ends by
    itself or never enters (those run to the limit); at 7 most are cut by the limit."""
    rng = np.random.default_rng(0)
    out = []
    for grids in (1, 2, 3):
        occ = torch.from_numpy(rng.random((3, grids) + SIZE) < 0.08)
        origins, ends = random_rays(rng, NUM_RAYS, SIZE)
        sample = torch.from_numpy(rng.integers(0, 3, size=NUM_RAYS))
        for max_steps in (40, 7):
            out.append((f'{grids} grids, {max_steps} steps', traversal_state(occ, origins, ends, sample, max_steps)))
    return out


CHILD = """
import json, sys, warnings
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
warnings.simplefilter('ignore')   # NumPy's overflow warning where a ray parallel to an axis adds to DBL_MAX
from evaluation.ray_cast_kernel import traverse_triton
from test_ray_cast_kernel import cases
out = {{}}
for name, state in cases():
    dist, index = traverse_triton(*state)
    out[name] = [dist.double().numpy().tobytes().hex(), index.tolist()]
print(json.dumps(out))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason='on a GPU machine the compiled kernel is tested instead '
                    '(older Triton interpreters take CUDA tensors\' scalar arguments as arrays)')
def test_interpreted_kernel_walks_the_rays_of_the_pytorch_traversal():
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (ROOT, tests, os.environ.get('PYTHONPATH')) if p)
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=path)
    run = subprocess.run([sys.executable, '-c', CHILD.format(root=ROOT, tests=tests)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    limited = 0
    for name, state in cases():
        dist, index = _traverse(*state, compact_every=3)
        assert bytes.fromhex(got[name][0]) == dist.numpy().tobytes(), name      # bit-identical distances
        assert got[name][1] == index.tolist(), name
        limited += int((dist == 0).all(1).sum()) if state[-1] == 7 else 0
    assert limited > 0, 'some rays must be cut by the step limit before entering the grid'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_kernel_walks_the_rays_of_the_pytorch_traversal():
    from evaluation.ray_cast_kernel import traverse_triton
    for name, state in cases():
        cuda = [s.cuda() if torch.is_tensor(s) else s for s in state]
        want, got = _traverse(*cuda), traverse_triton(*cuda)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), name
    # the protocol's size: 8 origins x 14,040 rays through a prediction and a ground truth of 200 x 200 x 16
    rng = np.random.default_rng(3)
    occ = np.zeros((2, 2, 200, 200, 16), bool)
    occ[..., 0] = rng.random((2, 2, 200, 200)) < 0.5
    occ |= rng.random(occ.shape) < 0.002
    origins = np.concatenate([rng.uniform(-30, 30, (8, 3)) * [1, 1, 0.05] + [0, 0, 1.8] for _ in range(2)])
    starts, ends = rays_to_voxel_frame(origins, generate_lidar_rays())
    sample = torch.arange(2).repeat_interleave(starts.shape[0] // 2)
    occ = torch.from_numpy(occ).cuda()
    fast = cast_rays(occ, starts, ends, sample)                   # the kernel, on CUDA
    want = _traverse(*traversal_state(occ, starts, ends, sample))
    assert torch.equal(want[0], fast[0]) and torch.equal(want[1], fast[1])
