"""The decoder's distance-biased self-attention as fused kernels (accel/modules.py: the fused self-attention in
float32, the fast one in half precision from accel/precision.py's HALF_MIN_QUERIES queries on).

Symbols: B batch, H heads, Q queries, d channels per head (C / H).

OPSSelfAttention adds -tau[b, h, q] * ||c_q - c_k|| (query centroids c in metres) to the attention
logits. The faithful path materialises that bias as a float `[B*H, Q, Q]` tensor and hands it to
mmcv's MultiheadAttention (PyTorch's unfused path, which also returns the head-averaged weights):
for OPS-L (Q = 4800) 737 MB per layer, written and read several times. Here the bias is computed
inside a FlexAttention kernel (torch.nn.attention.flex_attention, compiled by torch.compile) from
the centroids and tau, so no Q x Q tensor exists; softmax and the value product are fused.

Per layer on one H100 (benchmarks/bench_self_attention.py, docs/performance.md): Q = 4800 4.1 ms with the
mask, 1.97 ms fused in float32, 0.40 ms in bf16; Q = 600 0.71 ms with the mask, 0.29 ms fused in float32
(half precision is slower there). In float32 the kernel's products are IEEE float32 (the compiled kernel
follows the matmul precision, float32 in every table's self-attention): the mask path's function, summed
in another order. Used in eval only: FlexAttention has no attention dropout.

In training (`sdpa_biased_attention`) the `[B, H, Q, Q]` bias tensor stays, whose gradient reaches
tau, but goes to `F.scaled_dot_product_attention` instead of mmcv's MultiheadAttention: that
module asks for the head-averaged weights (`need_weights`), so PyTorch materialises the softmax, its
dropout and their gradients as further `[B*H, Q, Q]` tensors; SDPA's memory-efficient kernel fuses
softmax, dropout and the value product, in both directions. The same function (the dropout draws
other random numbers). It also keeps no `[B*H, Q, Q]` softmax for the backward: OPS-L's graphed decoder,
which is not checkpointed, held the float32 weights of all six layers. The fast mode runs it in fp16 from
HALF_MIN_QUERIES queries on (OPS-L), as autocast would: the float32 kernel has no tensor-core path and took 42
of OPS-L's 187 ms of GPU time per step. SDPA keeps the bias itself for its backward; it is computed again
there instead (accel/recompute.py): OPS-L's graphed decoder, not checkpointed, held the six layers' biases,
4.4 GB in float32, from the forward to the backward.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from core.compiled import CompiledOrNone

from .recompute import recompute_when_saved

__all__ = ['fused_biased_attention', 'sdpa_biased_attention', 'ATTENTION_KERNEL', 'MIN_HEAD_DIMS']

# FlexAttention's compiled kernel needs heads of at least 16 channels (OPS: 256 / 8 = 32; the tests'
# tiny models have fewer and keep the mask path)
MIN_HEAD_DIMS = 16


def _attention(q, k, v, cx, cy, cz, tau):
    def distance_bias(score, b, h, qi, ki):
        dx, dy, dz = cx[b, qi] - cx[b, ki], cy[b, qi] - cy[b, ki], cz[b, qi] - cz[b, ki]
        return score - tau[b, h, qi] * torch.sqrt(dx * dx + dy * dy + dz * dz)
    return flex_attention(q, k, v, score_mod=distance_bias)


ATTENTION_KERNEL = CompiledOrNone(_attention, 'the fused self-attention kernel', 'the faithful attention')


def _heads(mha, query):
    """The packed in-projection of nn.MultiheadAttention `mha`: `[B, Q, C]` -> q, k, v `[B, H, Q, C/H]`."""
    B, Q, C = query.shape
    H = mha.num_heads
    qkv = F.linear(query, mha.in_proj_weight, mha.in_proj_bias).view(B, Q, 3, H, C // H)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def sdpa_biased_attention(attention, query, make_bias, half=False):
    """mmcv MultiheadAttention `attention` (batch first, packed in-projection) on `query` with the additive
    logit bias, through SDPA: `query + out_proj(softmax(q k^T / sqrt(d) + bias) v)` with the module's
    attention dropout in training.

    Args:
        attention (mmcv.cnn.bricks.transformer.MultiheadAttention): its `attn` holds the weights.
        query (Tensor): `[B, Q, C]` float32.
        make_bias (callable): `() -> [B, H, Q, Q]`, the bias added to the logits of head h (may require grad).
            Called here, and again without autograd by SDPA's backward, which reads the bias: it must
            compute the same values from inputs that do not change in between.
        half (bool): q, k, v and the bias in fp16 (on CUDA).
    Returns:
        Tensor `[B, Q, C]` float32.
    """
    mha = attention.attn
    B, Q, C = query.shape
    dtype = torch.float16 if half and query.is_cuda else query.dtype
    q, k, v = (t.to(dtype) for t in _heads(mha, query))                          # [B, H, Q, d] each
    def make_bias_as_used():
        return make_bias().to(dtype)
    bias = make_bias_as_used()                                                    # [B, H, Q, Q]
    with recompute_when_saved(bias, make_bias_as_used):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=mha.dropout if mha.training else 0.0)
    out = F.linear(out.to(query.dtype).transpose(1, 2).reshape(B, Q, C), mha.out_proj.weight, mha.out_proj.bias)
    return query + attention.dropout_layer(attention.proj_drop(out))


def fused_biased_attention(mha, query, centres, tau, half=False, compiled=True):
    """query + MHA(query) with the distance bias, for an eval-mode nn.MultiheadAttention.

    Args:
        mha (nn.MultiheadAttention): packed in-projection, `H` heads (its dropout is not applied).
        query (Tensor): `[B, Q, C]` float32.
        centres (Tensor): `[B, Q, 3]` query centroids, metres.
        tau (Tensor): `[B, H, Q]` bias slope per head and query row.
        half (bool): q, k, v in fp16 (the bias is computed in float32 inside the kernel).
        compiled (bool): the torch.compile'd kernel (False: FlexAttention's unfused reference, for tests).
    Returns:
        Tensor `[B, Q, C]` float32, or None when the compiled kernel cannot be built on this machine
        (no Triton for this GPU, say): then one warning, and the caller keeps its mask path.
    """
    B, Q, C = query.shape
    dtype = torch.float16 if half else torch.float32
    q, k, v = (t.to(dtype) for t in _heads(mha, query))                          # [B, H, Q, d] each
    cx, cy, cz = (c.contiguous() for c in centres.float().unbind(-1))             # [B, Q] each
    args = (q, k, v, cx, cy, cz, tau.float().contiguous())
    out = ATTENTION_KERNEL(*args) if compiled else _attention(*args)              # [B, H, Q, d]
    if out is None:
        return None
    out = out.float().transpose(1, 2).reshape(B, Q, C)
    return query + F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
