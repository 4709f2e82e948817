"""Install OPS in development mode: `pip install --no-build-isolation -e .` (tools/install_env.sh).

The CUDA sampling op is built in place by models/csrc/setup.py, which tools/install_env.sh runs where a
CUDA toolkit and a GPU are found; without it OPS imports and runs on the exact PyTorch fallbacks.
"""
from setuptools import find_packages, setup

setup(
    name='ops-occupancy',
    version='0.1.0',
    description='OPS: occupancy prediction as a sparse set (OPUS, NeurIPS 2024) on PyTorch 2.x',
    packages=find_packages(include=['core', 'core.*', 'models', 'models.*', 'accel', 'accel.*', 'loaders',
                                    'loaders.*', 'evaluation', 'evaluation.*', 'engine', 'engine.*']),
    python_requires='>=3.11',
    zip_safe=False,
)
