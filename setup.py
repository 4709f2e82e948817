"""Install OPS in development mode: `pip install --no-build-isolation -e .` (tools/install_env.sh).

The CUDA sampling op in models/csrc is compiled when a CUDA toolkit and a GPU are present
(or FORCE_CUDA=1); without them OPS imports and runs on the exact PyTorch fallbacks.
"""
import os

from setuptools import find_packages, setup

from models.csrc.build import cuda_extensions

ext_modules, cmdclass = cuda_extensions(prefix='models.csrc.')

setup(
    name='ops-occupancy',
    version='0.1.0',
    description='OPS: occupancy prediction as a sparse set (OPUS, NeurIPS 2024) on PyTorch 2.x',
    packages=find_packages(include=['models', 'models.*', 'loaders', 'loaders.*']),
    python_requires='>=3.11',
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
