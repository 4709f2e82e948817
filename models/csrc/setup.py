"""`cd models/csrc && python setup.py build_ext --inplace` builds the CUDA sampling op in place."""
import sys

from build import cuda_extensions, unavailable_reason
from setuptools import setup

if unavailable_reason() is not None:
    sys.exit(f'models/csrc: not built: {unavailable_reason()}. '
             'OPS runs on the exact PyTorch fallback without this extension.')
ext_modules, cmdclass = cuda_extensions()
setup(name='msmv_sampling', ext_modules=ext_modules, cmdclass=cmdclass)
