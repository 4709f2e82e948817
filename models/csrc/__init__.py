"""Multi-scale multi-view sampling op: `msmv_sampling` (CUDA when built, else the exact PyTorch fallback)."""
from .wrapper import cuda_op_available, msmv_sampling, msmv_sampling_pytorch

__all__ = ['msmv_sampling', 'msmv_sampling_pytorch', 'cuda_op_available']
