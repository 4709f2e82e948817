"""Build description of the CUDA sampling op, shared by the top-level setup.py and
models/csrc/setup.py. Kept free of side effects so that importing it without CUDA is cheap."""
import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))
# sm_90 for H100/H200, sm_80/86 for A100 and RTX 30xx, PTX for newer cards.
DEFAULT_ARCHS = '8.0;8.6;9.0+PTX'


def cuda_available():
    """True when the extension can be compiled: nvcc found and a GPU visible (or FORCE_CUDA=1)."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False
    if CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get('FORCE_CUDA', '0') == '1'


def cuda_extensions(prefix=''):
    """Return (ext_modules, cmdclass) for setuptools; empty when CUDA is not available."""
    sources = sorted(glob.glob(os.path.join(HERE, '*.cpp')) + glob.glob(os.path.join(HERE, '*.cu')))
    if not sources or not cuda_available():
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    os.environ.setdefault('TORCH_CUDA_ARCH_LIST', DEFAULT_ARCHS)
    rel = [os.path.relpath(s, os.getcwd()) for s in sources]
    ext = CUDAExtension(
        name=prefix + '_msmv_sampling_cuda',
        sources=rel,
        extra_compile_args={'cxx': ['-O3'], 'nvcc': ['-O3', '--use_fast_math', '-lineinfo']},
    )
    return [ext], {'build_ext': BuildExtension}
