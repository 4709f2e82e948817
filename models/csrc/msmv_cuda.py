"""Python face of the CUDA extension ``models.csrc._msmv_sampling_cuda``.

Symbols as in models/csrc/wrapper.py: BB sampling batch, N views, L levels, C channels, Q queries,
P points; for the kNN, M query and K reference points.

* :func:`msmv_sampling_cuda` - multi-scale multi-view bilinear sampling (docs/method.md, "Sampling op")
  with autograd;
  ``models.csrc.wrapper.msmv_sampling`` dispatches here for CUDA tensors.
* :func:`knn1_cuda` - exact 1-nearest-neighbour indices for the head's matching (docs/method.md, "Losses").

Importing this module raises ImportError when the extension is not built (callers fall back to
PyTorch on that signal). ``make env`` builds it where nvcc and a GPU are found (tools/build_cuda_ops.sh);
by hand: ``cd models/csrc && python setup.py build_ext --inplace``.
"""
import torch
from torch.autograd.function import once_differentiable

try:
    from . import _msmv_sampling_cuda as _ext
except ImportError as err:  # not built, or built against another torch / CUDA
    raise ImportError(f'models.csrc._msmv_sampling_cuda is not available ({err}); build it with '
                      f'`cd models/csrc && FORCE_CUDA=1 python setup.py build_ext --inplace`') from err

__all__ = ['msmv_sampling_cuda', 'knn1_cuda', 'MAX_LEVELS']

MAX_LEVELS = _ext.MAX_LEVELS  # feature levels one call accepts


class MSMVSamplingCUDA(torch.autograd.Function):
    """Autograd wrapper of the CUDA kernels; inputs must already be prepared (see
    :func:`msmv_sampling_cuda`). Argument order puts the variable-length level list last."""

    @staticmethod
    def forward(ctx, sampling_locations, scale_weights, *mlvl_feats):
        out = _ext.msmv_forward(list(mlvl_feats), sampling_locations, scale_weights)
        ctx.save_for_backward(sampling_locations, scale_weights, *mlvl_feats)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        loc, weights, *feats = ctx.saved_tensors
        need = ctx.needs_input_grad
        # Feature gradients are the scattered (atomic) part of the cost; skip them when unused.
        feat_grad = any(need[2:])
        grads = _ext.msmv_backward(feats, loc, weights, grad_output.contiguous(), feat_grad)
        grad_loc = grads[0] if need[0] else None
        grad_weights = grads[1] if need[1] else None
        if feat_grad:
            grad_feats = [g if n else None for g, n in zip(grads[2:], need[2:])]
        else:
            grad_feats = [None] * len(feats)
        return (grad_loc, grad_weights, *grad_feats)


def _check_inputs(feats, loc, weights):
    """Shape/dtype/device checks in Python before the extension is called.

    The C++ side checks the same, but on the H100 (torch 2.11) a failing check inside its
    per-level loop crashed the process instead of raising, so bad inputs are stopped here.
    """
    f0 = feats[0]
    if not all(f.is_cuda for f in feats) or not loc.is_cuda or not weights.is_cuda:
        raise RuntimeError('msmv_sampling: features, locations and weights must be CUDA tensors; '
                           'models.csrc.wrapper.msmv_sampling runs the PyTorch fallback for CPU tensors')
    if f0.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise RuntimeError(f'msmv_sampling: features must be float32, float64, float16 or bfloat16, got {f0.dtype}')
    for level, f in enumerate(feats):
        if f.dim() != 5:
            raise RuntimeError(f'msmv_sampling: feature level {level} must be channel-last [BB, N, H, W, C], '
                               f'got shape {tuple(f.shape)}')
        if f.device != f0.device:
            raise RuntimeError(f'msmv_sampling: feature level {level} is on {f.device}, level 0 on {f0.device}')
        if f.dtype != f0.dtype:
            raise RuntimeError(f'msmv_sampling: all feature levels must share one dtype; level {level} is '
                               f'{f.dtype}, level 0 is {f0.dtype}')
        if (f.shape[0], f.shape[1], f.shape[4]) != (f0.shape[0], f0.shape[1], f0.shape[4]):
            raise RuntimeError(f'msmv_sampling: feature level {level} has shape {tuple(f.shape)} but BB, N, C of '
                               f'level 0 are {f0.shape[0]}, {f0.shape[1]}, {f0.shape[4]}')
    if loc.dim() != 4 or loc.shape[3] != 3 or loc.shape[0] != f0.shape[0]:
        raise RuntimeError(f'msmv_sampling: sampling_locations must be [BB, Q, P, 3] with BB = {f0.shape[0]}, '
                           f'got {tuple(loc.shape)}')
    if tuple(weights.shape) != (*loc.shape[:3], len(feats)):
        raise RuntimeError(f'msmv_sampling: scale_weights must be [BB, Q, P, L] = {(*loc.shape[:3], len(feats))}, '
                           f'got {tuple(weights.shape)}')


