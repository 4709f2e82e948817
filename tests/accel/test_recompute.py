"""accel/recompute.py: a saved tensor not kept between the forward and the backward, recomputed there with the
same values (the training self-attention's bias, accel/fused_attention.py)."""
import contextlib
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from accel.recompute import recompute_when_saved


class Counted:
    """`fn` that records a host copy of what each call returned (a copy: keeping the tensor itself would keep it
    alive, and on CUDA the copy stays out of the GPU memory the tests measure)."""

    def __init__(self, fn):
        self.fn, self.results = fn, []

    def __call__(self):
        result = self.fn()
        self.results.append(result.detach().to('cpu', copy=True))
        return result


def product(keep_weight, seed=0):
    """`x * w` with `w = exp(v)` (no gradient; mul saves it for x's gradient): x's gradient after the backward
    of sum(x * w * u), whether `w` outlived the forward, and the recomputations."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 48, generator=g, dtype=torch.float64, requires_grad=True)
    v, u = torch.randn(32, 48, generator=g, dtype=torch.float64), torch.randn(32, 48, generator=g, dtype=torch.float64)
    make_weight = Counted(lambda: v.exp())
    w = v.exp()
    alive = weakref.ref(w)
    with contextlib.nullcontext() if keep_weight else recompute_when_saved(w, make_weight):
        y = x * w
    del w
    gc.collect()
    kept = alive() is not None
    (y * u).sum().backward()
    return x.grad, kept, make_weight.results


def test_the_saved_tensor_is_freed_after_the_forward_and_recomputed_once_in_the_backward():
    grad, kept, recomputed = product(keep_weight=False)
    expected, kept_plainly, _ = product(keep_weight=True)
    assert kept_plainly and not kept, 'the weight should live on only where autograd keeps it'
    assert len(recomputed) == 1
    # the backward computes u * w with w recomputed by the same kernel from the same v: the same bits
    assert torch.equal(grad, expected)


def test_other_saved_tensors_are_kept_and_an_operations_own_output_is_not_held_in_a_cycle():
    """exp saves its output for the backward (d exp(x) = exp(x) dx): with the hooks on, it is kept for the
    backward (the right gradient) and freed with the graph, not held by a reference cycle."""
    x = torch.linspace(-2, 2, 101, dtype=torch.float64, requires_grad=True)
    unrelated = torch.zeros(3)
    gc.disable()                        # a cycle would keep the output alive until the collector ran
    try:
        with recompute_when_saved(unrelated, Counted(lambda: unrelated.clone())):
            y = x.exp()
        alive = weakref.ref(y)
        y.sum().backward()
        assert torch.equal(x.grad, x.detach().exp())
        del y
        assert alive() is None, 'the saved output is held in a reference cycle'
    finally:
        gc.enable()


def test_a_saved_copy_of_the_tensor_is_kept_as_usual():
    """Matching is by storage and layout: an operation that saves another tensor with the same values keeps it."""
    x = torch.randn(8, requires_grad=True)
    w = torch.randn(8)
    recompute = Counted(lambda: w.clone())
    with recompute_when_saved(w, recompute):
        y = x * w.clone()
    y.sum().backward()
    assert recompute.results == [] and torch.equal(x.grad, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_sdpa_keeps_no_bias_between_the_forward_and_the_backward_on_cuda():
    """The training attention's use: SDPA's memory-efficient kernel keeps the bias for its backward. Recomputed,
    the forward leaves at least the bias's bytes less on the GPU, the backward reads the forward's bias bit for
    bit, and the gradients agree with those of the kept bias."""
    B, H, Q, d = 1, 8, 2400, 32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, Q, d, generator=g).cuda().requires_grad_() for _ in range(3))
    tau = torch.rand(B, H, Q, generator=g).cuda().requires_grad_()
    dist = torch.rand(B, 1, Q, Q, generator=g).cuda() * 10
    weights = torch.randn(B, H, Q, d, generator=g).cuda()

    def run(recompute):
        make_bias = Counted(lambda: -tau[..., None] * dist)                       # [B, H, Q, Q]
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        bias = make_bias()
        with recompute_when_saved(bias, make_bias) if recompute else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        del bias
        kept = torch.cuda.memory_allocated() - before
        grads = torch.autograd.grad((out * weights).sum(), (q, k, v, tau))
        return kept, grads, make_bias.results

    kept, grads, biases = run(recompute=True)
    kept_plainly, expected, _ = run(recompute=False)
    bias_bytes = B * H * Q * Q * 4
    # the only difference between the two forwards is the bias's allocation (rounded up, never down)
    assert kept_plainly - kept >= bias_bytes, (kept_plainly, kept, bias_bytes)
    assert len(biases) == 2 and torch.equal(biases[1], biases[0]), 'the backward must read the forward bias'
    # The memory-efficient backward may add dq's partial sums over key blocks in another order from one run to
    # the next (atomic additions): within Q float32 roundings of the sums' magnitudes (normwise)
    for got, want, name in zip(grads, expected, 'qkv' + 't'):
        err = ((got - want).norm() / want.norm()).item()
        assert err < Q * torch.finfo(torch.float32).eps, f'{name}: {err:.2e}'
