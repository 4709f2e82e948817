"""Precision of float32 matrix products, as a table per part of the model.

`torch.set_float32_matmul_precision`: 'highest' is float32 (23 mantissa bits), 'high' TF32 tensor cores
(10 bits). `PRECISION_TABLES[name]` maps (phase, part) to the precision that part runs under, phase
'train' or 'test'; a part not listed runs under what encloses it (float32 by default). Parts:
* 'decoder': the decoder and the post-processing of a test step (`OPS.decode`), the training decoder's
  forward and, when graphed, its backward (`OPS.train_decoder`);
* 'decoder_layer.<child>': that child module of every decoder layer (its forward);
* 'cpd': OPUS-V2's CPD modules (the head's `densifiers`, their forward; the sparse convolutions' backward runs at its
  forward's precision, models/sparse_conv.py), which a training step runs after the
  decoder, outside its scope (`OPUSV2Head.after_decoder`); at test time they run inside the decoder's.
The execution policy names a table (accel/policy.py, `precision`); changing a precision is a one-line
edit here. A CUDA graph captured inside a scope keeps the kernels it recorded.
"""
import contextlib

import torch

from core.matmul_precision import matmul_precision

__all__ = ['PRECISION_TABLES', 'matmul_precision', 'tf32_matmuls', 'float32_matmuls', 'cudnn_tf32', 'HALF_MIN_QUERIES']

PRECISION_TABLES = {
    # the original's arithmetic
    'float32': {},
    # TF32 in the decoder's large products (the adaptive mixing's generated weights, the sampling offsets);
    # at test time the small per-query layers stay float32: their rounding reaches the points' voxels and
    # the scores at the threshold directly, and their products are a small part of the decoder's
    # (docs/performance.md, "Where the fast test mode loses voxels"). Training keeps TF32 throughout.
    'tf32-decoder': {
        ('train', 'decoder'): 'high',
        ('train', 'cpd'): 'high',
        ('test', 'decoder'): 'high',
        ('test', 'decoder_layer.position_encoder'): 'highest',
        ('test', 'decoder_layer.self_attn'): 'highest',
        ('test', 'decoder_layer.ffn'): 'highest',
        ('test', 'decoder_layer.cls_branch'): 'highest',
        ('test', 'decoder_layer.reg_branch'): 'highest',
    },
}

# From this many queries on, the fast self-attention runs in half precision (faster at Q = 4800, slower at
# Q = 600): fp16 q/k/v (10 mantissa bits, bf16 has 7) in the fused test kernel, whose bias stays float32
# inside the kernel; fp16 q/k/v and bias in training's SDPA, whose bias is a tensor of magnitudes up to ~100
# (accel/fused_attention.py).
HALF_MIN_QUERIES = 2048


def tf32_matmuls(enabled):
    """float32 matrix products on TF32 tensor cores inside the block when `enabled`."""
    return matmul_precision('high' if enabled else None)


def float32_matmuls(enabled):
    """Full float32 matrix products inside the block (no TF32) when `enabled`, whatever the setting outside."""
    return matmul_precision('highest' if enabled else None)


@contextlib.contextmanager
def cudnn_tf32(enabled):
    """cuDNN's float32 convolutions on TF32 tensor cores inside the block when `enabled`, in full float32 otherwise
    (`torch.backends.cudnn.allow_tf32`, whose default is True), restored after."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before