def msmv_sampling_cuda(mlvl_feats, sampling_locations, scale_weights):
    """Sample L feature levels at one view per point and blend the levels.

    Args:
        mlvl_feats (list[Tensor]): L (1..6) channel-last CUDA tensors ``[BB, N, H_l, W_l, C]``
            (BB = B*T*G, N views), all float32, all float64, all float16 or all bfloat16. Any
            C from 1 to 6144 (3072 for float64); 16-byte loads (fastest) when C is a multiple of
            16 bytes' worth of elements (4 fp32, 8 fp16/bf16) and the tensors are 16-byte aligned.
        sampling_locations (Tensor): ``[BB, Q, P, 3]`` = (u, v, view/(N-1)), normalised to [0, 1]
            of the image (u along W, v along H). Cast to float32 (float64 for float64 features).
        scale_weights (Tensor): ``[BB, Q, P, L]`` level weights. Cast like the locations.

    Returns:
        Tensor ``[BB, Q, C, P]`` in the features' dtype (accumulated in fp32, fp64 for fp64):
        ``sum_l w_l * bilinear(feat_l[bb, round(view*(N-1))], v*(H_l-1), u*(W_l-1))`` with
        align_corners=True pixel centres and zero padding (no contribution outside
        (-1, H_l) x (-1, W_l)). Gradients flow to every level, to u and v, and to the weights;
        the view coordinate gets zero gradient. A view coordinate outside [0, 1] is clamped to
        the first / last view (the published op does not guard it).
    """
    if not isinstance(mlvl_feats, (list, tuple)) or not 1 <= len(mlvl_feats) <= MAX_LEVELS:
        raise ValueError(f'msmv_sampling_cuda: `mlvl_feats` must be a list of 1 to {MAX_LEVELS} '
                         f'[BB, N, H, W, C] tensors, got {type(mlvl_feats).__name__} of length '
                         f'{len(mlvl_feats) if isinstance(mlvl_feats, (list, tuple)) else "-"}')
    _check_inputs(mlvl_feats, sampling_locations, scale_weights)
    feats = [f.contiguous() for f in mlvl_feats]
    acc = torch.float64 if feats[0].dtype == torch.float64 else torch.float32
    # Casting here (not inside the Function) lets autograd return gradients in the caller's dtype.
    loc = sampling_locations.to(acc).contiguous()
    weights = scale_weights.to(acc).contiguous()
    return MSMVSamplingCUDA.apply(loc, weights, *feats)


KNN_METHODS = {'brute-force': 'knn1', 'grid': 'knn1_grid'}


def knn1_cuda(query, ref, method='brute-force'):
    """Exact nearest neighbour: for each query point, the index of the closest reference point.

    Args:
        query (Tensor): ``[M, 3]`` float32 CUDA, points (any common frame and unit, e.g. metres).
        ref (Tensor): ``[K, 3]`` float32 CUDA, K >= 1.
        method (str): 'brute-force' scans every pair; 'grid' sorts the references into a uniform grid and
            visits the cells around each query until no farther cell can hold a nearer point
            (models/csrc/knn_cuda.cu). The same result, bit for bit. The matching keeps the brute force
            until benchmarks/bench_knn.py has timed the grid on a GPU (docs/performance.md, "Known limits").

    Returns:
        int64 ``[M]``: argmin_j of ``((dx*dx + dy*dy) + dz*dz)`` in IEEE fp32 (the rounding of
        ``models.knn.knn1``), lowest index on ties. Reference points at NaN distance are never
        chosen; a query with NaN coordinates gets index 0.
        Not differentiable (matching only).
    """
    for name, t in (('query', query), ('ref', ref)):  # see _check_inputs: C++ checks must not fail
        if not t.is_cuda:
            raise RuntimeError(f'knn1_cuda: `{name}` must be a CUDA tensor, got one on {t.device}')
        if t.dim() != 2 or t.shape[1] != 3:
            raise RuntimeError(f'knn1_cuda: `{name}` must be [N, 3] (xyz per row), got {tuple(t.shape)}')
        if t.dtype != torch.float32:
            raise RuntimeError(f'knn1_cuda: `{name}` must be float32, got {t.dtype}')
    if ref.shape[0] == 0:
        raise RuntimeError('knn1_cuda: the reference set is empty; every query needs a reference point')
    if query.device != ref.device:
        raise RuntimeError(f'knn1_cuda: query on {query.device}, ref on {ref.device}; use one GPU')
    if method not in KNN_METHODS:
        raise ValueError(f'knn1_cuda: method must be one of {sorted(KNN_METHODS)}, got {method!r}')
    return getattr(_ext, KNN_METHODS[method])(query.contiguous(), ref.contiguous())
