"""accel/recompute.py: a saved tensor not kept between the forward and the backward, recomputed there with the
same values (the training self-attention's bias, accel/fused_attention.py)."""
import contextlib
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from accel.modules import FusedAdaptiveMixing
from accel.precision import matmul_precision
from accel.recompute import recompute_when_saved, under_current_settings
from models.ops_transformer import AdaptiveMixing


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


def two_products(recompute, seed=0):
    """`(x @ w[:, :8]) * (y @ w[:, 8:])` with `w = exp(v)` (no gradient): both products keep a view of `w` for x's
    and y's gradients. Returns the gradients, whether `w` outlived the forward, and the recomputations."""
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(6, 16, generator=g, dtype=torch.float64)
    make_weight = Counted(lambda: v.exp())
    w = v.exp()
    alive = weakref.ref(w)
    with recompute_when_saved(w, make_weight) if recompute else contextlib.nullcontext():
        out = (x @ w[:, :8]) * (y @ w[:, 8:])
    del w
    gc.collect()
    kept = alive() is not None
    out.sum().backward()
    return (x.grad, y.grad), kept, make_weight.results


def test_views_of_the_tensor_are_recomputed_once_for_all_of_them():
    grads, kept, recomputed = two_products(recompute=True)
    expected, kept_plainly, _ = two_products(recompute=False)
    assert kept_plainly and not kept, 'the weight should live on only where autograd keeps it'
    assert len(recomputed) == 1, 'one recomputation for the two views'
    # each view is read from the recomputed weight at its own offset: the same bits as the kept views
    for got, want in zip(grads, expected):
        assert torch.equal(got, want)


def test_under_a_checkpoint_the_checkpoint_keeps_the_saving():
    """A checkpointed region keeps none of its tensors and runs its forward again; the context leaves it so."""
    from torch.utils.checkpoint import checkpoint
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(8, dtype=torch.float64)
    make_weight = Counted(lambda: v.exp())

    def region(x):
        w = v.exp()
        with recompute_when_saved(w, make_weight):
            return x * w
    checkpoint(region, x, use_reentrant=False).sum().backward()
    assert make_weight.results == [] and torch.equal(x.grad, v.exp())


def test_a_recomputation_that_changes_the_layout_is_refused():
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(6, 3)
    with recompute_when_saved(w, lambda: w.t().contiguous().t()):     # the same values, other strides
        y = x @ w
    with pytest.raises(RuntimeError, match='recomputed tensor has shape, strides'):
        y.sum().backward()


def test_under_current_settings_restores_the_precision_and_autocast_of_the_forward():
    seen = []

    def settings():
        seen.append((torch.get_float32_matmul_precision(), torch.is_autocast_enabled('cpu'),
                     torch.get_autocast_dtype('cpu')))
        return torch.zeros(())
    with matmul_precision('high'), torch.autocast('cpu', dtype=torch.bfloat16):
        recompute = under_current_settings(settings)
    outside = torch.get_float32_matmul_precision()
    recompute()
    assert seen == [('high', True, torch.bfloat16)]
    assert torch.get_float32_matmul_precision() == outside and not torch.is_autocast_enabled('cpu')


def mixing_and_inputs(seed=0):
    """A small `FusedAdaptiveMixing` (2 groups of 8 channels, 4 -> 6 points) with random generator weights, and
    float64 inputs (B=1, Q=5)."""
    g = torch.Generator().manual_seed(seed)
    mixing = FusedAdaptiveMixing(in_dim=8, in_points=4, n_groups=2, query_dim=16, out_points=6).double()
    with torch.no_grad():
        for p in mixing.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    x = torch.randn(1, 5, 2, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(1, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    return mixing, x, query


def test_the_mixing_recomputing_its_generated_weights_gives_the_faithful_gradients_bit_for_bit(monkeypatch):
    import accel.modules
    mixing, x, query = mixing_and_inputs()
    inputs = (x, query, *mixing.parameters())
    weights = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    generations = []

    def counted(fn):
        counter = Counted(under_current_settings(fn))
        generations.append(counter)
        return counter
    monkeypatch.setattr(accel.modules, 'under_current_settings', counted)
    out = mixing.recomputing_forward(x, query)
    got = torch.autograd.grad((out * weights).sum(), inputs)
    # the faithful module's forward: the same operations in the same order, the same weights
    want_out = AdaptiveMixing.forward(mixing, x, query)
    want = torch.autograd.grad((want_out * weights).sum(), inputs)
    assert torch.equal(out, want_out)
    for g_got, g_want in zip(got, want):
        assert torch.equal(g_got, g_want)
    (generated,) = generations
    assert len(generated.results) == 2, 'computed in the forward, once more in the backward'
    assert torch.equal(generated.results[1], generated.results[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_the_training_mixing_keeps_no_generated_weights_on_cuda():
    """OPS-L's mixing shape (4,800 queries, 4 groups of 64 channels, 16 -> 32 points) in float32 on CUDA: the fused
    module's training forward leaves at least the generated weights' bytes less on the GPU than the faithful one,
    the same output, and gradients bit for bit the faithful ones (the recomputation runs the forward's cuBLAS
    product on the same inputs)."""
    torch.manual_seed(0)
    mixing = FusedAdaptiveMixing(in_dim=64, in_points=16, n_groups=4, query_dim=256, out_points=32).cuda()
    x = torch.randn(1, 4800, 4, 16, 64, device='cuda', requires_grad=True)
    query = torch.randn(1, 4800, 256, device='cuda', requires_grad=True)
    weights = torch.randn(1, 4800, 256, device='cuda')
    inputs = (x, query, *mixing.parameters())

    def run(forward):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        out = forward(mixing, x, query)
        kept = torch.cuda.memory_allocated() - before
        return out, kept, torch.autograd.grad((out * weights).sum(), inputs)

    with matmul_precision('highest'):
        run(AdaptiveMixing.forward)       # cuBLAS allocates its workspace (32 MiB) at the process's first product
        out, kept, grads = run(FusedAdaptiveMixing.forward)
        want_out, kept_plainly, want = run(AdaptiveMixing.forward)
    generated_bytes = 4800 * 4 * (64 * 64 + 32 * 16) * 4
    assert kept_plainly - kept >= generated_bytes, (kept_plainly, kept, generated_bytes)
    assert torch.equal(out, want_out)
    for got, expected in zip(grads, want):
        assert torch.equal(got, expected)
