"""Replay a function of device tensors from a CUDA graph, captured once per input signature.

OPS's inference step launches several hundred small kernels per sample, and the decoder of a training
step a few thousand (forward and backward); on a Hopper GPU the host cannot issue them as fast as the
GPU runs them. A graph replays them with one launch: `GraphedFunction` the inference step,
`GraphedTrainingFunction` a differentiable function's forward and backward (the training
decoder).
The function must be a pure function of its tensor inputs and of module state that does not change
shape (weights, ring buffers): no host synchronisation, no data-dependent shapes, no Python
branches on tensor values. Replay runs exactly the kernels of the capture, so its outputs equal
those of calling the function eagerly with the same inputs.
"""
import functools
import warnings

import torch
import torch.utils._pytree

__all__ = ['GraphedFunction', 'GraphedTrainingFunction', 'without_dropout']

EAGER = 'eager'   # marks a signature whose capture failed: it runs eagerly, with one warning


class GraphedFunction:
    """`GraphedFunction(fn)(*tensors, **static)`: eager on the CPU, graph replay on CUDA.

    `static` keyword arguments are Python values (image size, mode) that become part of the
    signature. The returned tensors are the graph's own output buffers: they are overwritten by the
    next call, so copy what you keep (the inference step copies its one result to the host).
    """

    def __init__(self, fn, warmup=2):
        self.fn = fn
        self.warmup = warmup
        self.graphs = {}

    def __call__(self, *tensors, **static):
        if not tensors[0].is_cuda:
            return self.fn(*tensors, **static)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors) + tuple(sorted(static.items()))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(tensors, static)
        if entry is EAGER:
            return self.fn(*tensors, **static)
        graph, inputs, outputs = entry
        for dst, src in zip(inputs, tensors):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return outputs

    def _capture(self, tensors, static):
        inputs = [t.clone() for t in tensors]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # lazy initialisation, cuDNN/cuBLAS choices outside the capture
                self.fn(*inputs, **static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread-local: other threads may use CUDA meanwhile (val.py's evaluation thread, a loader's pinning)
            with torch.cuda.graph(graph, capture_error_mode='thread_local'):
                outputs = self.fn(*inputs, **static)
        except RuntimeError as err:
            # A step that cannot be captured (an op that synchronises with the host, say) still
            # computes the right thing eagerly: say so once and run it eagerly from now on.
            warnings.warn(f'CUDA graph capture of {getattr(self.fn, "__name__", self.fn)} failed ({err}); '
                          f'running it eagerly (slower). Set execution=dict(test_cuda_graph=False) '
                          f'in the config to skip the attempt.')
            return EAGER
        return graph, inputs, outputs


class _Bound(torch.nn.Module):
    """`fn(*tensors, **static)` as a module whose parameters are `module`'s."""

    def __init__(self, module, fn, static):
        super().__init__()
        self.module = module
        self.fn, self.static = fn, static

    def forward(self, *tensors):
        return self.fn(*tensors, **self.static)


class _WithParameters:
    """`fn(*tensors, **static)` as a function of the tensors followed by `module`'s parameters, which it computes
    with in their place (torch.func.functional_call): what make_graphed_callables captures and differentiates.

    The capture runs on stand-ins of the parameters (new leaves on the same storage), and the graphed function
    is then called with the parameters themselves, whose gradients autograd delivers as usual (DDP's hooks,
    `param.grad`). Capturing with the parameters themselves fails under DDP: DDP holds their gradient
    accumulators, created on the default stream, and the backward's wait on that stream invalidates the capture
    (cudaErrorStreamCaptureInvalidated); a stand-in's accumulator is created on the capturing stream.
    """

    def __init__(self, module, fn, static):
        self.bound = _Bound(module, fn, static)
        self.names = [name for name, _ in self.bound.named_parameters()]
        self.parameters = tuple(p for _, p in self.bound.named_parameters())

    def stand_ins(self):
        return tuple(p.detach().requires_grad_(p.requires_grad) for p in self.parameters)

    def __call__(self, *tensors_and_parameters):
        split = len(tensors_and_parameters) - len(self.names)
        params = dict(zip(self.names, tensors_and_parameters[split:]))
        return torch.func.functional_call(self.bound, params, tensors_and_parameters[:split])


class GraphedTrainingFunction:
    """`GraphedTrainingFunction(module, fn)(*tensors, **static)`: the forward *and* the backward of `fn`
    replayed from CUDA graphs (`torch.cuda.make_graphed_callables`), captured once per input signature.

    `fn(*tensors, **static)` computes with `module`'s parameters and returns a pytree of tensors that
    require grad. Gradients reach the inputs that require grad and `module`'s parameters
    (`param.grad`, through autograd as usual, so DDP's hooks and the optimizer see them; the capture
    computes with stand-ins of the parameters, `_WithParameters`). The same
    requirements as `GraphedFunction`, and: the parameters keep their storage (the optimizer updates
    them in place), the outputs are the graph's buffers (valid until the next call), and random ops
    (dropout) draw fresh numbers at every replay, but not the numbers the eager function would draw.
    The parameters' gradients are copied out of the graph's buffers (`_own_parameter_grads`), so
    that gradients accumulate over several backward passes (gradient accumulation) as they do eagerly.
    Eager where a graph does not apply: CPU tensors, no autograd, `module` in eval mode.
    """

    def __init__(self, module, fn, warmup=2):
        self.module, self.fn, self.warmup = module, fn, warmup
        self.graphs = {}

    def __call__(self, *tensors, **static):
        if not (tensors[0].is_cuda and torch.is_grad_enabled() and self.module.training):
            return self.fn(*tensors, **static)
        key = (tuple((tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad) for t in tensors)
               + tuple(sorted(static.items())))
        graphed = self.graphs.get(key)
        if graphed is None:
            graphed = self.graphs[key] = self._capture(tensors, static)
        if graphed is EAGER:
            return self.fn(*tensors, **static)
        function, graphed = graphed
        outputs = graphed(*tensors, *function.parameters)
        node = next(t.grad_fn for t in torch.utils._pytree.tree_leaves(outputs)
                    if isinstance(t, torch.Tensor) and t.grad_fn is not None)
        node.register_hook(functools.partial(_own_parameter_grads, len(tensors)))
        return outputs

    def _capture(self, tensors, static):
        samples = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in tensors)
        function = _WithParameters(self.module, self.fn, static)
        try:
            return function, torch.cuda.make_graphed_callables(function, samples + function.stand_ins(),
                                                               num_warmup_iters=self.warmup,
                                                               allow_unused_input=True)
        except (RuntimeError, AssertionError) as err:
            warnings.warn(f'CUDA graph capture of the training function {getattr(self.fn, "__name__", self.fn)} '
                          f'failed ({err}); running it eagerly (slower). Set execution=dict(train_cuda_graph=False) '
                          f'in the config to skip the attempt.')
            return EAGER


def _own_parameter_grads(num_inputs, grad_inputs, grad_outputs):
    """Hook on a graphed function's backward node, whose inputs are `num_inputs` tensors, then the
    parameters: their gradients as new tensors instead of the graph's static buffers.

    Autograd stores a parameter's first gradient of a step as `param.grad` without a copy (the
    buffer's detached alias would become `param.grad`). The next replay overwrites that buffer, and a
    second backward pass before `zero_grad` would add the new gradient to itself. One multi-tensor
    copy per backward pass prevents it. The inputs' gradients (the image features') flow on into the
    backbone's backward and are not kept: they stay the graph's buffers.
    """
    params = [g for g in grad_inputs[num_inputs:] if g is not None]
    fresh = iter(torch._foreach_mul(params, 1.0) if params else ())   # x * 1.0: a bit-exact copy
    return grad_inputs[:num_inputs] + tuple(None if g is None else next(fresh) for g in grad_inputs[num_inputs:])


def without_dropout(model):
    """`model` with every dropout probability set to 0 (nn.Dropout, nn.MultiheadAttention), returned.

    Graph replays and the fast kernels (SDPA) draw other random numbers than the eager code, so the
    comparisons of one with the other (tests) run without dropout.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    return model
