"""Install OPS in development mode: `pip install --no-build-isolation -e .` (tools/install_env.sh).

The CUDA sampling op in models/csrc is compiled when a CUDA toolkit and a GPU are present
(or FORCE_CUDA=1); without them OPS imports and runs on the exact PyTorch fallbacks.
"""
import importlib.util
import os

from setuptools import find_packages, setup

# Load the build description by path: importing the `models` package would import torch and mmdet.
_spec = importlib.util.spec_from_file_location(
    'ops_csrc_build', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'models', 'csrc', 'build.py'))
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)
ext_modules, cmdclass = _build.cuda_extensions(prefix='models.csrc.')

setup(
    name='ops-occupancy',
    version='0.1.0',
    description='OPS: occupancy prediction as a sparse set (OPUS, NeurIPS 2024) on PyTorch 2.x',
    packages=find_packages(include=['core', 'core.*', 'models', 'models.*', 'loaders', 'loaders.*', 'evaluation',
                                    'evaluation.*', 'engine', 'engine.*']),
    python_requires='>=3.11',
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
