"""tools/build_cuda_ops.sh, the last step of `make env`: the CUDA op is built where nvcc and a GPU are found,
and where they are not the script says why in one line and leaves OPS on its exact fallback."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_build():
    spec = importlib.util.spec_from_file_location('ops_csrc_build', os.path.join(ROOT, 'models', 'csrc', 'build.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CAN_BUILD = torch.version.cuda is not None and load_build().find_nvcc() is not None and torch.cuda.is_available()


@pytest.mark.skipif(CAN_BUILD, reason='nvcc and a GPU are here: the op is built (see the GPU test below)')
def test_without_nvcc_or_gpu_one_line_and_no_build():
    env = {k: v for k, v in os.environ.items() if k != 'FORCE_CUDA'}
    proc = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'build_cuda_ops.sh'), sys.executable],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert 'CUDA sampling op not built: ' in lines[0] and 'PyTorch fallback' in lines[0]
    assert load_build().unavailable_reason() in lines[0]


def test_architectures_follow_the_caller_then_the_gpu(monkeypatch):
    build = load_build()
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '7.5')
    assert build.target_archs() == '7.5'
    monkeypatch.delenv('TORCH_CUDA_ARCH_LIST')
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        assert f'{major}.{minor}' in build.target_archs().split(';')
    else:
        assert build.target_archs() == build.DEFAULT_ARCHS


@pytest.mark.skipif(not CAN_BUILD, reason='needs a CUDA GPU and nvcc (make env builds the op there)')
def test_make_env_built_the_op_for_this_gpu():
    from models.csrc import cuda_op_available
    assert cuda_op_available(), ('a GPU and nvcc are here but models/csrc/_msmv_sampling_cuda does not import: '
                                 'run make env (tools/build_cuda_ops.sh)')
