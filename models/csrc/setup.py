"""`cd models/csrc && python setup.py build_ext --inplace` builds the CUDA sampling op in place."""
import sys

from setuptools import setup

from build import cuda_available, cuda_extensions

if not cuda_available():
    sys.exit('models/csrc: no CUDA toolkit or GPU found (set FORCE_CUDA=1 to build without a GPU); '
             'OPS runs on the PyTorch fallback without this extension.')
ext_modules, cmdclass = cuda_extensions()
setup(name='msmv_sampling', ext_modules=ext_modules, cmdclass=cmdclass)
