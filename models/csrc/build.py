"""Build description of the CUDA sampling op, read by models/csrc/setup.py (which tools/install_env.sh
runs where nvcc and a GPU are found). Kept free of side effects so that importing it without CUDA is
cheap."""
import glob
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
# sm_90 for H100/H200, sm_80/86 for A100 and RTX 30xx, PTX for newer cards.
DEFAULT_ARCHS = '8.0;8.6;9.0+PTX'


def find_nvcc():
    """Path of the CUDA compiler: $CUDA_HOME/bin/nvcc, else nvcc on PATH, else /usr/local/cuda/bin/nvcc;
    None when there is none."""
    home = os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')
    candidates = [os.path.join(home, 'bin', 'nvcc')] if home else []
    candidates += [shutil.which('nvcc'), '/usr/local/cuda/bin/nvcc']
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def unavailable_reason():
    """Why the extension cannot be compiled here, in one line; None when it can (nvcc found and a GPU
    visible, or FORCE_CUDA=1 to build for DEFAULT_ARCHS without a GPU)."""
    try:
        import torch
    except ImportError:
        return 'torch is not importable'
    if torch.version.cuda is None:
        return f'torch {torch.__version__} is a CPU-only build'
    if find_nvcc() is None:
        return 'no CUDA toolkit (nvcc is not in $CUDA_HOME/bin, on PATH or in /usr/local/cuda/bin)'
    if not torch.cuda.is_available() and os.environ.get('FORCE_CUDA', '0') != '1':
        return 'no GPU visible (FORCE_CUDA=1 builds it anyway, for ' + DEFAULT_ARCHS + ')'
    return None


def cuda_available():
    """True when the extension can be compiled (see unavailable_reason)."""
    return unavailable_reason() is None


def target_archs():
    """TORCH_CUDA_ARCH_LIST for the build: the caller's if set, else the visible GPUs' own architectures
    (a build for the GPU it runs on), else DEFAULT_ARCHS."""
    if os.environ.get('TORCH_CUDA_ARCH_LIST'):
        return os.environ['TORCH_CUDA_ARCH_LIST']
    import torch
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ';'.join(f'{major}.{minor}' for major, minor in caps)
    return DEFAULT_ARCHS


def cuda_extensions():
    """Return (ext_modules, cmdclass) for setuptools; empty when CUDA is not available."""
    sources = sorted(glob.glob(os.path.join(HERE, '*.cpp')) + glob.glob(os.path.join(HERE, '*.cu')))
    if not sources or not cuda_available():
        return [], {}
    os.environ.setdefault('CUDA_HOME', os.path.dirname(os.path.dirname(find_nvcc())))
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    os.environ['TORCH_CUDA_ARCH_LIST'] = target_archs()
    rel = [os.path.relpath(s, os.getcwd()) for s in sources]
    ext = CUDAExtension(
        name='_msmv_sampling_cuda',
        sources=rel,
        extra_compile_args={'cxx': ['-O3'], 'nvcc': ['-O3', '--use_fast_math', '-lineinfo']},
    )
    return [ext], {'build_ext': BuildExtension}
